"""The members page's words (control/console/members.py)."""

from __future__ import annotations

from control.console.i18n import add_words

WORDS = {
    "en": {
        "members": "Members",
        "m_role": "Role",
        "m_since": "Since",
        "m_member": "member",
        "m_owner": "owner",
        "m_remove": "Remove",
        "m_add": "Add member",
        "m_add_lead": "Your teammate signs in with this email and the first password you give them.",
        "m_first_password": "First password",
        "m_added": "{email} can sign in now.",
        "m_bad_role": "Choose member or owner.",
        "m_not_member": "Not a member of this organization.",
    },
    "zh": {
        "members": "成员",
        "m_role": "角色",
        "m_since": "加入时间",
        "m_member": "成员",
        "m_owner": "所有者",
        "m_remove": "移除",
        "m_add": "添加成员",
        "m_add_lead": "您的同事使用此邮箱和您提供的初始密码登录。",
        "m_first_password": "初始密码",
        "m_added": "{email} 现在可以登录了。",
        "m_bad_role": "请选择成员或所有者。",
        "m_not_member": "不是本组织的成员。",
    },
}

add_words(WORDS)
