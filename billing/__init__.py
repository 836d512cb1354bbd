"""Billing: the SQL ledger of accounts, keys, packages, purchases and usage.

The gateway's hot path never waits on SQL: it admits and settles in Redis and appends each
request's usage event to a Redis stream. Billing owns the ledger (the truth) and keeps
Redis (the fast copy admission reads) in line with it:

    db/         schema (SQLAlchemy Core), engine for DATABASE_URL, Alembic migrations
    ledger.py   double-entry postings: purchases and usage, idempotent
    accounts.py accounts and API keys: written to SQL, then pushed to Redis
    packages.py the package catalog and purchases (grants)
    worker.py   the billing worker: usage streams -> ledger, exactly once
    reconcile.py ledger vs Redis: drift report and rebuild
    api.py      the admin and self-service routes the app factory mounts

See docs/billing.md.
"""
