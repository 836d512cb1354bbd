"""The console's words in English and Simplified Chinese.

The language is the ``tg_lang`` cookie (set by the switch in the page's header) or else the
browser's ``Accept-Language``. A key missing in Chinese falls back to English, and a key
missing everywhere shows as itself, so a forgotten translation is visible, never an error.
"""

from __future__ import annotations

LANGUAGES = ("en", "zh")

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "brand": "tokengate",
        "sign_up": "Sign up",
        "sign_in": "Sign in",
        "sign_out": "Sign out",
        "email": "Email",
        "password": "Password",
        "organization": "Organization",
        "signup_title": "Create your organization",
        "signup_lead": "One account for your team: try the models with trial credits, then buy packages.",
        "signin_title": "Sign in to the console",
        "have_account": "Already have an account?",
        "no_account": "New here?",
        "bad_credentials": "Wrong email or password.",
        "too_many_signins": "Too many failed sign-ins. Try again in {seconds} seconds.",
        "csrf_failed": "This form expired. Reload the page and try again.",
        "overview": "Overview",
        "buy": "Buy",
        "redeem": "Redeem",
        "keys": "Keys",
        "usage": "Usage",
        "playground": "Playground",
        "prices": "Prices",
        "admin": "Admin",
        "language": "中文",
        "password_hint": "At least 8 characters.",
        "forbidden": "This page is not available to you.",
        "too_many_signups": "Too many sign-ups from your network. Try again in {seconds} seconds.",
        "bad_form": "This form could not be read. Reload the page and try again.",
    },
    "zh": {
        "sign_up": "注册",
        "sign_in": "登录",
        "sign_out": "退出",
        "email": "邮箱",
        "password": "密码",
        "organization": "组织",
        "signup_title": "创建您的组织",
        "signup_lead": "团队一个账户：先用试用额度体验模型，再购买套餐。",
        "signin_title": "登录控制台",
        "have_account": "已有账户？",
        "no_account": "还没有账户？",
        "bad_credentials": "邮箱或密码错误。",
        "too_many_signins": "登录失败次数过多，请 {seconds} 秒后再试。",
        "csrf_failed": "表单已过期，请刷新页面后重试。",
        "overview": "概览",
        "buy": "购买",
        "redeem": "兑换",
        "keys": "密钥",
        "usage": "用量",
        "playground": "体验",
        "prices": "价格",
        "admin": "管理",
        "language": "English",
        "password_hint": "至少 8 个字符。",
        "forbidden": "您无权访问此页面。",
        "too_many_signups": "您的网络注册次数过多，请 {seconds} 秒后再试。",
        "bad_form": "无法读取此表单，请刷新页面后重试。",
    },
}


def add_words(words: dict[str, dict[str, str]]) -> None:
    """Merge a module's words (``{"en": {...}, "zh": {...}}``); a key defined twice is a bug."""
    for lang, table in words.items():
        clash = set(table) & set(MESSAGES[lang])
        if clash:
            raise ValueError(f"console words defined twice: {sorted(clash)}")
        MESSAGES[lang].update(table)


def pick_language(cookie: str | None, accept_language: str | None) -> str:
    """The cookie's choice, else the first of the browser's languages we speak, else English."""
    if cookie in LANGUAGES:
        return cookie
    for part in (accept_language or "").split(",")[:20]:
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    return "en"


def translate(language: str, key: str, **values: object) -> str:
    text = MESSAGES.get(language, {}).get(key) or MESSAGES["en"].get(key) or key
    return text.format(**values) if values else text
