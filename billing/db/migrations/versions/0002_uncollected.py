"""usage_records.uncollected: credits a request cost beyond what its balance could pay.

Settlement charges the full cost of the upstream's usage; what the available balance could
not cover at that instant is recorded here (normally 0), never dropped silently. Records
written before this revision get 0.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CHECK = "ck_usage_records_uncollected"  # the metadata's naming convention, spelled out


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # A column CHECK: SQLite adds it in place (no copy of the table) and drops it with
        # the column; a table CHECK would need the table rebuilt.
        op.execute(
            "ALTER TABLE usage_records ADD COLUMN uncollected BIGINT DEFAULT 0 NOT NULL "
            f"CONSTRAINT {CHECK} CHECK (uncollected >= 0)"
        )
        return
    column = sa.Column("uncollected", sa.BigInteger(), nullable=False, server_default="0")
    op.add_column("usage_records", column)
    op.create_check_constraint(op.f(CHECK), "usage_records", "uncollected >= 0")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f(CHECK), "usage_records", type_="check")
    op.drop_column("usage_records", "uncollected")
