"""The ledger: accounts, keys, packages, grants, usage records, double-entry entries.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from billing.db.triggers import statements

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.String(64)
Big = sa.BigInteger()


def _times(*names: str) -> list[sa.Column[int]]:
    return [sa.Column(name, Big, nullable=False) for name in names]


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", Id, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        *_times("created_at_ms"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", Id, primary_key=True),
        sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("rpm", Big, nullable=True),
        sa.Column("tpm", Big, nullable=True),
        sa.Column("max_concurrency", Big, nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        *_times("created_at_ms"),
        sa.Column("revoked_at_ms", Big, nullable=True),
    )
    op.create_table(
        "packages",
        sa.Column("id", Id, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("credits", Big, nullable=False),
        sa.Column("valid_days", sa.Integer(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("list_price", Big, nullable=True),
        *_times("created_at_ms"),
        sa.CheckConstraint("credits > 0", name="credits"),
        sa.CheckConstraint("valid_days > 0", name="valid_days"),
        sa.CheckConstraint("list_price IS NULL OR list_price >= 0", name="list_price"),
    )
    op.create_table(
        "grants",
        sa.Column("id", Id, primary_key=True),
        sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False, index=True),
        sa.Column("package_id", Id, sa.ForeignKey("packages.id"), nullable=False),
        sa.Column("order_id", sa.String(200), nullable=False, unique=True),
        sa.Column("credits", Big, nullable=False),
        sa.Column("remaining", Big, nullable=False),
        sa.Column("models", sa.JSON(), nullable=True),
        *_times("valid_from_ms", "valid_until_ms"),
        sa.Column("list_price", Big, nullable=True),
        sa.CheckConstraint("credits > 0", name="credits"),
        sa.CheckConstraint("remaining >= 0 AND remaining <= credits", name="remaining"),
        sa.CheckConstraint("valid_until_ms > valid_from_ms", name="validity"),
    )
    _usage_records()
    _ledger()
    for statement in statements(op.get_bind().dialect.name, up=True):
        op.execute(statement)


def _usage_records() -> None:
    op.create_table(
        "usage_records",
        sa.Column("request_id", sa.String(255), primary_key=True),
        sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("key_id", Id, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("cluster", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        *(
            sa.Column(name, Big, nullable=False)
            for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "charge")
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("counted_by", sa.String(16), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        *_times("started_at_ms", "finished_at_ms"),
        sa.Column("grants", sa.Text(), nullable=False),
        *_times("recorded_at_ms"),
        sa.CheckConstraint(
            "prompt_tokens >= 0 AND completion_tokens >= 0 AND cached_tokens >= 0 AND charge >= 0",
            name="counts",
        ),
        sa.CheckConstraint(
            "status IN ('ok', 'partial', 'client_gone', 'upstream_error', 'expired')",
            name="status",
        ),
        sa.CheckConstraint("counted_by IN ('upstream', 'gateway')", name="counted_by"),
    )
    op.create_index("ix_usage_account_time", "usage_records", ["account_id", "finished_at_ms", "request_id"])
    op.create_index("ix_usage_time", "usage_records", ["finished_at_ms", "request_id"])


def _ledger() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.String(300), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False, index=True),
        *_times("created_at_ms"),
        sa.CheckConstraint("kind IN ('purchase', 'usage', 'correction')", name="kind"),
    )
    op.create_table(
        "ledger_legs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "entry_id",
            sa.String(300),
            sa.ForeignKey("ledger_entries.id", deferrable=True, initially="DEFERRED"),
            nullable=False,
            index=True,
        ),
        sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("grant_id", Id, sa.ForeignKey("grants.id"), nullable=False, index=True),
        sa.Column("book", sa.String(16), nullable=False),
        sa.Column("amount", Big, nullable=False),
        sa.CheckConstraint("amount <> 0", name="amount"),
        sa.CheckConstraint("book IN ('grant', 'sales', 'usage')", name="book"),
    )
    op.create_index("ix_legs_account_book", "ledger_legs", ["account_id", "book"])


def downgrade() -> None:
    for statement in statements(op.get_bind().dialect.name, up=False):
        op.execute(statement)
    for table in (
        "ledger_legs",
        "ledger_entries",
        "usage_records",
        "grants",
        "packages",
        "api_keys",
        "accounts",
    ):
        op.drop_table(table)
