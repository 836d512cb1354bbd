"""packages.price_amount, price_currency, for_sale, trial: packages customers can buy.

A package on sale has a price (integer minor units of an ISO 4217 currency); at most one
package is the trial package (a partial unique index, so two concurrent creations cannot
both win). Packages made before this revision are not on sale and not the trial.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

CHECK = "ck_packages_price"  # the metadata's naming convention, spelled out
TRIAL = "uq_packages_one_trial"
PRICE = "(price_amount IS NULL) = (price_currency IS NULL) AND (price_amount IS NULL OR price_amount >= 0)"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # Column CHECKs: SQLite adds them in place; a table CHECK would rebuild the table.
        op.execute("ALTER TABLE packages ADD COLUMN price_currency VARCHAR(3)")
        op.execute(f"ALTER TABLE packages ADD COLUMN price_amount BIGINT CONSTRAINT {CHECK} CHECK ({PRICE})")
    else:
        op.add_column("packages", sa.Column("price_amount", sa.BigInteger(), nullable=True))
        op.add_column("packages", sa.Column("price_currency", sa.String(3), nullable=True))
        op.create_check_constraint(op.f(CHECK), "packages", PRICE)
    op.add_column("packages", sa.Column("for_sale", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("packages", sa.Column("trial", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index(TRIAL, "packages", ["trial"], unique=True,
                    sqlite_where=sa.text("trial"), postgresql_where=sa.text("trial"))


def downgrade() -> None:
    op.drop_index(TRIAL, "packages")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f(CHECK), "packages", type_="check")
    for column in ("trial", "for_sale", "price_amount", "price_currency"):  # the CHECK goes first
        op.drop_column("packages", column)
