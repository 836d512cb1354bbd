"""What billing's services answer, typed: the JSON shapes of shared/DESIGN.md's contracts.

TypedDicts rather than models: the services build these from SQL rows and Redis replies
and the API sends them as they are, so a field renamed in one place and not in the
other is a type error, and the admin API's OpenAPI schema names every field.
"""

from __future__ import annotations

from typing import Any, Literal

from typing_extensions import TypedDict  # pydantic reads these as response models (Python < 3.12)

from gateway.contract import CountedBy, Status


class Account(TypedDict):
    id: str
    name: str
    created_at: str


class ApiKey(TypedDict):
    """A key as the API shows it: never its hash, never its secret."""

    id: str
    account_id: str
    name: str
    prefix: str
    created_at: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    disabled: bool


class IssuedKey(ApiKey):
    """A new key: the only answer that carries its secret."""

    key: str


class Price(TypedDict):
    amount: int  # integer minor units (cents, fen)
    currency: str  # ISO 4217, upper case


class Package(TypedDict):
    id: str
    name: str
    credits: int
    valid_days: int
    models: list[str] | None
    list_price: int | None
    price: Price | None
    for_sale: bool
    trial: bool
    created_at: str


class Offer(TypedDict):
    """A package on sale, as ``GET /v1/packages`` shows it to anyone."""

    id: str
    name: str
    credits: int
    valid_days: int
    models: list[str] | None
    price: Price


class Offers(TypedDict):
    data: list[Offer]


class Grant(TypedDict):
    """A purchase's grant as the ledger recorded it."""

    id: str
    account_id: str
    package_id: str
    order_id: str
    credits: int
    remaining: int
    models: list[str] | None
    list_price: int | None
    valid_from: str
    valid_until: str


class Totals(TypedDict):
    """An account's credits; ``purchased = available + reserved + spent + expired``."""

    purchased: int
    reserved: int
    spent: int
    expired: int
    available: int


class GrantBalance(TypedDict):
    """One grant in a balance: Redis's figures with the ledger's package and validity."""

    id: str
    package_id: str | None
    credits: int
    remaining: int
    available: int
    reserved: int
    spent: int
    expired: int
    models: list[str] | None
    valid_from: str | None
    valid_until: str | None


class Balance(TypedDict):
    balance: Totals
    grants: list[GrantBalance]
    balance_source: Literal["redis", "ledger"]


class AccountView(Account):
    """``GET /admin/accounts/{id}``: the account with its balance."""

    balance: Totals
    grants: list[GrantBalance]
    balance_source: Literal["redis", "ledger"]


class Keys(TypedDict):
    data: list[ApiKey]


class Packages(TypedDict):
    data: list[Package]


class AccountName(TypedDict):
    id: str
    name: str


class KeySummary(TypedDict):
    """The caller's own key in ``/v1/me``: its limits, not its account or state."""

    id: str
    name: str
    prefix: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None


class Me(TypedDict):
    """``GET /v1/me``: the key's account, the key, and the account's balance."""

    account: AccountName
    key: KeySummary
    balance: Totals
    grants: list[GrantBalance]


class UsageRecord(TypedDict):
    """One request's usage record (``RECORD_FIELDS`` in this order)."""

    request_id: str
    account_id: str
    key_id: str
    model: str
    cluster: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    charge: int
    uncollected: int
    status: Status
    counted_by: CountedBy
    stream: bool
    started_at: str
    finished_at: str


class UsageGroup(TypedDict, total=False):
    """Sums over a group of records; the keys it is grouped by are present, the others not."""

    day: str
    model: str
    key: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    charge: int
    uncollected: int


class UsagePage(TypedDict):
    data: list[UsageRecord] | list[UsageGroup]
    next_cursor: str | None


class AccountPage(TypedDict):
    data: list[Account]
    next_cursor: str | None


class AuditEntry(TypedDict):
    id: int
    at: str
    actor: str  # 'admin', 'account:<id>', 'provider:<name>', 'system'
    action: str  # 'order.paid', 'POST /admin/accounts', ...
    target: str  # 'order:<id>', '/admin/accounts/<id>/keys', ...
    detail: Any


class AuditPage(TypedDict):
    data: list[AuditEntry]
    next_cursor: str | None
