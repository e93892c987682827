"""Logged rows to model values to JSON values: the one place where a row changes form.

The capture trigger logs each row as ``to_jsonb(row)``. An event must carry exactly what the
ORM's serialization of that row gives, whatever the writing session's settings and the column's
type. So a logged value is read back the way the ORM reads a column:

1. Postgres renders most types in ``to_jsonb`` with their text output (the v2 capture function
   pins TimeZone, DateStyle, IntervalStyle, bytea_output and extra_float_digits, so that text
   never depends on the writer); timestamps as ISO 8601, numbers as JSON numbers, arrays as
   JSON arrays. Each value is turned back into that text and loaded with **psycopg's own
   loader for the column's actual type** (read from the catalog), configured as Django
   configures it (:func:`django.db.backends.postgresql.psycopg_any.get_adapters_template`).
2. Then the field's database converters run (``from_db_value``), as for any ORM query.
3. :func:`pgbinding.serialize.json_value` writes each field as Django's serializers do.

Where Django cannot represent a value (``infinity`` and year-10000 timestamps, BC dates,
intervals beyond ``timedelta``), the change is still delivered: the field carries a documented
fallback (the text Postgres logged, e.g. ``"infinity"``) and a warning is logged once per
column. Non-finite floats serialize as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
(JSON has no such numbers). Logged rows are never completed from the database: a field whose
column is not in the logged row (added after the change was logged) gets its default.
"""

from __future__ import annotations

import datetime
import decimal
import inspect
import json
import logging
import re
import uuid
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models.fields import Field
from django.db.models.fields.json import JSONField

logger = logging.getLogger("pgbinding.rows")


#: Reads the column types of one table; ``%s`` is the table's name (quoted by quote_ident).
#: Domains are read as their base type, arrays with their (base) element type.
TYPES_SQL = """
SELECT a.attname::text, bt.oid::int, bt.typname::text, bt.typcategory::text,
       coalesce(eb.oid, 0)::int, coalesce(eb.typname, '')::text
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_range r ON r.rngtypid = bt.oid
LEFT JOIN pg_type e ON e.oid = CASE WHEN bt.typcategory = 'A' THEN bt.typelem
                                    ELSE r.rngsubtype END
LEFT JOIN pg_type eb ON eb.oid = CASE WHEN e.typtype = 'd' THEN e.typbasetype ELSE e.oid END
WHERE a.attrelid = to_regclass(quote_ident(%s)) AND a.attnum > 0 AND NOT a.attisdropped
"""


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A column's Postgres type (domains resolved to their base type)."""

    oid: int
    name: str
    category: str  # pg_type.typcategory: "A" array, "R" range, "D" date/time, "N" numeric...
    #: The element type of an array, the subtype of a range.
    element: ColumnType | None = None


#: Column types per table name; filled by :func:`remember_types` from the catalog.
_types: dict[str, dict[str, ColumnType]] = {}


def remember_types(table: str, rows: Iterable[tuple[Any, ...]]) -> dict[str, ColumnType]:
    """Store the result of :data:`TYPES_SQL` for ``table`` and return it."""
    columns = {}
    for name, oid, typname, category, elem_oid, elem_name in rows:
        element = ColumnType(int(elem_oid), str(elem_name), "") if elem_oid else None
        columns[str(name)] = ColumnType(int(oid), str(typname), str(category), element)
    remember_column_types(table, columns)
    return columns


def remember_column_types(table: str, columns: dict[str, ColumnType]) -> None:
    """Store ``table``'s column types as another process read them (:func:`known_types`)."""
    _types[table] = columns


def known_types(table: str) -> dict[str, ColumnType] | None:
    return _types.get(table)


def forget_types(table: str | None = None) -> None:
    """Drop cached column types (all of them, or one table's), e.g. after a migration."""
    if table is None:
        _types.clear()
    else:
        _types.pop(table, None)


def load_types_sync(cursor: Any, tables: Iterable[str]) -> None:
    """Fill the type cache for ``tables`` with a DB-API cursor (Django's, or psycopg's)."""
    for table in tables:
        if table not in _types:
            cursor.execute(TYPES_SQL, [table])
            remember_types(table, cursor.fetchall())


async def load_types(conn: Any, tables: Iterable[str]) -> None:
    """Fill the type cache for ``tables`` with a psycopg ``AsyncConnection``."""
    for table in tables:
        if table not in _types:
            cur = await conn.execute(TYPES_SQL, [table])
            remember_types(table, await cur.fetchall())


# -- loading one logged value --------------------------------------------------------------------


class _Loaders:
    """psycopg loaders configured as Django configures its connections."""

    def __init__(self) -> None:
        from psycopg.adapt import Transformer

        try:
            from django.db.backends.postgresql.psycopg_any import get_adapters_template

            context: Any = get_adapters_template(settings.USE_TZ, datetime.UTC)
        except ImportError:  # pragma: no cover - Django without psycopg 3 support
            import psycopg

            context = psycopg.adapters
        self._tx = Transformer(context)
        self._cache: dict[int, Any] = {}

    def load(self, oid: int, text: str) -> Any:
        loader = self._cache.get(oid)
        if loader is None:
            from psycopg.pq import Format

            loader = self._cache[oid] = self._tx.get_loader(oid, Format.TEXT)
        return loader.load(text.encode())


_loaders: _Loaders | None = None


def _loader() -> _Loaders:
    global _loaders
    if _loaders is None:
        _loaders = _Loaders()
    return _loaders


TIMESTAMPTZ = 1184
INTERVAL = 1186
#: Range text output: bounds, then lower and upper (possibly quoted, possibly empty).
_RANGE = re.compile(r'^([\[(])("(?:[^"\\]|\\.)*"|[^,]*),("(?:[^"\\]|\\.)*"|[^,]*)([\])])$')


class Unrepresentable(Exception):
    """A logged value Django cannot load; carries the fallback to send instead."""

    def __init__(self, fallback: Any, reason: str) -> None:
        super().__init__(reason)
        self.fallback = fallback


def plain_json(value: Any) -> Any:
    """A value parsed with Decimal numbers, as ``json.loads`` would have given it (floats)."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    return value


def _text(raw: Any) -> str | None:
    if isinstance(raw, bool):
        return "t" if raw else "f"
    if isinstance(raw, int | decimal.Decimal):
        return str(raw)
    if isinstance(raw, str):
        return raw
    return None


def _db_timezone_name(connection: Any = None) -> str:
    return str((connection if connection is not None else db_connection()).timezone_name)


def _load_scalar(ctype: ColumnType, raw: Any, connection: Any = None) -> Any:
    if ctype.name in ("json", "jsonb"):
        # Django loads jsonb as text and parses it in JSONField.from_db_value.
        return json.dumps(plain_json(raw)) if ctype.name == "jsonb" else plain_json(raw)
    if ctype.name == "hstore" and isinstance(raw, dict):
        return raw
    text = _text(raw)
    if text is None:  # a composite, or something else Postgres rendered as JSON structure
        raise Unrepresentable(plain_json(raw), f"{ctype.name} rendered as {type(raw).__name__}")
    if ctype.oid == INTERVAL and text.lstrip("-") == "infinity":
        # psycopg would read an infinite interval as timedelta(0).
        raise Unrepresentable(text, "an infinite interval")
    try:
        value = _loader().load(ctype.oid, text)
    except Exception as exc:
        if ctype.category == "R" and ctype.element is not None:
            return _load_range(ctype, text, connection)
        raise Unrepresentable(_fallback_text(ctype, text), f"{exc}") from None
    if ctype.oid == TIMESTAMPTZ and isinstance(value, datetime.datetime):
        # As the ORM reads it: in the connection's time zone (aware with USE_TZ, else naive).
        local = value.astimezone(zoneinfo.ZoneInfo(_db_timezone_name(connection)))
        return local if settings.USE_TZ else local.replace(tzinfo=None)
    return value


def _fallback_text(ctype: ColumnType, text: str) -> str:
    """The text Postgres logged, with UTC written as Django writes it ("Z")."""
    if ctype.oid == TIMESTAMPTZ:
        return re.sub(r"\+00:00( BC)?$", r"Z\1", text)
    return text


def _load_range(ctype: ColumnType, text: str, connection: Any = None) -> Any:
    """A range psycopg cannot load (a bound Python cannot hold, like ``infinity``): each bound
    loaded alone, the unloadable one kept as its text."""
    from psycopg.types.range import Range

    match = _RANGE.match(text)
    if match is None or ctype.element is None:
        raise Unrepresentable(text, f"{ctype.name} {text!r}")
    left, lower, upper, right = match.groups()

    def bound(part: str) -> Any:
        if part == "":
            return None
        if part.startswith('"'):
            part = re.sub(r"\\(.)", r"\1", part[1:-1])
        assert ctype.element is not None
        try:
            return _load_scalar(ctype.element, part, connection)
        except Unrepresentable as exc:
            return exc.fallback

    return Range(bound(lower), bound(upper), left + right)


def load_value(
    ctype: ColumnType, raw: Any, problems: list[str] | None = None, connection: Any = None
) -> Any:
    """One logged (``to_jsonb``) value as psycopg would load the column's text output. An array
    element Python cannot hold is kept as its text (and said in ``problems``). ``connection``:
    pgbinding's database connection (its time zone), when the caller has it at hand."""
    if raw is None:
        return None
    if ctype.category == "A" and ctype.element is not None and isinstance(raw, list):
        out = []
        for item in raw:
            if isinstance(item, list):  # another dimension
                out.append(load_value(ctype, item, problems, connection))
                continue
            try:
                out.append(load_value(ctype.element, item, problems, connection))
            except Unrepresentable as exc:
                if problems is not None:
                    problems.append(str(exc))
                out.append(exc.fallback)
        return out
    return _load_scalar(ctype, raw, connection)


# -- rows to model values ------------------------------------------------------------------------

_warned: set[tuple[str, str]] = set()


def _warn_once(table: str, column: str, raw: Any, reason: str) -> None:
    if (table, column) in _warned:
        return
    _warned.add((table, column))
    logger.warning(
        "Column %s.%s holds a value Django cannot load (%r: %s); events carry the text "
        "Postgres logged instead (warned once per column)",
        table,
        column,
        raw,
        reason,
    )


def field_value(field: Field[Any, Any], ctype: ColumnType | None, raw: Any, table: str) -> Any:
    """What the ORM would give for ``field`` from one logged value."""
    connection = db_connection()
    return _Column(field, ctype, table, connection).value(raw, connection)


def db_connection() -> Any:
    """pgbinding's database connection (of this thread), whose converters and time zone values
    are loaded with. Looking it up costs a few microseconds (a thread-local lookup and the
    settings), so callers that decode many rows take it once and pass it on."""
    from django.db import connections

    from .conf import pgbinding_settings

    return connections[pgbinding_settings.DATABASE]


class _Column:
    """How one field of one table is read from the log: its column type, and the converters
    the ORM applies (looked up once per table and catalog state, not once per value)."""

    __slots__ = (
        "attname",
        "column",
        "converters",
        "ctype",
        "expression",
        "field",
        "same_as_logged",
        "table",
    )

    def __init__(
        self, field: Field[Any, Any], ctype: ColumnType | None, table: str, connection: Any
    ) -> None:
        self.field = field
        self.attname = str(field.attname)
        self.column = str(field.column)
        self.ctype = ctype
        self.table = table
        self.expression = field.get_col(table)
        self.converters = field.get_db_converters(connection)
        #: The Python type in which the logged JSON already holds exactly what psycopg would
        #: load (integers, text, booleans): such values skip the loader.
        self.same_as_logged = _SAME_AS_LOGGED.get(ctype.name) if ctype is not None else None

    def value(self, raw: Any, connection: Any) -> Any:
        if raw is None:
            return None
        if type(raw) is self.same_as_logged:
            value = raw
        elif self.ctype is None:
            # Not a column of the table now (dropped or renamed since): best effort.
            return _fallback_python(self.field, raw, connection)
        else:
            problems: list[str] = []
            try:
                value = load_value(self.ctype, raw, problems, connection)
            except Unrepresentable as exc:
                _warn_once(self.table, self.column, raw, str(exc))
                return exc.fallback
            if problems:
                _warn_once(self.table, self.column, raw, problems[0])
        try:
            for converter in self.converters:
                value = converter(value, self.expression, connection)
        except Exception as exc:
            _warn_once(self.table, self.column, raw, str(exc))
            return plain_json(raw)
        return value


#: Column types whose logged (``to_jsonb``) value, when of this Python type, is the value
#: psycopg loads from the column's text output.
_SAME_AS_LOGGED: dict[str, type] = {
    "int2": int,
    "int4": int,
    "int8": int,
    "text": str,
    "varchar": str,
    "bpchar": str,
    "bool": bool,
}

#: (model, table) -> (the catalog types it was built with, its columns).
_plans: dict[tuple[type[models.Model], str], tuple[Any, list[_Column]]] = {}


def _plan(model: type[models.Model], table: str, connection: Any) -> list[_Column]:
    types = _types.get(table)
    found = _plans.get((model, table))
    if found is not None and found[0] is types:
        return found[1]
    known = types or {}
    columns = [
        _Column(f, known.get(str(f.column)), table, connection) for f in model._meta.concrete_fields
    ]
    _plans[(model, table)] = (types, columns)
    return columns


def _fallback_python(field: Field[Any, Any], raw: Any, connection: Any = None) -> Any:
    """A logged value without the column's type (unit tests; a column gone since)."""
    if isinstance(field, JSONField):
        return plain_json(raw)
    try:
        value = field.to_python(plain_json(raw))
    except Exception:
        return plain_json(raw)
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        local = value.astimezone(zoneinfo.ZoneInfo(_db_timezone_name(connection)))
        return local if settings.USE_TZ else local.replace(tzinfo=None)
    return value


#: Values that cannot change once made: one of them may stand in two rows (see ``like``).
IMMUTABLE = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        str,
        decimal.Decimal,
        datetime.datetime,
        datetime.date,
        datetime.time,
        datetime.timedelta,
        uuid.UUID,
    }
)
_ABSENT = object()


def same_logged(a: Any, b: Any) -> bool:
    """Are two logged (parsed ``to_jsonb``) scalars the same text, so they load the same?
    Strict: ``1`` and ``1.0`` and ``True`` differ, and decimals must match digit for digit
    (``1.0`` and ``1.00`` are equal numbers, not the same text). Lists and objects: no."""
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is str or kind is int or kind is bool:
        return bool(a == b)
    if kind is decimal.Decimal:
        return bool(a.as_tuple() == b.as_tuple())
    return False


def row_values(
    model: type[models.Model],
    row: Mapping[str, Any],
    table: str,
    connection: Any = None,
    like: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """{attname: value} for every concrete field of ``model``, read from one logged row.

    A column missing from the row (added after the change was logged) gets the field's default;
    nothing is ever read from the table itself. ``connection`` (pgbinding's, see
    :func:`db_connection`) saves looking it up per row when the caller reads many.

    ``like``: another logged row of the table and its values (an update's old row, for the new
    one). A column logged with the same text in both is loaded once: its value is taken from
    there when it is :data:`IMMUTABLE` (an update usually changes a column or two).
    """
    if connection is None:
        connection = db_connection()
    values: dict[str, Any] = {}
    like_row, like_values = like if like is not None else ({}, {})
    for column in _plan(model, table, connection):
        name = column.column
        if name in row:
            raw = row[name]
            if (
                like is not None
                # an integer or text value its column takes as it is: loading costs no more
                and type(raw) is not column.same_as_logged
                and same_logged(raw, like_row.get(name, _ABSENT))
            ):
                known = like_values.get(column.attname, _ABSENT)
                if type(known) in IMMUTABLE:
                    values[column.attname] = known
                    continue
            values[column.attname] = column.value(raw, connection)
        else:
            values[column.attname] = column.field.get_default()
    return values


def init_receivers(model: type[models.Model]) -> bool:
    """Has ``model`` a ``pre_init`` or ``post_init`` receiver (which may change what an
    instance holds)? Looked at on every call: receivers come and go."""
    from django.db.models import signals

    return signals.pre_init.has_listeners(model) or signals.post_init.has_listeners(model)


def plain_reads(model: type[models.Model], fields: Iterable[Field[Any, Any]]) -> bool:
    """Does ``field.value_from_object(instance(model, values))`` give ``values.get(attname)``
    back, unchanged, for each of ``fields``, when ``model`` has no init receivers
    (:func:`init_receivers`)? Then what is computed from those fields of an instance can be
    computed from the values alone, without making the instance.

    True when nothing of the model's or the fields' own runs on the way: ``__init__`` and
    ``from_db`` as Django defines them, Django's plain attribute descriptors (a ``FileField``'s,
    say, wraps what it holds) and ``Field.value_from_object``.
    """
    from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
    from django.db.models.query_utils import DeferredAttribute

    plain = (DeferredAttribute, ForeignKeyDeferredAttribute)
    return all(
        inspect.getattr_static(model, name) is inspect.getattr_static(models.Model, name)
        for name in ("__init__", "from_db")
    ) and all(
        f in model._meta.concrete_fields
        and type(f).value_from_object is Field.value_from_object
        and type(inspect.getattr_static(model, f.attname, None)) in plain
        for f in fields
    )


def instance(model: type[models.Model], values: Mapping[str, Any]) -> models.Model:
    """A model instance holding ``values`` (every concrete field set: none is deferred, so
    reading a field never queries the database)."""
    attnames = [f.attname for f in model._meta.concrete_fields]
    return model.from_db(None, attnames, [values.get(a) for a in attnames])


def instance_from_row(model: type[models.Model], row: Mapping[str, Any]) -> models.Model:
    """A model instance rebuilt from a logged row (no query)."""
    return instance(model, row_values(model, row, model._meta.db_table))
