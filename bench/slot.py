"""The logical capture backend in the benchmarks that time statements against a raw table
(write_path, bulk): the server it needs, a table set up as its migrations do it, and the slot.

The listener's pump (pgbinding/delivery/pump.py) decodes every WAL record after the slot's
position, whichever table wrote it. So a benchmark that measures other variants in the same
database runs the logical listener only while the logical variant is measured, and moves the
slot past everything else first (:func:`skip`): as the triggers are off when a benchmark resets
its tables, nothing but the measured load reaches the log, and the slot holds back no WAL.
"""

from __future__ import annotations

from typing import Any

import psycopg

from pgbinding.capture import logical

#: pgbinding's defaults (SLOT_NAME, PUBLICATION_NAME), which the listener's pump reads.
SLOT = "pgbinding"
PUBLICATION = "pgbinding"
#: What the server needs for logical capture; a run with a logical variant starts its private
#: server with these for every variant, so the ratios compare like with like.
SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "4",
    "max_wal_senders": "4",
}


def wal_level(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_setting('wal_level')").fetchone()
    return str(row[0]) if row else "?"


def install(conn: psycopg.Connection[Any], tables: list[str]) -> None:
    """Put ``tables`` under logical capture as the migrations do: the slot first (Postgres
    creates one only in a transaction that has not written), then each table's statements
    (REPLICA IDENTITY FULL, the publication). ``conn`` is in autocommit mode."""
    with conn.cursor() as cursor:
        logical.ensure_slot(cursor, SLOT)
    with conn.transaction():
        for table in tables:
            for statement in logical.capture_sql(table, PUBLICATION)[0]:
                conn.execute(statement)


def drop(conn: psycopg.Connection[Any]) -> None:
    """Drop the slot (slot names are per server: another database may want one)."""
    with conn.cursor() as cursor:
        logical.drop_slot(cursor, SLOT)


def skip(conn: psycopg.Connection[Any]) -> None:
    """Move the slot past all WAL so far. Only with no logical listener running (it would be
    in use). Twice: the second advance moves restart_lsn to the snapshot the first logged, so
    a checkpoint can recycle the WAL before it."""
    for _ in range(2):
        # A transactional message commits (durably): the WAL so far is flushed, which the
        # advance reads up to. pgoutput sends no messages.
        conn.execute("SELECT pg_logical_emit_message(true, 'bench', '')")
        conn.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_flush_lsn())", [SLOT])
        if conn.info.server_version >= 160000:
            conn.execute("SELECT pg_log_standby_snapshot()")


def flush_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


def read_lsn(conn: psycopg.Connection[Any]) -> int:
    """How far the pump has read the slot: its confirmed_flush_lsn (moved after sending, at
    most the pump's ADVANCE_INTERVAL late) or the pump's last write, whichever is later."""
    row = conn.execute(
        "SELECT greatest((SELECT confirmed_flush_lsn FROM pg_replication_slots"
        " WHERE slot_name = %(slot)s), (SELECT confirmed_lsn FROM pgbinding_slot"
        " WHERE name = %(slot)s)) - '0/0'::pg_lsn",
        {"slot": SLOT},
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def log_rows(conn: psycopg.Connection[Any]) -> int:
    """Rows in the log (its ids have no gaps after a TRUNCATE: a cheap count)."""
    row = conn.execute("SELECT coalesce(max(id) - min(id) + 1, 0) FROM pgbinding_change").fetchone()
    return int(row[0]) if row else 0
