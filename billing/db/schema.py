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
    CheckConstraint("credits > 0", name="credits"),
    CheckConstraint("valid_days > 0", name="valid_days"),
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
    CheckConstraint("credits > 0", name="credits"),
    CheckConstraint("remaining >= 0 AND remaining <= credits", name="remaining"),
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
