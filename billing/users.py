"""The console's people: sign-up (an organization, its owner, the trial once), sign-in,
members with roles, platform admins, and browser sessions.

Passwords are argon2id hashes (``argon2-cffi``'s defaults: memory-hard, salted, tunable);
a hash made with older parameters is upgraded at the next sign-in. A session is a random
token in the browser's cookie; only its SHA-256 is stored, with the CSRF token every form of
that session must carry. Emails are compared lower-cased.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, exc, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.accounts import AccountService
from billing.clock import DAY_MS, Clock, wall_ms
from billing.db.engine import transaction
from billing.db.schema import accounts, console_sessions, memberships, users
from billing.errors import Conflict
from billing.packages import PackageService
from gateway.contract import BadRequest

Role = Literal["owner", "member"]
SESSION_MS = 7 * DAY_MS
MIN_PASSWORD = 8
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("not a password of anyone")  # equal work for unknown emails


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    is_admin: bool


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: who, which organization (and the role there), its CSRF token."""

    user: User
    account_id: str | None
    account_name: str | None
    role: Role | None
    csrf: str
    expires_at_ms: int


def normal_email(email: str) -> str:
    """The email as stored: trimmed, lower-cased; BadRequest unless it looks like one."""
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if (
        not at
        or not local
        or "." not in domain
        or len(email) > 320
        or not email.isprintable()
        or " " in email
    ):
        raise BadRequest("enter a valid email address", param="email")
    return email


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise BadRequest(f"the password needs at least {MIN_PASSWORD} characters", param="password")
    if len(password) > 1024:
        raise BadRequest("the password is too long (1024 characters at most)", param="password")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserService:
    def __init__(
        self, engine: AsyncEngine, accounts: AccountService, packages: PackageService, clock: Clock = wall_ms
    ) -> None:
        self.engine = engine
        self.accounts = accounts
        self.packages = packages
        self.clock = clock

    async def sign_up(self, email: str, password: str, organization: str) -> User:
        """A new organization (account) owned by a new user, granted the trial package once.

        Conflict when the email is taken; BadRequest for a bad email, password or name."""
        email, organization = normal_email(email), organization.strip()
        check_password(password)
        if not 1 <= len(organization) <= 200 or not organization.isprintable():
            raise BadRequest("enter your organization's name (up to 200 characters)", param="organization")
        user = await self._insert_user(email, password, is_admin=False)  # Conflict: taken
        account = await self.accounts.create_account(organization)
        await self.add_member(user.id, account["id"], "owner")
        await self.packages.grant_trial(account["id"])
        return user

    async def create_admin(self, email: str, password: str) -> User:
        """A platform admin (the first one is made with ``tokengate console create-admin``)."""
        email = normal_email(email)
        check_password(password)
        return await self._insert_user(email, password, is_admin=True)

    async def add_member(self, user_id: str, account_id: str, role: Role) -> None:
        async with transaction(self.engine) as conn:
            await conn.execute(
                memberships.insert(),
                {"user_id": user_id, "account_id": account_id, "role": role, "created_at_ms": self.clock()},
            )

    async def invite_member(self, account_id: str, email: str, password: str, role: Role = "member") -> User:
        """A new user who belongs to ``account_id`` (an owner adds a teammate)."""
        email = normal_email(email)
        check_password(password)
        if await self._user_row(email) is not None:
            raise Conflict("a user with this email exists", param="email")
        user = await self._insert_user(email, password, is_admin=False)
        await self.add_member(user.id, account_id, role)
        return user

    async def members(self, account_id: str) -> list[tuple[str, str, Role, int]]:
        """(user id, email, role, since ms) of the organization's members, oldest first."""
        m = memberships.c
        query = (
            select(m.user_id, users.c.email, m.role, m.created_at_ms)
            .join(users, users.c.id == m.user_id)
            .where(m.account_id == account_id)
            .order_by(m.created_at_ms, m.user_id)
        )
        async with transaction(self.engine) as conn:
            return [(r[0], r[1], r[2], int(r[3])) for r in await conn.execute(query)]

    async def remove_member(self, account_id: str, user_id: str) -> bool:
        """Take a member out of the organization (at once: sessions check the membership on
        every request); never its last owner. False: not a member."""
        async with transaction(self.engine) as conn:
            role = (
                await conn.execute(
                    select(memberships.c.role).where(
                        memberships.c.account_id == account_id, memberships.c.user_id == user_id
                    )
                )
            ).scalar()
            if role is None:
                return False
            if role == "owner":
                owners = await conn.execute(
                    select(memberships.c.user_id).where(
                        memberships.c.account_id == account_id, memberships.c.role == "owner"
                    )
                )
                if len(owners.all()) <= 1:
                    raise Conflict("an organization keeps at least one owner")
            await conn.execute(
                delete(memberships).where(
                    memberships.c.account_id == account_id, memberships.c.user_id == user_id
                )
            )
        return True

    async def authenticate(self, email: str, password: str) -> User | None:
        """The user whose email and password these are (and not disabled), else None.

        An unknown email costs one hash verification too, so timing tells nothing."""
        try:
            email = normal_email(email)
        except BadRequest:
            return None
        row = await self._user_row(email)
        try:
            _hasher.verify(row.password_hash if row is not None else _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or row.disabled:
            return None
        if _hasher.check_needs_rehash(row.password_hash):
            async with transaction(self.engine) as conn:
                await conn.execute(
                    update(users).where(users.c.id == row.id).values(password_hash=_hasher.hash(password))
                )
        return User(row.id, row.email, bool(row.is_admin))

    async def organizations(self, user_id: str) -> list[tuple[str, str, Role]]:
        """(account id, name, role) of each organization the user belongs to, oldest first."""
        m = memberships.c
        query = (
            select(m.account_id, accounts.c.name, m.role)
            .join(accounts, accounts.c.id == m.account_id)
            .where(m.user_id == user_id)
            .order_by(m.created_at_ms, m.account_id)
        )
        async with transaction(self.engine) as conn:
            return [(r[0], r[1], r[2]) for r in await conn.execute(query)]

    async def start_session(self, user: User) -> str:
        """A new session's token (for the cookie), in the user's first organization."""
        token = secrets.token_urlsafe(32)
        orgs = await self.organizations(user.id)
        now = self.clock()
        async with transaction(self.engine) as conn:
            await conn.execute(
                console_sessions.insert(),
                {
                    "token_hash": _token_hash(token),
                    "user_id": user.id,
                    "account_id": orgs[0][0] if orgs else None,
                    "csrf": secrets.token_urlsafe(32),
                    "created_at_ms": now,
                    "expires_at_ms": now + SESSION_MS,
                },
            )
        return token

    async def session(self, token: str | None) -> Session | None:
        """The live session of a cookie's token (its user not disabled), else None."""
        if not token or len(token) > 200:
            return None
        s, u = console_sessions.c, users.c
        query = (
            select(s.user_id, s.account_id, s.csrf, s.expires_at_ms, u.email, u.is_admin, u.disabled)
            .join(users, users.c.id == s.user_id)
            .where(s.token_hash == _token_hash(token))
        )
        async with transaction(self.engine) as conn:
            row = (await conn.execute(query)).first()
            if row is None or row.disabled or row.expires_at_ms <= self.clock():
                return None
            name, role = None, None
            if row.account_id is not None:
                found = (
                    await conn.execute(
                        select(accounts.c.name, memberships.c.role)
                        .join(memberships, memberships.c.account_id == accounts.c.id)
                        .where(accounts.c.id == row.account_id, memberships.c.user_id == row.user_id)
                    )
                ).first()
                if found is not None:
                    name, role = found
        user = User(row.user_id, row.email, bool(row.is_admin))
        account_id = row.account_id if role is not None else None  # a membership removed: none
        return Session(user, account_id, name, role, row.csrf, int(row.expires_at_ms))

    async def end_session(self, token: str | None) -> None:
        if token and len(token) <= 200:
            async with transaction(self.engine) as conn:
                await conn.execute(
                    delete(console_sessions).where(console_sessions.c.token_hash == _token_hash(token))
                )

    async def _user_row(self, email: str) -> Any:
        async with transaction(self.engine) as conn:
            return (await conn.execute(select(users).where(users.c.email == email))).first()

    async def _insert_user(self, email: str, password: str, *, is_admin: bool) -> User:
        user_id = "usr_" + secrets.token_hex(8)
        try:
            async with transaction(self.engine) as conn:
                await conn.execute(
                    users.insert(),
                    {
                        "id": user_id,
                        "email": email,
                        "password_hash": _hasher.hash(password),
                        "is_admin": is_admin,
                        "created_at_ms": self.clock(),
                    },
                )
        except exc.IntegrityError:
            raise Conflict("an account with this email exists: sign in instead", param="email") from None
        return User(user_id, email, is_admin)
