"""Logical capture (``PGBINDING["CAPTURE"] = "logical"``): its SQL and the slot.

Instead of triggers, Postgres' logical decoding captures the bound tables' changes: they are
in a publication (:data:`VERSION`'s template), ``REPLICA IDENTITY FULL`` (every UPDATE and
DELETE logs the whole old row), and a ``pgoutput`` replication slot keeps their WAL until the
listener has read it. The listener's pump (:mod:`pgbinding.delivery.pump`) peeks the slot,
decodes it (:mod:`.pgoutput`), and writes each committed transaction's changes into
``pgbinding_change`` in commit order, in the same shape as the triggers (:mod:`.logrows`),
so everything downstream is the same. Its position in the slot is stored with those rows
(``pgbinding_slot``, schema v3) and the slot is advanced only after they commit.

The migration operations that switch tables between the backends live in :mod:`.logical_ops`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql as psql

from ..exceptions import PgBindingError
from .sql import template, validate_identifier

#: The per-table logical capture version new migrations install.
VERSION = "logical_v1"
VERSIONS = ("logical_v1",)

#: Session settings that pgoutput's text output depends on, pinned as the v2 trigger pins them.
SESSION_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "bytea_output": "hex",
    "extra_float_digits": "1",
}

PEEK_SQL = (
    "SELECT data FROM pg_logical_slot_peek_binary_changes(%(slot)s, %(upto)s::pg_lsn,"
    " %(limit)s, 'proto_version', '1', 'publication_names', %(publication)s)"
)
#: The flush position (first column of every row), and the changes committed before it.
PEEK_AT_FLUSH_SQL = (
    "SELECT (f.lsn - '0/0'::pg_lsn)::bigint, p.data"
    " FROM (SELECT pg_current_wal_flush_lsn() AS lsn) f"
    " LEFT JOIN LATERAL pg_logical_slot_peek_binary_changes(%(slot)s, f.lsn, %(limit)s,"
    " 'proto_version', '1', 'publication_names', %(publication)s) p ON true"
)
FLUSH_SQL = (
    "SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint,"
    " (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"
)
ENSURE_ROW_SQL = "INSERT INTO pgbinding_slot (name) VALUES (%(slot)s) ON CONFLICT (name) DO NOTHING"
#: Serializes writers of one slot's changes (the pump, a migration draining the slot) and
#: reads how far they have written (after :data:`ENSURE_ROW_SQL`).
LOCK_SQL = (
    "SELECT (confirmed_lsn - '0/0'::pg_lsn)::bigint FROM pgbinding_slot"
    " WHERE name = %(slot)s FOR UPDATE"
)
CONFIRM_SQL = (
    "UPDATE pgbinding_slot SET confirmed_lsn = greatest(confirmed_lsn, %(lsn)s::pg_lsn),"
    " updated_at = now() WHERE name = %(slot)s"
)
#: The rows of a round (:func:`pgbinding.capture.logrows.insert_params`), one JSON array per
#: row in one JSON document: [created_at, table, op, pk, old, new, end LSN]. Postgres takes it
#: apart in C; arrays of text parameters cost psycopg a Python loop per element.
ROWS_SQL = (
    'SELECT (e->>0)::timestamptz AS created_at, e->>1 AS table_name, (e->>2)::"char" AS op,'
    " e->>3 AS pk,"
    " CASE WHEN json_typeof(e->4) = 'null' THEN NULL ELSE (e->4)::jsonb END AS old,"
    " CASE WHEN json_typeof(e->5) = 'null' THEN NULL ELSE (e->5)::jsonb END AS new,"
    " (e->>6)::pg_lsn AS end_lsn, n"
    " FROM json_array_elements(%(rows)s::json) WITH ORDINALITY AS r(e, n)"
)
#: The log rows of a round not written before (end LSN <= the ``slot`` CTE's confirmed_lsn),
#: in commit order (ids are drawn in the ORDER BY's order).
_INSERT_ROWS = (
    "INSERT INTO pgbinding_change (created_at, table_name, op, pk, old, new)"
    " SELECT u.created_at, u.table_name, u.op, u.pk, u.old, u.new"
    " FROM ({rows}) u, slot WHERE u.end_lsn > slot.confirmed_lsn ORDER BY u.n"
)
#: One statement for a whole round's rows, leaving out the transactions written before
#: (confirmed_lsn, which it locks: writers of one slot's changes take turns).
INSERT_SQL = (
    "WITH slot AS (SELECT confirmed_lsn FROM pgbinding_slot WHERE name = %(slot)s FOR UPDATE)"
    " {insert}"
)
#: The CTE of the pump's writes that moves the slot's confirmed_lsn to %(lsn)s (after the
#: ``slot`` CTE found the row to write under).
_CONFIRM_CTE = (
    "upd AS (UPDATE pgbinding_slot SET updated_at = now(),"
    " confirmed_lsn = greatest(confirmed_lsn, %(lsn)s::pg_lsn)"
    " WHERE name = %(slot)s AND EXISTS (SELECT FROM slot) RETURNING 1)"
)
#: The pump's write, as one statement (its own transaction: one round trip): committed
#: durably whatever the session's synchronous_commit; the rows of :data:`INSERT_SQL`, and the
#: slot's confirmed_lsn moved to %(lsn)s. Returns how many rows it wrote.
WRITE_SQL = (
    "WITH durable AS (SELECT set_config('synchronous_commit', 'on', true)),"
    " slot AS (SELECT s.confirmed_lsn FROM pgbinding_slot s, durable WHERE s.name = %(slot)s"
    "  FOR UPDATE OF s),"
    " ins AS ({insert} RETURNING 1),"
    " {confirm}"
    " SELECT (SELECT count(*) FROM ins)::integer, (SELECT count(*) FROM upd)::integer"
)
#: The capture trigger functions (templates trigger_v1, trigger_v2): while a trigger calls one
#: of them, writers draw log ids from the identity sequence at any moment.
TRIGGER_FUNCTIONS = ("pgbinding_capture_v1()", "pgbinding_capture_v2()")
#: The pump's write when it streams, one statement: committed *asynchronously* (no wait for
#: the WAL flush on the way to the clients), with ids that depend only on what the log holds,
#: ``greatest(max(id), pruned_through) + 1, 2, ...`` in commit order. A server crash can lose
#: such a write after its rows were sent; the slot has not let go of them (the pump confirms a
#: position only once the write is flushed), the pump writes them again, and they get the same
#: ids, which consumers drop as repeats. The identity sequence is moved past them (for a
#: migration's drain, or triggers later).
#:
#: Writes nothing, and says so, when its snapshot is older than the slot row it locks (another
#: writer of the slot, a migration's drain or a listener that lost the lead, committed in
#: between, so ``max(id)`` may be stale), or while an enabled capture trigger exists (a switch
#: of backends in progress: a trigger may draw an id from the sequence at any moment; one
#: disabled with ``ALTER TABLE ... DISABLE TRIGGER`` fires for no writer); the pump
#: then writes with :data:`WRITE_SQL`. Its first row: (rows written, slot rows updated, an
#: enabled capture trigger exists, the snapshot was stale, the WAL insert and flush positions as
#: integers); then one row per log row written, in id order, with the columns the log reader
#: reads (id, table_name, op, pk, old, new) in its last six columns: the listener sends those
#: without reading them back.
ASYNC_WRITE_SQL = (
    "WITH triggers AS (SELECT EXISTS (SELECT FROM pg_depend d JOIN pg_trigger g ON g.oid = d.objid"
    "   WHERE d.classid = 'pg_trigger'::regclass AND d.refclassid = 'pg_proc'::regclass"
    "   AND d.refobjid IN (SELECT to_regprocedure(f) FROM unnest(%(functions)s::text[]) f)"
    "   AND g.tgenabled <> 'D') AS t),"
    " async AS (SELECT set_config('synchronous_commit', 'off', true)),"
    " locked AS (SELECT s.confirmed_lsn, s.xmin = (SELECT p.xmin FROM pgbinding_slot p"
    "  WHERE p.name = %(slot)s) AS fresh FROM pgbinding_slot s, async"
    "  WHERE s.name = %(slot)s FOR UPDATE OF s),"
    " slot AS (SELECT l.confirmed_lsn FROM locked l, triggers WHERE l.fresh AND NOT triggers.t),"
    " base AS (SELECT greatest((SELECT max(id) FROM pgbinding_change),"
    "  (SELECT max(pruned_through) FROM pgbinding_state), 0) AS id),"
    " ins AS (INSERT INTO pgbinding_change (id, created_at, table_name, op, pk, old, new)"
    "  OVERRIDING SYSTEM VALUE"
    "  SELECT base.id + row_number() OVER (ORDER BY u.n), u.created_at, u.table_name, u.op, u.pk,"
    "  u.old, u.new FROM ({rows}) u, slot, base WHERE u.end_lsn > slot.confirmed_lsn"
    "  ORDER BY u.n RETURNING id, table_name, op, pk, old, new),"
    " seq AS (SELECT setval(pg_get_serial_sequence('pgbinding_change', 'id'), greatest(max(i.id),"
    "  pg_sequence_last_value(pg_get_serial_sequence('pgbinding_change', 'id')::regclass)))"
    "  FROM ins i HAVING count(*) > 0),"
    " {confirm}"
    " SELECT (SELECT count(*) FROM ins)::integer, (SELECT count(*) FROM upd)::integer,"
    " (SELECT t FROM triggers), NOT coalesce((SELECT fresh FROM locked), true),"
    " (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint,"
    " (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint,"
    ' (SELECT count(*) FROM seq)::integer, NULL::bigint, NULL::text, NULL::"char", NULL::text,'
    " NULL::jsonb, NULL::jsonb"
    " UNION ALL (SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, i.id, i.table_name, i.op, i.pk,"
    " i.old, i.new FROM ins i ORDER BY i.id)"
)
#: A durable write of nothing: its commit flushes every WAL record before it.
FLUSH_COMMIT_SQL = (
    "WITH durable AS (SELECT set_config('synchronous_commit', 'on', true))"
    " UPDATE pgbinding_slot SET updated_at = now() FROM durable WHERE name = %(slot)s"
)
_INSERT_ROWS = _INSERT_ROWS.format(rows=ROWS_SQL)
INSERT_SQL = INSERT_SQL.format(insert=_INSERT_ROWS)
WRITE_SQL = WRITE_SQL.format(insert=_INSERT_ROWS, confirm=_CONFIRM_CTE)
ASYNC_WRITE_SQL = ASYNC_WRITE_SQL.format(rows=ROWS_SQL, confirm=_CONFIRM_CTE)
#: Ends the walsender of a pgbinding listener's stream that holds slot %s (a listener that lost
#: the lead, or one a migration or drop-slot needs out of the way: it reconnects, polling
#: meanwhile). Returns the pids ended. Needs the right to signal that backend (the same role,
#: or pg_signal_backend).
RELEASE_SLOT_SQL = (
    "WITH holder AS MATERIALIZED (SELECT s.active_pid AS pid FROM pg_replication_slots s"
    " JOIN pg_stat_activity a ON a.pid = s.active_pid"
    " WHERE s.slot_name = %s AND a.backend_type = 'walsender'"
    " AND a.application_name LIKE 'pgbinding stream %%')"
    " SELECT pid FROM holder WHERE pg_terminate_backend(pid)"
)
ADVANCE_SQL = (
    "SELECT pg_replication_slot_advance(slot_name, %(lsn)s::pg_lsn) FROM pg_replication_slots"
    " WHERE slot_name = %(slot)s AND %(lsn)s::pg_lsn > confirmed_flush_lsn"
)
#: Columns of one relation (by oid): name, base type name, whether it is an array's, the
#: element's base type name, part of the primary key (domains read as their base type).
RELATION_SQL = """
SELECT a.attname::text, bt.typname::text, bt.typcategory = 'A', coalesce(eb.typname, '')::text,
       EXISTS (SELECT FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisprimary
                                         AND a.attnum = ANY (i.indkey))
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type e ON bt.typcategory = 'A' AND e.oid = bt.typelem
LEFT JOIN pg_type eb ON eb.oid = CASE WHEN e.typtype = 'd' THEN e.typbasetype ELSE e.oid END
WHERE a.attrelid = %s::oid AND a.attnum > 0 AND NOT a.attisdropped
"""
SLOT_SQL = """
SELECT slot_name::text, plugin::text, database::text, active, active_pid,
       restart_lsn::text, confirmed_flush_lsn::text,
       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint,
       wal_status, safe_wal_size, current_setting('max_slot_wal_keep_size')
FROM pg_replication_slots WHERE slot_name = %s
"""


class CaptureError(PgBindingError):
    """Logical capture cannot be set up or run as configured (the message says why)."""


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def flush_wal_sql(server_version: int) -> str | None:
    """A statement that flushes the WAL written so far when some is not flushed yet, or None
    (Postgres < 17). Decoding reads up to the flush position and, when that falls inside a
    record (the WAL writer flushes whole pages), waits until the rest is flushed: with nobody
    committing, that can take seconds. A non-transactional message with flush = true flushes
    it (pgoutput does not send messages)."""
    if server_version < 170000:
        return None
    return (
        "SELECT pg_logical_emit_message(false, 'pgbinding', '', true)"
        " WHERE pg_current_wal_insert_lsn() > pg_current_wal_flush_lsn()"
    )


# -- the SQL a migration pins ------------------------------------------------------------------


def capture_sql(
    table: str, publication: str, version: str = VERSION
) -> tuple[list[str], list[str]]:
    """(forward, reverse) statements that put one table under logical capture."""
    validate_identifier(table, "table name")
    validate_identifier(publication, "publication name")
    params = {
        "table": psql.Identifier(table),
        "table_name": psql.Literal(table),
        "publication": psql.Literal(publication),
    }
    forward = psql.SQL(template(version)).format(**params).as_string(None)
    reverse = psql.SQL(template(f"{version}.reverse")).format(**params).as_string(None)
    return _paragraphs(forward), _paragraphs(reverse)


def _paragraphs(text: str) -> list[str]:
    """A template's statements: paragraphs (blank-line separated), comment lines dropped."""
    out = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.lstrip().startswith("--")]
        statement = "\n".join(line.rstrip() for line in lines).strip()
        if statement:
            out.append(statement)
    return out


# -- the slot (sync: migrations, the status and management commands) ---------------------------


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    plugin: str
    database: str
    active: bool
    active_pid: int | None
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    #: WAL the slot keeps from being removed: pg_current_wal_lsn() - restart_lsn.
    retained_bytes: int
    #: pg_replication_slots.wal_status: reserved, extended, unreserved or lost.
    wal_status: str | None
    safe_wal_size: int | None
    max_slot_wal_keep_size: str


def slot_info(cursor: Any, name: str) -> SlotInfo | None:
    cursor.execute(SLOT_SQL, [name])
    row = cursor.fetchone()
    if row is None:
        return None
    return SlotInfo(
        row[0],
        row[1],
        row[2] or "",
        bool(row[3]),
        row[4],
        row[5],
        row[6],
        int(row[7]),
        row[8],
        int(row[9]) if row[9] is not None else None,
        str(row[10]),
    )


def ensure_slot(cursor: Any, name: str) -> bool:
    """Create the ``pgoutput`` slot ``name`` in this database unless it exists; True if it
    was created. It cannot be created in a transaction that has written (Postgres refuses)."""
    validate_identifier(name, "slot name")
    found = slot_info(cursor, name)
    cursor.execute("SELECT current_database()::text, current_setting('wal_level')")
    database, wal_level = cursor.fetchone()
    if found is not None:
        if found.plugin != "pgoutput" or found.database != database:
            raise CaptureError(
                f"Replication slot {name!r} exists but is not a pgoutput slot of database "
                f"{database!r} (plugin {found.plugin!r}, database {found.database!r}): set "
                "PGBINDING['SLOT_NAME'] to another name"
            )
        return False
    if wal_level != "logical":
        raise CaptureError(
            f"Logical capture needs wal_level = logical; this server has {wal_level!r}. Set "
            "it in postgresql.conf (with max_replication_slots and max_wal_senders >= 1) and "
            "restart Postgres, or keep PGBINDING['CAPTURE'] = 'trigger'."
        )
    cursor.execute("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
    if cursor.fetchone()[0]:
        raise CaptureError(
            f"Replication slot {name!r} does not exist, and Postgres cannot create one in a "
            "transaction that has already written (this migration did, before this "
            "operation). Create it first with `manage.py pgbinding create-slot`, then migrate "
            "again (`manage.py migrate` creates it by itself before it starts)."
        )
    cursor.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [name])
    return True


def drop_slot(cursor: Any, name: str) -> bool:
    """Drop slot ``name`` and forget its position; False if there was none."""
    if slot_info(cursor, name) is None:
        return False
    cursor.execute("SELECT pg_drop_replication_slot(%s)", [name])
    cursor.execute(
        "DELETE FROM pgbinding_slot WHERE name = %s AND to_regclass('pgbinding_slot') IS NOT NULL",
        [name],
    )
    return True


def table_state(cursor: Any, table: str, publication: str) -> str:
    """ "installed" when ``table`` is in the publication with REPLICA IDENTITY FULL, else
    "missing" (or "outdated": published without the full old row)."""
    cursor.execute(
        "SELECT c.relreplident::text, EXISTS (SELECT FROM pg_publication_rel r"
        "   JOIN pg_publication p ON p.oid = r.prpubid"
        "  WHERE p.pubname = %s AND r.prrelid = c.oid)"
        " FROM pg_class c WHERE c.oid = to_regclass(quote_ident(%s))",
        [publication, table],
    )
    row = cursor.fetchone()
    if row is None or not row[1]:
        return "missing"
    return "installed" if row[0] == "f" else "outdated"


def pin_settings_sql(local: bool = False) -> list[str]:
    """``SET`` statements for :data:`SESSION_SETTINGS` (``SET LOCAL`` with ``local``)."""
    scope = "LOCAL " if local else ""
    return [
        psql.SQL("SET {}{} = {}")
        .format(psql.SQL(scope), psql.SQL(k), psql.Literal(v))
        .as_string(None)
        for k, v in SESSION_SETTINGS.items()
    ]
