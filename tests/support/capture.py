"""Running a test under either capture backend: ``trigger`` (the triggers the test apps'
migrations install) or ``logical`` (the same bound tables moved to logical decoding, with the
SQL the migration operations pin, and a pgoutput slot).

``with capture_backend("logical", conninfo):`` switches every bound table for the block and
back afterwards (dropping the slot). The listener under test must run with
``capture="logical"`` inside the block and be stopped before it ends. Logical tests need
``wal_level = logical``: tests/servers.py starts the private Postgres with it; against a server
of one's own (PGBINDING_TEST_DATABASE_URL) without it they skip, or fail under CI=true.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psycopg
import pytest

from pgbinding.capture import logical, sql
from pgbinding.conf import Settings
from pgbinding.registry import registry

BACKENDS = ("trigger", "logical")
SLOT = Settings().SLOT_NAME
PUBLICATION = Settings().PUBLICATION_NAME


def bound_tables() -> list[tuple[str, str]]:
    """(table, primary-key column) of every bound model."""
    out = []
    for model in registry.models():
        assert model._meta.pk is not None
        out.append((model._meta.db_table, str(model._meta.pk.column)))
    return sorted(set(out))


def require_logical(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT current_setting('wal_level')").fetchone()
    if row is None or row[0] != "logical":
        message = "logical capture needs a Postgres with wal_level = logical"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def switch_to_logical(conn: psycopg.Connection, slot: str = SLOT) -> None:
    """Every bound table from triggers to logical capture (a slot first, then one transaction),
    as the migrations do."""
    with conn.cursor() as cursor:
        logical.ensure_slot(cursor, slot)
    with conn.transaction():
        for table, pk in bound_tables():
            for statement in (
                sql.trigger_sql(table, pk)[1] + logical.capture_sql(table, PUBLICATION)[0]
            ):
                conn.execute(statement)


def switch_to_triggers(conn: psycopg.Connection, slot: str = SLOT, drop: bool = True) -> None:
    """Back to triggers; with ``drop``, the slot, its position and the publication go too."""
    with conn.transaction():
        for table, pk in bound_tables():
            for statement in (
                logical.capture_sql(table, PUBLICATION)[1] + sql.trigger_sql(table, pk)[0]
            ):
                conn.execute(statement)
    if drop:
        with conn.cursor() as cursor:
            logical.drop_slot(cursor, slot)
        conn.execute(f"DROP PUBLICATION IF EXISTS {PUBLICATION}")
        conn.execute("DELETE FROM pgbinding_slot")


@contextlib.contextmanager
def capture_backend(backend: str, conninfo: str) -> Iterator[str]:
    """Run the block with ``backend`` capturing the bound tables."""
    if backend == "trigger":
        yield backend
        return
    with psycopg.connect(conninfo, autocommit=True) as conn:
        require_logical(conn)
        switch_to_logical(conn)
    try:
        yield backend
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            switch_to_triggers(conn)
