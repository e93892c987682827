"""Logical capture (``PGBINDING["CAPTURE"] = "logical"``): the SQL, the slot, and the rows.

Instead of triggers, Postgres' logical decoding captures the bound tables' changes: they are
in a publication (:data:`VERSION`'s template), ``REPLICA IDENTITY FULL`` (every UPDATE and
DELETE logs the whole old row), and a ``pgoutput`` replication slot keeps their WAL until the
listener has read it. The listener's pump (:mod:`pgbinding.delivery.pump`) peeks the slot,
decodes it (:mod:`.pgoutput`), and writes each committed transaction's changes into
``pgbinding_change`` in commit order, in the same shape as the triggers (:class:`Converter`),
so everything downstream is the same. Its position in the slot is stored with those rows
(``pgbinding_slot``, schema v3) and the slot is advanced only after they commit.

The migration operations that switch tables between the backends live in :mod:`.logical_ops`.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql as psql
from psycopg.types.hstore import HstoreLoader

from ..exceptions import PgBindingError
from . import pgoutput
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
#: One statement for a whole round's rows, in commit order (ids are drawn in the ORDER BY's
#: order), leaving out the transactions written before (end LSN <= confirmed_lsn, which it
#: locks: writers of one slot's changes take turns).
INSERT_SQL = (
    "WITH slot AS (SELECT confirmed_lsn FROM pgbinding_slot WHERE name = %(slot)s FOR UPDATE)"
    " INSERT INTO pgbinding_change (created_at, table_name, op, pk, old, new)"
    " SELECT u.created_at, u.table_name, u.op, u.pk, u.old, u.new"
    " FROM unnest(%(created_at)s::timestamptz[], %(table_name)s::text[],"
    ' %(op)s::text[]::"char"[], %(pk)s::text[], %(old)s::text[]::jsonb[],'
    " %(new)s::text[]::jsonb[], %(end_lsn)s::text[]::pg_lsn[]) WITH ORDINALITY"
    " AS u(created_at, table_name, op, pk, old, new, end_lsn, n), slot"
    " WHERE u.end_lsn > slot.confirmed_lsn ORDER BY u.n"
)
#: The pump's write, as one statement (its own transaction: one round trip): committed
#: durably whatever the session's synchronous_commit; the rows of :data:`INSERT_SQL`, and the
#: slot's confirmed_lsn moved to %(lsn)s. Returns how many rows it wrote.
WRITE_SQL = (
    "WITH durable AS (SELECT set_config('synchronous_commit', 'on', true)),"
    " slot AS (SELECT s.confirmed_lsn FROM pgbinding_slot s, durable WHERE s.name = %(slot)s"
    "  FOR UPDATE OF s),"
    " ins AS (INSERT INTO pgbinding_change (created_at, table_name, op, pk, old, new)"
    "  SELECT u.created_at, u.table_name, u.op, u.pk, u.old, u.new"
    "  FROM unnest(%(created_at)s::timestamptz[], %(table_name)s::text[],"
    '  %(op)s::text[]::"char"[], %(pk)s::text[], %(old)s::text[]::jsonb[],'
    "  %(new)s::text[]::jsonb[], %(end_lsn)s::text[]::pg_lsn[]) WITH ORDINALITY"
    "  AS u(created_at, table_name, op, pk, old, new, end_lsn, n), slot"
    "  WHERE u.end_lsn > slot.confirmed_lsn ORDER BY u.n RETURNING 1),"
    " upd AS (UPDATE pgbinding_slot SET updated_at = now(),"
    "  confirmed_lsn = greatest(confirmed_lsn, %(lsn)s::pg_lsn)"
    "  WHERE name = %(slot)s AND EXISTS (SELECT FROM slot) RETURNING 1)"
    " SELECT (SELECT count(*) FROM ins)::integer, (SELECT count(*) FROM upd)::integer"
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


# -- decoded transactions -> log rows ----------------------------------------------------------

#: (created_at, table_name, op, pk, old, new, end LSN of its transaction): one
#: pgbinding_change row (old and new as JSON text).
LogRow = tuple[datetime.datetime, str, str, str | None, str | None, str | None, int]


@dataclass(frozen=True, slots=True)
class RelationInfo:
    pk: str | None
    #: How to write each column whose to_jsonb shape is not its text output: "json" (json,
    #: jsonb: the text is JSON), "hstore" (an object), "timestamptz"/"timestamp" (ISO 8601
    #: with a "T"), and "[]" + one of those, or "[]" alone, for arrays (a JSON array).
    kinds: dict[str, str]
    columns: frozenset[str]


_KINDS = {"json": "json", "jsonb": "json", "hstore": "hstore"}
_KINDS.update(timestamptz="timestamptz", timestamp="timestamp")
_hstore = HstoreLoader(0)


class Converter:
    """Turns decoded transactions into the rows the trigger backend would have logged: each
    row as ``to_jsonb(row)`` reads (json and jsonb parsed, hstore an object, every other value
    its text output, which :mod:`pgbinding.rows` loads with the column type's loader); an
    UPDATE of the key as a delete plus an insert; an UPDATE that changed nothing not at all."""

    def __init__(self) -> None:
        self.infos: dict[int, RelationInfo] = {}

    def missing(self, transactions: Iterable[pgoutput.Transaction]) -> set[int]:
        """Relations whose columns this converter must learn (:meth:`learn`) first."""
        out = set()
        for tx in transactions:
            for change in tx.changes:
                rel = change.relation
                info = self.infos.get(rel.relid)
                if info is None or not {c.name for c in rel.columns} <= info.columns:
                    out.add(rel.relid)
        return out

    def learn(self, relid: int, rows: Sequence[tuple[Any, ...]]) -> None:
        """Store the result of :data:`RELATION_SQL` for ``relid``."""
        kinds = {}
        for name, typname, is_array, element, _ in rows:
            kind = "[]" + _KINDS.get(element, "") if is_array else _KINDS.get(typname)
            if kind:
                kinds[str(name)] = kind
        pk = next((str(r[0]) for r in rows if r[4]), None)
        self.infos[relid] = RelationInfo(pk, kinds, frozenset(str(r[0]) for r in rows))

    def rows(self, transactions: Iterable[pgoutput.Transaction]) -> list[LogRow]:
        out: list[LogRow] = []
        for tx in transactions:
            at, end = tx.begin.commit_time, tx.end_lsn
            for change in tx.changes:
                rel = change.relation
                if change.op == "T":
                    out.append((at, rel.name, "T", None, None, None, end))
                    continue
                info = self.infos[rel.relid]
                old, new = change.old, change.new
                if change.op == "U" and old is not None and new is not None:
                    if old == new:
                        continue
                    if info.pk is not None and old.get(info.pk) != new.get(info.pk):
                        out.append(self._row(at, end, rel.name, "D", info, old, None))
                        out.append(self._row(at, end, rel.name, "I", info, None, new))
                        continue
                out.append(self._row(at, end, rel.name, change.op, info, old, new))
        return out

    def _row(
        self,
        at: datetime.datetime,
        end: int,
        table: str,
        op: str,
        info: RelationInfo,
        old: dict[str, str | None] | None,
        new: dict[str, str | None] | None,
    ) -> LogRow:
        key_row = new if new is not None else old
        pk = key_row.get(info.pk) if key_row is not None and info.pk is not None else None
        return (at, table, op, pk, _json(old, info), _json(new, info), end)


def _json(row: dict[str, str | None] | None, info: RelationInfo) -> str | None:
    if row is None:
        return None
    parts = []
    for name, value in row.items():
        text = "null" if value is None else _value(value, info.kinds.get(name, ""))
        parts.append(f"{json.dumps(name, ensure_ascii=False)}: {text}")
    return "{" + ", ".join(parts) + "}"


def _value(text: str, kind: str) -> str:
    """One value's text output as the JSON ``to_jsonb`` gives for it (see RelationInfo)."""
    if kind == "":
        return json.dumps(text, ensure_ascii=False)
    if kind == "json":
        return text  # the column's own JSON text; jsonb input normalizes it as to_jsonb does
    if kind == "hstore":
        return json.dumps(_hstore.load(text.encode()), ensure_ascii=False)
    if kind.startswith("[]"):
        try:
            items = parse_array(text)
        except ValueError:
            return json.dumps(text, ensure_ascii=False)
        return _array(items, kind[2:])
    # timestamp(tz): ISO 8601 as to_jsonb writes it ("2026-01-02T03:04:05+00:00"); the text
    # output uses the pinned DateStyle ISO ("2026-01-02 03:04:05+00").
    text = text.replace(" ", "T", 1) if text[:1].isdigit() else text
    if kind == "timestamptz":
        text = _OFFSET.sub(r"\1:00\2", text)
    return json.dumps(text, ensure_ascii=False)


_OFFSET = re.compile(r"([+-]\d\d)( BC)?$")


def _array(items: list[Any], kind: str) -> str:
    parts = [
        "null" if v is None else _array(v, kind) if isinstance(v, list) else _value(v, kind)
        for v in items
    ]
    return "[" + ", ".join(parts) + "]"


def parse_array(text: str) -> list[Any]:
    """A Postgres array's text output as nested lists of element texts (None for NULL)."""
    if text.startswith("["):  # explicit bounds, "[0:1]={1,2}": to_jsonb drops them
        text = text[text.index("=") + 1 :]
    pos = 0

    def parse() -> list[Any]:
        nonlocal pos
        if text[pos] != "{":
            raise ValueError(f"not an array: {text!r}")
        pos += 1
        out: list[Any] = []
        while text[pos] != "}":
            if text[pos] == "{":
                out.append(parse())
            elif text[pos] == '"':
                end, chars = pos + 1, []
                while text[end] != '"':
                    if text[end] == "\\":
                        end += 1
                    chars.append(text[end])
                    end += 1
                out.append("".join(chars))
                pos = end + 1
            else:
                end = pos
                while text[end] not in ",}":
                    end += 1
                item = text[pos:end]
                out.append(None if item.upper() == "NULL" else item)
                pos = end
            if text[pos] == ",":
                pos += 1
        pos += 1
        return out

    try:
        result = parse()
    except IndexError:
        raise ValueError(f"unterminated array: {text!r}") from None
    if pos != len(text):
        raise ValueError(f"text after the array: {text!r}")
    return result


def insert_params(slot: str, rows: Sequence[LogRow]) -> dict[str, Any]:
    """Parameters of :data:`INSERT_SQL` for ``rows``."""
    return {
        "slot": slot,
        "end_lsn": [lsn_text(r[6]) for r in rows],
        "created_at": [r[0] for r in rows],
        "table_name": [r[1] for r in rows],
        "op": [r[2] for r in rows],
        "pk": [r[3] for r in rows],
        "old": [r[4] for r in rows],
        "new": [r[5] for r in rows],
    }


def pin_settings_sql(local: bool = False) -> list[str]:
    """``SET`` statements for :data:`SESSION_SETTINGS` (``SET LOCAL`` with ``local``)."""
    scope = "LOCAL " if local else ""
    return [
        psql.SQL("SET {}{} = {}")
        .format(psql.SQL(scope), psql.SQL(k), psql.Literal(v))
        .as_string(None)
        for k, v in SESSION_SETTINGS.items()
    ]
