"""Logical capture: decoded transactions -> the rows the trigger backend would have logged.

:class:`Converter` writes each row in ``to_jsonb``'s shape, which :mod:`pgbinding.rows` reads
back as the ORM reads the columns: json and jsonb as JSON, hstore as an object, arrays as JSON
arrays, timestamps in ISO 8601 with a ``T``, everything else as the type's text output
(pgoutput's text format, loaded with psycopg's loader for the column's type).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.types.hstore import HstoreLoader

from . import pgoutput
from .logical import lsn_text

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


#: ``json.dumps(value, ensure_ascii=False)`` without building an encoder per call (the same
#: output: dumps builds this encoder for those arguments), and its string quoting alone.
_dumps = json.JSONEncoder(ensure_ascii=False).encode
_quote = json.encoder.encode_basestring


def _json(row: dict[str, str | None] | None, info: RelationInfo) -> str | None:
    """The row as the JSON text ``to_jsonb`` gives for it. Values whose JSON is their text
    output (most columns) and timestamps go through one JSON encoding of the whole row;
    json, hstore and array columns are written apart and spliced in (key order does not
    matter: jsonb orders keys itself). Only the columns with a kind are looked at."""
    if row is None:
        return None
    kinds = info.kinds
    if not kinds:
        return _dumps(row)
    plain = dict(row)
    spliced: list[str] = []
    for name, kind in kinds.items():
        value = plain.get(name)
        if value is None:
            continue
        if kind == "timestamptz" or kind == "timestamp":
            plain[name] = _timestamp(value, kind)
        else:
            del plain[name]
            spliced.append(f"{_quote(name)}: {_value(value, kind)}")
    text = _dumps(plain)
    if not spliced:
        return text
    return text[:-1] + (", " if plain else "") + ", ".join(spliced) + "}"


def _timestamp(text: str, kind: str) -> str:
    """ISO 8601 as to_jsonb writes it ("2026-01-02T03:04:05+00:00"); the text output uses the
    pinned DateStyle ISO ("2026-01-02 03:04:05+00")."""
    text = text.replace(" ", "T", 1) if text[:1].isdigit() else text
    if kind == "timestamptz":
        if text.endswith("+00"):  # the pinned TimeZone, UTC: nearly every value
            return text + ":00"
        text = _OFFSET.sub(r"\1:00\2", text)
    return text


def _value(text: str, kind: str) -> str:
    """One value's text output as the JSON ``to_jsonb`` gives for it (see RelationInfo)."""
    if kind == "":
        return _quote(text)
    if kind == "json":
        return text  # the column's own JSON text; jsonb input normalizes it as to_jsonb does
    if kind == "hstore":
        return _dumps(_hstore.load(text.encode()))
    if kind.startswith("[]"):
        try:
            items = parse_array(text)
        except ValueError:
            return _quote(text)
        return _array(items, kind[2:])
    return _quote(_timestamp(text, kind))  # timestamp(tz)


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
    """Parameters of :data:`~pgbinding.capture.logical.INSERT_SQL` (and ``WRITE_SQL``) for
    ``rows``: one JSON document, a JSON array per row (old and new are JSON already, spliced
    in as they are)."""
    parts = []
    # The rows of one transaction share its commit time and end; a round, a few tables.
    last: tuple[datetime.datetime, int, str] | None = None
    tables: dict[str, str] = {}
    for at, table, op, pk, old, new, end in rows:
        if last is None or last[0] is not at or last[1] != end:
            last = (at, end, f'"{lsn_text(end)}"]')
            stamp = f'["{at.isoformat()}", '
        quoted = tables.get(table) or tables.setdefault(table, _quote(table))
        parts.append(
            f'{stamp}{quoted}, "{op}", {"null" if pk is None else _quote(pk)}, '
            f"{old or 'null'}, {new or 'null'}, {last[2]}"
        )
    return {"slot": slot, "rows": "[" + ", ".join(parts) + "]"}
