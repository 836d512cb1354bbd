"""The console's people through the service, on SQLite and PostgreSQL: sign-up makes an
organization, its owner and the trial grant once; passwords are argon2 hashes; sessions
live until they expire or end; members see their organization only."""

from __future__ import annotations

import contextlib

import pytest
from sqlalchemy import select

from billing.db.schema import users
from billing.errors import Conflict
from billing.packages import NewPackage
from billing.service import Billing
from billing.users import SESSION_MS
from gateway.errors import BadRequest

from .helpers import ManualClock, new_id

pytestmark = pytest.mark.timeout(60)


def _email() -> str:
    return f"{new_id('u')}@example.org"


async def _trial(billing: Billing) -> None:
    if await billing.packages.trial_package() is None:
        with contextlib.suppress(Conflict):  # another test made the trial package first
            await billing.packages.create_package(
                NewPackage(id="trial", name="Trial", credits=500, valid_days=14, trial=True)
            )


async def test_sign_up_makes_an_organization_its_owner_and_grants_the_trial_once(billing: Billing) -> None:
    await _trial(billing)
    trial = await billing.packages.trial_package()
    assert trial is not None
    email = _email()
    user = await billing.users.sign_up(f"  {email.upper()} ", "correct horse", "Acme Lab")
    assert user.email == email and not user.is_admin
    [(account_id, name, role)] = await billing.users.organizations(user.id)
    assert (name, role) == ("Acme Lab", "owner")
    assert (await billing.store.balance(account_id))["purchased"] == trial["credits"]
    assert await billing.packages.grant_trial(account_id) is not None  # again: the same grant
    assert (await billing.store.balance(account_id))["purchased"] == trial["credits"]
    with pytest.raises(Conflict):
        await billing.users.sign_up(email, "another password", "Acme again")
    async with billing.engine.connect() as conn:
        stored = (await conn.execute(select(users.c.password_hash).where(users.c.id == user.id))).scalar_one()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored


@pytest.mark.parametrize(
    "email, password, organization, param",
    [
        ("not-an-email", "long enough", "Org", "email"),
        ("a@b.org", "short", "Org", "password"),
        ("a@b.org", "long enough", "  ", "organization"),
        ("a@b.org", "x" * 2000, "Org", "password"),
    ],
)
async def test_sign_up_refuses_bad_input_by_field(
    billing: Billing, email: str, password: str, organization: str, param: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        await billing.users.sign_up(email, password, organization)
    assert refused.value.param == param


async def test_only_the_right_password_signs_in(billing: Billing) -> None:
    email = _email()
    await billing.users.sign_up(email, "correct horse", "Org")
    assert await billing.users.authenticate(email, "correct horse") is not None
    assert await billing.users.authenticate(email.upper(), "correct horse") is not None
    for wrong in ("Correct horse", "", "correct horse "):
        assert await billing.users.authenticate(email, wrong) is None
    assert await billing.users.authenticate("nobody@example.org", "correct horse") is None
    assert await billing.users.authenticate("not an email", "x") is None


async def test_a_session_lives_until_it_expires_or_ends(billing: Billing, clock: ManualClock) -> None:
    email = _email()
    user = await billing.users.sign_up(email, "correct horse", "Org")
    token = await billing.users.start_session(user)
    session = await billing.users.session(token)
    assert session is not None and session.user.id == user.id and session.role == "owner"
    assert session.account_name == "Org" and len(session.csrf) >= 32
    assert await billing.users.session(token + "x") is None and await billing.users.session(None) is None
    clock.set(clock.now + SESSION_MS)
    assert await billing.users.session(token) is None
    clock.set(clock.now - SESSION_MS)
    await billing.users.end_session(token)
    assert await billing.users.session(token) is None


async def test_a_member_belongs_to_the_organization_that_invited_them(billing: Billing) -> None:
    owner = await billing.users.sign_up(_email(), "correct horse", "Team A")
    [(account_id, _, _)] = await billing.users.organizations(owner.id)
    member = await billing.users.invite_member(account_id, _email(), "member password")
    session = await billing.users.session(await billing.users.start_session(member))
    assert session is not None and (session.account_id, session.role) == (account_id, "member")
    admin = await billing.users.create_admin(_email(), "admin password")
    admin_session = await billing.users.session(await billing.users.start_session(admin))
    assert admin_session is not None and admin_session.user.is_admin and admin_session.account_id is None
