"""The ledger's tables (SQLAlchemy Core), the same on PostgreSQL and SQLite.

Amounts are integer credits and times integer milliseconds since the epoch (UTC, the clock
of Redis for usage), so no float and no time zone ever enters a sum. The ledger proper is
``ledger_entries`` + ``ledger_legs``: each entry's legs sum to zero, and the database
refuses an entry that does not balance and any change to a posted one (triggers, see
``billing/db/triggers.py``). ``grants.remaining`` is a projection of the legs kept in the
same transaction (with a CHECK that refuses an overdraft); reconcile verifies it.

Books (``ledger_legs.book``), every leg naming its account and grant:

    grant   the customer's unused credits of one grant   (+credits at purchase, -charges)
    sales   the credits sold                             (-credits at purchase)
    usage   the credits consumed                         (+charges)
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = String(64)
CREDIT_LIMIT = ("(credit_limit IS NULL) = (credit_period IS NULL) AND (credit_limit IS NULL OR "
                "(credit_limit > 0 AND credit_period IN ('day', 'month', 'total')))")
WITHDRAWN = "withdrawn >= 0 AND withdrawn <= credits"
Amount = BigInteger
Ms = BigInteger
# A primary key that autoincrements on both (SQLite only does so for INTEGER PRIMARY KEY).
Serial = BigInteger().with_variant(Integer, "sqlite")

accounts = Table(
    "accounts",
    metadata,
    Column("id", Id, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at_ms", Ms, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),  # SHA-256; never the key
    Column("models", JSON, nullable=True),  # null: every model
    Column("rpm", BigInteger, nullable=True),
    Column("tpm", BigInteger, nullable=True),
    Column("max_concurrency", BigInteger, nullable=True),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at_ms", Ms, nullable=False),
    Column("revoked_at_ms", Ms, nullable=True),  # kept, not deleted: usage refers to it
    # A cap on what the key may spend (migration 0004): credits per day, month or in total.
    Column("credit_limit", Amount, nullable=True),
    Column("credit_period", String(8), nullable=True),
    CheckConstraint(CREDIT_LIMIT, name="credit_limit"),
)

packages = Table(
    "packages",
    metadata,
    Column("id", Id, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("credits", Amount, nullable=False),
    Column("valid_days", Integer, nullable=False),
    Column("models", JSON, nullable=True),  # null: every model
    Column("list_price", Amount, nullable=True),  # smallest currency unit, informative
    Column("created_at_ms", Ms, nullable=False),
    # On sale (migration 0003): the price in integer minor units of an ISO 4217 currency.
    Column("price_amount", Amount, nullable=True),
    Column("price_currency", String(3), nullable=True),
    Column("for_sale", Boolean, nullable=False, server_default=false()),
    Column("trial", Boolean, nullable=False, server_default=false()),  # granted once at sign-up
    # Its tier in fair shares (migration 0006): turns at a full model go by the weight of the
    # account's best live package (gateway/flow.py, billing/tiers.py).
    Column("weight", Integer, nullable=False, server_default="1"),
    CheckConstraint("credits > 0", name="credits"),
    CheckConstraint("valid_days > 0", name="valid_days"),
    CheckConstraint("weight >= 1 AND weight <= 100", name="weight"),
    CheckConstraint("list_price IS NULL OR list_price >= 0", name="list_price"),
    CheckConstraint("(price_amount IS NULL) = (price_currency IS NULL) AND "
                    "(price_amount IS NULL OR price_amount >= 0)", name="price"),
    Index("uq_packages_one_trial", "trial", unique=True,
          sqlite_where=text("trial"), postgresql_where=text("trial")),  # at most one trial package
)

grants = Table(
    "grants",
    metadata,
    Column("id", Id, primary_key=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("package_id", Id, ForeignKey("packages.id"), nullable=False),
    Column("order_id", String(200), nullable=False, unique=True),
    Column("credits", Amount, nullable=False),
    Column("remaining", Amount, nullable=False),
    Column("models", JSON, nullable=True),
    Column("valid_from_ms", Ms, nullable=False),
    Column("valid_until_ms", Ms, nullable=False),
    Column("list_price", Amount, nullable=True),
    # Credits taken back (migration 0004: a refund, a debit adjustment): the grant then
    # holds credits - withdrawn; the withdrawal is a 'correction' entry (grant -, sales +).
    Column("withdrawn", Amount, nullable=False, server_default="0"),
    CheckConstraint("credits > 0", name="credits"),
    CheckConstraint("remaining >= 0 AND remaining <= credits", name="remaining"),
    CheckConstraint(WITHDRAWN, name="withdrawn"),
    CheckConstraint("valid_until_ms > valid_from_ms", name="validity"),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("request_id", String(255), primary_key=True),  # exactly one record per request
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("key_id", Id, nullable=False),
    Column("model", String(200), nullable=False),
    Column("cluster", String(200), nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("charge", Amount, nullable=False),
    Column("status", String(16), nullable=False),
    Column("counted_by", String(16), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("started_at_ms", Ms, nullable=False),
    Column("finished_at_ms", Ms, nullable=False),
    Column("grants", Text, nullable=False),  # the charge by grant, 'g1:30,g2:5'
    # what the request cost beyond `charge` that its balance could not pay (migration 0002)
    Column("uncollected", Amount, nullable=False, server_default="0"),
    Column("recorded_at_ms", Ms, nullable=False),
    CheckConstraint(
        "prompt_tokens >= 0 AND completion_tokens >= 0 AND cached_tokens >= 0 AND charge >= 0",
        name="counts",
    ),
    CheckConstraint("status IN ('ok', 'partial', 'client_gone', 'upstream_error', 'expired')", name="status"),
    CheckConstraint("counted_by IN ('upstream', 'gateway')", name="counted_by"),
    CheckConstraint("uncollected >= 0", name="uncollected"),
    Index("ix_usage_account_time", "account_id", "finished_at_ms", "request_id"),
    Index("ix_usage_time", "finished_at_ms", "request_id"),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", String(300), primary_key=True),  # 'purchase:<order_id>', 'usage:<request_id>'
    Column("kind", String(16), nullable=False),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("created_at_ms", Ms, nullable=False),
    CheckConstraint("kind IN ('purchase', 'usage', 'correction')", name="kind"),
)

ledger_legs = Table(
    "ledger_legs",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    # Deferred: the legs are written first, then the entry, whose insert trigger checks them.
    Column(
        "entry_id",
        String(300),
        ForeignKey("ledger_entries.id", deferrable=True, initially="DEFERRED"),
        nullable=False,
        index=True,
    ),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("grant_id", Id, ForeignKey("grants.id"), nullable=False, index=True),
    Column("book", String(16), nullable=False),
    Column("amount", Amount, nullable=False),
    CheckConstraint("amount <> 0", name="amount"),
    CheckConstraint("book IN ('grant', 'sales', 'usage')", name="book"),
    Index("ix_legs_account_book", "account_id", "book"),
)


# Commerce (migration 0004). An order is what a customer asked to buy; paying it grants its
# package with the order id as the purchase's order_id, so a payment applies once.
ORDER_STATUSES = ("pending", "paid", "expired", "refunded")
orders = Table(
    "orders",
    metadata,
    Column("id", Id, primary_key=True),  # 'ord_<hex>'
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("package_id", Id, ForeignKey("packages.id"), nullable=False),
    Column("amount", Amount, nullable=False),  # integer minor units, the price when ordered
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False),
    Column("provider", String(32), nullable=False),  # 'test', 'stripe'
    Column("provider_ref", String(255), nullable=True),  # the provider's id (a checkout session)
    Column("payment_ref", String(255), nullable=True),  # the provider's id of the payment (refunds)
    Column("checkout_url", Text, nullable=True),
    Column("created_at_ms", Ms, nullable=False),
    Column("expires_at_ms", Ms, nullable=False),  # unpaid by then: expired
    Column("paid_at_ms", Ms, nullable=True),
    Column("refunded_at_ms", Ms, nullable=True),
    Column("grant_id", Id, ForeignKey("grants.id"), nullable=True),
    CheckConstraint("status IN ('pending', 'paid', 'expired', 'refunded')", name="status"),
    CheckConstraint("amount >= 0", name="amount"),
    Index("ix_orders_account_time", "account_id", "created_at_ms", "id"),
    Index("ix_orders_status_time", "status", "created_at_ms", "id"),
)

# Redemption codes: the secret is shown once, at minting; only its SHA-256 is kept.
redemption_codes = Table(
    "redemption_codes",
    metadata,
    Column("id", Id, primary_key=True),  # 'rc_<hex>': how admins name a code
    Column("code_hash", String(64), nullable=False, unique=True),
    Column("batch_id", Id, nullable=False, index=True),
    Column("package_id", Id, ForeignKey("packages.id"), nullable=False, index=True),
    Column("created_at_ms", Ms, nullable=False),
    Column("expires_at_ms", Ms, nullable=True),  # null: never
    Column("redeemed_at_ms", Ms, nullable=True),
    Column("redeemed_by", Id, ForeignKey("accounts.id"), nullable=True),
    Column("grant_id", Id, ForeignKey("grants.id"), nullable=True),
    CheckConstraint("(redeemed_at_ms IS NULL) = (redeemed_by IS NULL)", name="redeemed"),
)

# An operator's signed correction of an account's credits, applied once per idempotency key:
# a credit is a grant of the 'adjustment' package; a debit withdraws from grants.
adjustments = Table(
    "adjustments",
    metadata,
    Column("id", Id, primary_key=True),  # 'adj_<hex>'
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("idempotency_key", String(200), nullable=False),
    Column("credits", Amount, nullable=False),
    Column("reason", String(500), nullable=False),
    Column("status", String(16), nullable=False),
    Column("grant_id", Id, ForeignKey("grants.id"), nullable=True),  # the grant a credit made
    Column("allocation", Text, nullable=True),  # a debit by grant, 'g1:30,g2:5'
    Column("actor", String(200), nullable=False),
    Column("created_at_ms", Ms, nullable=False),
    UniqueConstraint("account_id", "idempotency_key", name="uq_adjustments_key"),
    CheckConstraint("credits <> 0", name="credits"),
    CheckConstraint("status IN ('pending', 'applied', 'refused')", name="status"),
)
ADJUSTMENT_PACKAGE = "adjustment"  # the package row migration 0004 adds for credit adjustments

# Alerts: an account's receiver and thresholds, and the outbox of signed deliveries.
account_alerts = Table(
    "account_alerts",
    metadata,
    Column("account_id", Id, ForeignKey("accounts.id"), primary_key=True),
    Column("url", Text, nullable=True),  # where the signed webhooks go (null: metrics only)
    Column("secret", String(128), nullable=True),  # the HMAC key, shown once when set
    Column("low_balance", Amount, nullable=True),  # available credits at or below: alert
    Column("expiry_days", Integer, nullable=True),  # notice this many days before a grant lapses
    Column("updated_at_ms", Ms, nullable=False),
)

alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    Column("id", Id, primary_key=True),  # 'evt_<hex>', also the event id receivers dedupe on
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("kind", String(32), nullable=False),  # 'balance.low', 'grant.expiring'
    Column("dedupe", String(300), nullable=False, unique=True),  # one alert per occurrence
    Column("payload", Text, nullable=False),  # the JSON body, signed as sent
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_ms", Ms, nullable=False),
    Column("delivered_at_ms", Ms, nullable=True),
    Column("last_error", String(500), nullable=True),
    Column("created_at_ms", Ms, nullable=False),
    Index("ix_alert_deliveries_due", "delivered_at_ms", "next_attempt_ms"),
)

# Who changed what, when: every admin write and every order's change of state.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("at_ms", Ms, nullable=False),
    Column("actor", String(200), nullable=False),  # 'admin', 'account:<id>', 'stripe', 'system'
    Column("action", String(64), nullable=False),  # 'order.paid', 'key.create', ...
    Column("target", String(300), nullable=False),  # 'order:ord_..', 'account:acc_..'
    Column("detail", JSON, nullable=True),
    Index("ix_audit_time", "at_ms", "id"),
    Index("ix_audit_target", "target", "at_ms"),
)

# The console (migration 0005): people who sign in. A user belongs to organizations (accounts)
# with a role; platform admins (``is_admin``) manage everything. Passwords are argon2 hashes.
users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True),  # 'usr_<hex>'
    Column("email", String(320), nullable=False, unique=True),  # lower-cased
    Column("password_hash", String(255), nullable=False),
    Column("is_admin", Boolean, nullable=False, server_default=false()),
    Column("disabled", Boolean, nullable=False, server_default=false()),
    Column("created_at_ms", Ms, nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    Column("user_id", Id, ForeignKey("users.id"), primary_key=True),
    Column("account_id", Id, ForeignKey("accounts.id"), primary_key=True, index=True),
    Column("role", String(16), nullable=False),
    Column("created_at_ms", Ms, nullable=False),
    CheckConstraint("role IN ('owner', 'member')", name="role"),
)

# A signed-in browser: the cookie holds a random token, the table its SHA-256.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Id, ForeignKey("users.id"), nullable=False, index=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=True),  # the organization in view
    Column("csrf", String(64), nullable=False),  # the token every form of this session carries
    Column("created_at_ms", Ms, nullable=False),
    Column("expires_at_ms", Ms, nullable=False),
)
