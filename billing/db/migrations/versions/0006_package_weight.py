"""packages.weight: a package's tier in fair shares when a model is at capacity
(gateway/flow.py; the account's best live package decides, billing/tiers.py). Packages made
before this revision weigh 1.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CHECK = "ck_packages_weight"  # the metadata's naming convention, spelled out
RANGE = "weight >= 1 AND weight <= 100"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":  # a column CHECK: no table rebuild
        op.execute(f"ALTER TABLE packages ADD COLUMN weight INTEGER DEFAULT 1 NOT NULL "
                   f"CONSTRAINT {CHECK} CHECK ({RANGE})")
    else:
        op.add_column("packages", sa.Column("weight", sa.Integer(), nullable=False, server_default="1"))
        op.create_check_constraint(op.f(CHECK), "packages", RANGE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f(CHECK), "packages", type_="check")
    op.drop_column("packages", "weight")
