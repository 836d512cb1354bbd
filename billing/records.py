"""What billing's services answer, typed: the JSON shapes of shared/DESIGN.md's contracts.

TypedDicts rather than models: the services build these from SQL rows and Redis replies
and the API sends them as they are, so a field renamed in one place and not in the
other is a type error, and the admin API's OpenAPI schema names every field.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict  # pydantic reads these as response models (Python < 3.12)

from gateway.contract import CountedBy, Status


class Account(TypedDict):
    id: str
    name: str
    created_at: str


class KeyCreditLimit(TypedDict):
    """A key's credit cap: at most ``credits`` per UTC day, per UTC month, or in total."""

    credits: int
    period: Literal["day", "month", "total"]


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
    credit_limit: KeyCreditLimit | None


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
    weight: int
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
    """The caller's own key in ``/v1/me``: its limits, not its account or state;
    ``spent_in_period``: what it spent in its cap's current period (null: no cap)."""

    id: str
    name: str
    prefix: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    credit_limit: KeyCreditLimit | None
    spent_in_period: int | None


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


AdjustmentStatus = Literal["pending", "applied", "refused"]


class Withdrawn(TypedDict):
    """Credits a debit took from one grant."""

    grant_id: str
    credits: int


class Adjustment(TypedDict):
    """An operator's credit (+) or debit (-) of an account, applied once per idempotency key:
    a credit is a new grant (``grant_id``), a debit what it took from grants (``allocation``)."""

    id: str
    account_id: str
    credits: int
    reason: str
    idempotency_key: str
    status: AdjustmentStatus  # pending: a debit between Redis and the ledger
    grant_id: str | None
    allocation: list[Withdrawn] | None
    created_at: str


class AdjustmentPage(TypedDict):
    data: list[Adjustment]
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


OrderStatus = Literal["pending", "paid", "expired", "refunded"]


class Order(TypedDict):
    """What a customer asked to buy and what became of it."""

    id: str
    account_id: str
    package_id: str
    status: OrderStatus
    amount: int  # integer minor units, the package's price when ordered
    currency: str  # ISO 4217, upper case
    provider: str
    checkout_url: str | None  # where the customer pays (pending orders only)
    created_at: str
    expires_at: str
    paid_at: str | None
    refunded_at: str | None
    grant_id: str | None


class OrderPage(TypedDict):
    data: list[Order]
    next_cursor: str | None


CodeStatus = Literal["unused", "redeemed", "expired"]


class IssuedCode(TypedDict):
    """A new redemption code: the only answer that carries its secret."""

    code: str
    package_id: str
    expires_at: str | None  # null: never


class IssuedCodes(TypedDict):
    """``POST /admin/codes``: the batch's codes, shown this once."""

    data: list[IssuedCode]
    batch_id: str


class RedemptionCode(TypedDict):
    """A code as admins list it: its state, never its secret or its hash."""

    id: str
    batch_id: str
    package_id: str
    status: CodeStatus
    created_at: str
    expires_at: str | None
    redeemed_at: str | None
    redeemed_by: str | None  # the account
    grant_id: str | None


class CodePage(TypedDict):
    data: list[RedemptionCode]
    next_cursor: str | None


class Redemption(TypedDict):
    """``POST /v1/me/redeem``: the grant the code made."""

    grant: Grant


class AlertSettings(TypedDict):
    """An account's alert receiver and thresholds (``/admin/accounts/{id}/alerts``,
    ``/v1/me/alerts``): ``secret`` is in the one answer that generated it, never again."""

    account_id: str
    url: str | None  # where signed webhooks go; null: alerts are recorded, not sent
    low_balance: int | None  # alert when the credits left are at or below this
    expiry_days: int | None  # notice this many days before a grant with credits left expires
    updated_at: str | None  # null: never set
    secret: NotRequired[str]  # 'tga_...', the HMAC key of Tokengate-Signature
