"""The ledger's guards in the database itself, for PostgreSQL and SQLite.

The legs of an entry are inserted first and the entry last: inserting the entry checks that
its legs (at least two) sum to zero; a leg for an entry already posted is refused, and a
leg without its entry fails the deferred foreign key at commit. Posted entries and legs
can be neither updated nor deleted: corrections are new entries. Each guard raises a
constraint error (IntegrityError in SQLAlchemy).

Migration 0001 runs these statements: once released they are frozen; a change to a guard
is a new migration with its own statements.
"""

from __future__ import annotations

IMMUTABLE = ("ledger_entries", "ledger_legs")

_CHECK = (
    "(SELECT COUNT(*) FROM ledger_legs WHERE entry_id = NEW.id) < 2 OR "
    "(SELECT COALESCE(SUM(amount), 0) FROM ledger_legs WHERE entry_id = NEW.id) <> 0"
)

SQLITE_UP = [
    f"""CREATE TRIGGER ledger_entry_balances BEFORE INSERT ON ledger_entries
    BEGIN SELECT RAISE(ABORT, 'ledger entry does not balance') WHERE {_CHECK}; END""",
    """CREATE TRIGGER ledger_leg_unposted BEFORE INSERT ON ledger_legs
    BEGIN SELECT RAISE(ABORT, 'ledger entry already posted')
    WHERE EXISTS (SELECT 1 FROM ledger_entries WHERE id = NEW.entry_id); END""",
    *(
        f"""CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table}
        BEGIN SELECT RAISE(ABORT, 'ledger rows are immutable'); END"""
        for table in IMMUTABLE
        for op in ("UPDATE", "DELETE")
    ),
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS ledger_entry_balances",
    "DROP TRIGGER IF EXISTS ledger_leg_unposted",
    *(f"DROP TRIGGER IF EXISTS {t}_no_{op}" for t in IMMUTABLE for op in ("update", "delete")),
]

POSTGRES_UP = [
    f"""CREATE FUNCTION ledger_entry_balances() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF {_CHECK} THEN
        RAISE EXCEPTION 'ledger entry % does not balance', NEW.id USING ERRCODE = 'check_violation';
      END IF;
      RETURN NEW;
    END $$""",
    """CREATE FUNCTION ledger_leg_unposted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF EXISTS (SELECT 1 FROM ledger_entries WHERE id = NEW.entry_id) THEN
        RAISE EXCEPTION 'ledger entry % already posted', NEW.entry_id
          USING ERRCODE = 'check_violation';
      END IF;
      RETURN NEW;
    END $$""",
    """CREATE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      RAISE EXCEPTION 'ledger rows are immutable (%)', TG_TABLE_NAME
        USING ERRCODE = 'check_violation';
    END $$""",
    """CREATE TRIGGER ledger_entry_balances BEFORE INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_balances()""",
    """CREATE TRIGGER ledger_leg_unposted BEFORE INSERT ON ledger_legs
    FOR EACH ROW EXECUTE FUNCTION ledger_leg_unposted()""",
    *(
        f"""CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table}
        FOR EACH ROW EXECUTE FUNCTION ledger_immutable()"""
        for table in IMMUTABLE
    ),
    *(
        f"""CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
        FOR EACH STATEMENT EXECUTE FUNCTION ledger_immutable()"""
        for table in IMMUTABLE
    ),
]
POSTGRES_DOWN = [
    *(f"DROP TRIGGER IF EXISTS {t}_immutable ON {t}" for t in IMMUTABLE),
    *(f"DROP TRIGGER IF EXISTS {t}_no_truncate ON {t}" for t in IMMUTABLE),
    "DROP TRIGGER IF EXISTS ledger_entry_balances ON ledger_entries",
    "DROP TRIGGER IF EXISTS ledger_leg_unposted ON ledger_legs",
    "DROP FUNCTION IF EXISTS ledger_entry_balances()",
    "DROP FUNCTION IF EXISTS ledger_leg_unposted()",
    "DROP FUNCTION IF EXISTS ledger_immutable()",
]


def statements(dialect: str, *, up: bool) -> list[str]:
    """The trigger DDL of a dialect (``postgresql`` or ``sqlite``)."""
    if dialect == "postgresql":
        return POSTGRES_UP if up else POSTGRES_DOWN
    if dialect == "sqlite":
        return SQLITE_UP if up else SQLITE_DOWN
    raise ValueError(f"the ledger supports PostgreSQL and SQLite, not {dialect}")
