"""Decoded transactions become the rows the trigger backend would have logged
(pgbinding.capture.logrows.Converter), from the captured pgoutput fixture."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pgbinding.capture import logical, logrows, pgoutput
from pgbinding.exceptions import InvalidIdentifier
from tests.unit.test_pgoutput import BODY, transactions

#: RELATION_SQL's answer for the fixture's tables: name, type, is array, element, in the pk.
COLUMNS: dict[str, list[tuple[str, str, bool, str, bool]]] = {
    "cap_item": [
        ("id", "int4", False, "", True),
        ("name", "text", False, "", False),
        ("body", "text", False, "", False),
        ("doc", "jsonb", False, "", False),
        ("tags", "_int4", True, "int4", False),
        ("at", "timestamptz", False, "", False),
        ("n", "numeric", False, "", False),
        ("flag", "bool", False, "", False),
    ],
    "cap_plain": [("k", "text", False, "", True), ("v", "int4", False, "", False)],
}


def converted() -> list[logrows.LogRow]:
    txs = transactions()
    converter = logrows.Converter()
    relations = {c.relation.relid: c.relation.name for tx in txs for c in tx.changes}
    assert converter.missing(txs) == set(relations)
    for relid, name in relations.items():
        converter.learn(relid, COLUMNS[name])
    assert converter.missing(txs) == set()
    return converter.rows(txs)


def loaded(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


def test_rows_in_commit_order_with_the_trigger_backends_ops() -> None:
    rows = converted()
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("cap_item", "I", "1"),
        ("cap_item", "U", "1"),
        ("cap_item", "D", "1"),  # the key changed: a delete and an insert, as the trigger logs
        ("cap_item", "I", "2"),
        ("cap_plain", "I", "a"),
        ("cap_plain", "I", "b"),
        ("cap_plain", "U", "a"),
        ("cap_plain", "D", "b"),
        ("cap_item", "D", "2"),
        ("cap_item", "T", None),
        ("cap_plain", "T", None),
    ]
    times = [r[0] for r in rows]
    assert times == sorted(times)  # each row carries its transaction's commit time


def test_values_have_to_jsonbs_shape() -> None:
    insert = loaded(converted()[0][5])
    assert insert == {
        "id": "1",
        "name": "é ☃",
        "body": BODY,
        "doc": {"a": [1, 2.5]},
        "tags": ["1", None, "3"],
        "at": "2026-01-02T03:04:05.678901+00:00",
        "n": "1234.5678",
        "flag": "t",
    }


def test_the_filled_toasted_value_is_in_the_logged_update() -> None:
    update = converted()[1]
    assert loaded(update[4])["name"] == "é ☃"
    assert loaded(update[5])["name"] == "renamed"
    assert loaded(update[5])["body"] == BODY


def test_an_update_that_changes_nothing_is_not_logged() -> None:
    txs = transactions()[1:2]
    change = txs[0].changes[0]
    assert change.old is not None
    same = pgoutput.RowChange("U", change.relation, change.old, dict(change.old))
    txs[0].changes = [same]
    converter = logrows.Converter()
    converter.learn(change.relation.relid, COLUMNS["cap_item"])
    assert converter.rows(txs) == []


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("{1,NULL,3}", "[]", ["1", None, "3"]),
        ("{{1,2},{3,4}}", "[]", [["1", "2"], ["3", "4"]]),
        ("[0:1]={1,2}", "[]", ["1", "2"]),
        ('{"a b",NULL,"c\\"d","NULL","x\\\\y",""}', "[]", ["a b", None, 'c"d', "NULL", "x\\y", ""]),
        ("{}", "[]", []),
        ('{"{\\"a\\": 1}",NULL}', "[]json", [{"a": 1}, None]),
        (
            '{"2026-01-02 03:04:05+00",-infinity}',
            "[]timestamptz",
            ["2026-01-02T03:04:05+00:00", "-infinity"],
        ),
        ("0044-03-15 10:00:00+00 BC", "timestamptz", "0044-03-15T10:00:00+00:00 BC"),
        ("10000-01-01 00:00:00+00", "timestamptz", "10000-01-01T00:00:00+00:00"),
        ("infinity", "timestamptz", "infinity"),
        ("2026-01-02 03:04:05.5", "timestamp", "2026-01-02T03:04:05.5"),
        ('"a"=>"1", "b"=>NULL', "hstore", {"a": "1", "b": None}),
        ('{"x": [1.50]}', "json", {"x": [1.5]}),
        ("{unterminated", "[]", "{unterminated"),  # not an array after all: kept as text
    ],
)
def test_one_value(text: str, kind: str, expected: Any) -> None:
    assert json.loads(logrows._value(text, kind)) == expected


def test_capture_sql_quotes_names_and_keeps_each_statement_whole() -> None:
    forward, reverse = logical.capture_sql("MyTable", "pub")
    assert forward[0] == 'ALTER TABLE "MyTable" REPLICA IDENTITY FULL;'
    assert len(forward) == 2 and forward[1].startswith("DO $do$") and forward[1].endswith("$do$;")
    assert "pubname = 'pub'" in forward[1] and "quote_ident('MyTable')" in forward[1]
    assert "publish_generated_columns = stored" in forward[1]
    assert len(reverse) == 2 and reverse[1] == 'ALTER TABLE "MyTable" REPLICA IDENTITY DEFAULT;'
    with pytest.raises(InvalidIdentifier):
        logical.capture_sql('x"; DROP TABLE y; --', "pub")
    with pytest.raises(InvalidIdentifier):
        logical.capture_sql("t", "p'ub")


def test_lsn_text_is_postgres_notation() -> None:
    assert logical.lsn_text(0) == "0/0"
    assert logical.lsn_text((0x1A << 32) | 0x2B3C) == "1A/2B3C"
