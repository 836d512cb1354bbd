"""Commerce: orders, redemption codes, adjustments, alerts, the audit log; key credit caps
and withdrawn credits.

- ``orders``: what a customer asked to buy, ``pending`` until a provider pays it (then its
  package is granted with the order id as the purchase's order_id), ``expired`` or
  ``refunded``.
- ``redemption_codes``: minted by admins, stored as SHA-256 only, redeemed once.
- ``adjustments``: an operator's signed correction, once per (account, idempotency key).
  A credit is a grant of the ``adjustment`` package, which this revision adds.
- ``account_alerts`` and ``alert_deliveries``: an account's alert receiver and thresholds,
  and the outbox of signed webhooks (delivered at least once).
- ``audit_log``: every admin write and every order's change of state.
- ``api_keys.credit_limit``/``credit_period``: a key's spending cap.
- ``grants.withdrawn``: credits taken back from a grant (refund, debit adjustment).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

ID = sa.String(64)
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

KEY_CHECK = "ck_api_keys_credit_limit"  # the metadata's naming convention, spelled out
GRANT_CHECK = "ck_grants_withdrawn"
CREDIT_LIMIT = ("(credit_limit IS NULL) = (credit_period IS NULL) AND (credit_limit IS NULL OR "
                "(credit_limit > 0 AND credit_period IN ('day', 'month', 'total')))")
WITHDRAWN = "withdrawn >= 0 AND withdrawn <= credits"
NEW_TABLES = ("orders", "redemption_codes", "adjustments", "account_alerts", "alert_deliveries",
              "audit_log")  # in creation order (foreign keys)
# A credit adjustment's grant names this package; it is never on sale.
ADJUSTMENT_PACKAGE = {
    "id": "adjustment", "name": "Credit adjustment", "credits": 1, "valid_days": 36500,
    "models": None, "list_price": None, "created_at_ms": 0, "price_amount": None, "price_currency": None,
    "for_sale": False, "trial": False,
}
PACKAGES = sa.table("packages", *(sa.column(name) for name in ADJUSTMENT_PACKAGE))


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # Column CHECKs: SQLite adds them in place; a table CHECK would rebuild the table.
        op.execute("ALTER TABLE api_keys ADD COLUMN credit_period VARCHAR(8)")
        op.execute(f"ALTER TABLE api_keys ADD COLUMN credit_limit BIGINT CONSTRAINT {KEY_CHECK} "
                   f"CHECK ({CREDIT_LIMIT})")
        op.execute(f"ALTER TABLE grants ADD COLUMN withdrawn BIGINT DEFAULT 0 NOT NULL CONSTRAINT "
                   f"{GRANT_CHECK} CHECK ({WITHDRAWN})")
    else:
        op.add_column("api_keys", sa.Column("credit_limit", sa.BigInteger(), nullable=True))
        op.add_column("api_keys", sa.Column("credit_period", sa.String(8), nullable=True))
        op.create_check_constraint(op.f(KEY_CHECK), "api_keys", CREDIT_LIMIT)
        op.add_column("grants", sa.Column("withdrawn", sa.BigInteger(), nullable=False, server_default="0"))
        op.create_check_constraint(op.f(GRANT_CHECK), "grants", WITHDRAWN)
    _create_tables()
    op.bulk_insert(PACKAGES, [ADJUSTMENT_PACKAGE])


def _create_tables() -> None:
    """The new tables as this revision made them (billing/db/schema.py describes them)."""
    op.create_table(
        "orders",
        sa.Column("id", ID, primary_key=True),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("package_id", ID, sa.ForeignKey("packages.id"), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("provider_ref", sa.String(255), nullable=True),
        sa.Column("payment_ref", sa.String(255), nullable=True),
        sa.Column("checkout_url", sa.Text(), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("paid_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("refunded_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("grant_id", ID, sa.ForeignKey("grants.id"), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'paid', 'expired', 'refunded')", name="ck_orders_status"),
        sa.CheckConstraint("amount >= 0", name="ck_orders_amount"),
        sa.Index("ix_orders_account_time", "account_id", "created_at_ms", "id"),
        sa.Index("ix_orders_status_time", "status", "created_at_ms", "id"),
    )
    op.create_table(
        "redemption_codes",
        sa.Column("id", ID, primary_key=True),
        sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("batch_id", ID, nullable=False, index=True),
        sa.Column("package_id", ID, sa.ForeignKey("packages.id"), nullable=False, index=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("redeemed_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("redeemed_by", ID, sa.ForeignKey("accounts.id"), nullable=True),
        sa.Column("grant_id", ID, sa.ForeignKey("grants.id"), nullable=True),
        sa.CheckConstraint("(redeemed_at_ms IS NULL) = (redeemed_by IS NULL)",
                           name="ck_redemption_codes_redeemed"),
    )
    op.create_table(
        "adjustments",
        sa.Column("id", ID, primary_key=True),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("grant_id", ID, sa.ForeignKey("grants.id"), nullable=True),
        sa.Column("allocation", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("account_id", "idempotency_key", name="uq_adjustments_key"),
        sa.CheckConstraint("credits <> 0", name="ck_adjustments_credits"),
        sa.CheckConstraint("status IN ('pending', 'applied', 'refused')", name="ck_adjustments_status"),
    )
    op.create_table(
        "account_alerts",
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("secret", sa.String(128), nullable=True),
        sa.Column("low_balance", sa.BigInteger(), nullable=True),
        sa.Column("expiry_days", sa.Integer(), nullable=True),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "alert_deliveries",
        sa.Column("id", ID, primary_key=True),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("dedupe", sa.String(300), nullable=False, unique=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_ms", sa.BigInteger(), nullable=False),
        sa.Column("delivered_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Index("ix_alert_deliveries_due", "delivered_at_ms", "next_attempt_ms"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", SERIAL, primary_key=True, autoincrement=True),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Index("ix_audit_time", "at_ms", "id"),
        sa.Index("ix_audit_target", "target", "at_ms"),
    )


def downgrade() -> None:
    bind = op.get_bind()
    for name in reversed(NEW_TABLES):
        op.drop_table(name)
    op.execute(sa.text("DELETE FROM packages WHERE id = :id").bindparams(id="adjustment"))
    if bind.dialect.name != "sqlite":
        op.drop_constraint(op.f(KEY_CHECK), "api_keys", type_="check")
        op.drop_constraint(op.f(GRANT_CHECK), "grants", type_="check")
    for table, column in (("api_keys", "credit_limit"), ("api_keys", "credit_period"),
                          ("grants", "withdrawn")):
        op.drop_column(table, column)
