"""The pgoutput decoder against messages captured from a real server
(tests/unit/pgoutput/messages.json, written by tests/unit/pgoutput/capture.py)."""

from __future__ import annotations

import datetime
import json
import struct
from pathlib import Path

import pytest

from pgbinding.capture import pgoutput

FIXTURE = json.loads((Path(__file__).parent / "pgoutput" / "messages.json").read_text())
BODY = "0123456789" * 250


def messages() -> list[pgoutput.Message]:
    return [pgoutput.parse(bytes.fromhex(m["hex"])) for m in FIXTURE["messages"]]


def transactions() -> list[pgoutput.Transaction]:
    return pgoutput.Transactions().feed(messages())


def test_every_captured_message_decodes() -> None:
    kinds = [type(m).__name__ for m in messages()]
    assert kinds.count("Begin") == kinds.count("Commit") == len(FIXTURE["statements"])
    assert {"Relation", "Insert", "Update", "Delete", "Truncate"} <= set(kinds)


def test_begin_and_commit_carry_lsns_and_commit_time() -> None:
    begins = [m for m in messages() if isinstance(m, pgoutput.Begin)]
    commits = [m for m in messages() if isinstance(m, pgoutput.Commit)]
    for begin, commit in zip(begins, commits, strict=True):
        assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
        assert begin.commit_time == commit.commit_time
        assert begin.commit_time.tzinfo is datetime.UTC
        assert begin.commit_time.year >= 2024
    ends = [c.end_lsn for c in commits]
    assert ends == sorted(ends)  # commit order


def test_relation_message() -> None:
    relation = next(m for m in messages() if isinstance(m, pgoutput.Relation))
    assert (relation.namespace, relation.name, relation.replica_identity) == (
        "public",
        "cap_item",
        "f",
    )
    assert [c.name for c in relation.columns] == [
        "id",
        "name",
        "body",
        "doc",
        "tags",
        "at",
        "n",
        "flag",
    ]
    assert [c.type_oid for c in relation.columns] == [23, 25, 25, 3802, 1007, 1184, 1700, 16]
    assert all(c.key for c in relation.columns)  # REPLICA IDENTITY FULL


def test_insert_values_are_the_text_output() -> None:
    tx = transactions()[0]
    (change,) = tx.changes
    assert (change.op, change.relation.name, change.old) == ("I", "cap_item", None)
    assert change.new == {
        "id": "1",
        "name": "é ☃",
        "body": BODY,
        "doc": '{"a": [1, 2.50]}',
        "tags": "{1,NULL,3}",
        "at": "2026-01-02 03:04:05.678901+00",
        "n": "1234.5678",
        "flag": "t",
    }


def test_unchanged_toasted_value_is_filled_from_the_old_row() -> None:
    raw = next(m for m in messages() if isinstance(m, pgoutput.Update))
    assert raw.old_kind == "O"
    assert raw.new[2] is pgoutput.UNCHANGED  # what the server sent for the TOASTed body
    (change,) = transactions()[1].changes
    assert change.op == "U"
    assert change.old is not None and change.new is not None
    assert change.old["name"] == "é ☃" and change.new["name"] == "renamed"
    assert change.new["body"] == change.old["body"] == BODY


def test_key_change_has_old_and_new_keys() -> None:
    (change,) = transactions()[2].changes
    assert change.old is not None and change.new is not None
    assert (change.old["id"], change.new["id"]) == ("1", "2")
    assert change.new["body"] == BODY


def test_default_replica_identity_gives_keys_only() -> None:
    changes = transactions()[3].changes
    assert [(c.op, c.relation.name) for c in changes] == [
        ("I", "cap_plain"),
        ("I", "cap_plain"),
        ("U", "cap_plain"),
        ("D", "cap_plain"),
    ]
    assert changes[1].new == {"k": "b", "v": None}
    assert changes[2].old is None and changes[2].new == {"k": "a", "v": "2"}
    assert changes[3].old == {"k": "b"}  # only the key is known


def test_delete_and_truncate() -> None:
    (delete,) = transactions()[4].changes
    assert delete.op == "D" and delete.new is None
    assert delete.old is not None and delete.old["id"] == "2" and delete.old["body"] == BODY
    truncate = transactions()[5].changes
    assert [(c.op, c.relation.name) for c in truncate] == [("T", "cap_item"), ("T", "cap_plain")]


def test_a_transaction_may_span_two_feeds() -> None:
    all_messages = messages()
    assembler = pgoutput.Transactions()
    first = assembler.feed(all_messages[:2])  # Begin, Relation
    assert first == []
    rest = assembler.feed(all_messages[2:])
    assert len(rest) == len(FIXTURE["statements"])


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"Z", "unknown pgoutput message type 'Z'"),
        (b"B\x00\x00", "message ends"),
        (b"I" + struct.pack("!I", 1) + b"X", "Insert without a new tuple"),
        (b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!h", 1) + b"b", "column kind 'b'"),
        (b"R" + struct.pack("!I", 1) + b"public", "unterminated string"),
    ],
)
def test_malformed_messages_are_refused(data: bytes, error: str) -> None:
    with pytest.raises(pgoutput.DecodeError, match=error):
        pgoutput.parse(data)


def test_change_before_its_relation_is_refused() -> None:
    begin = next(m for m in messages() if isinstance(m, pgoutput.Begin))
    insert = next(m for m in messages() if isinstance(m, pgoutput.Insert))
    with pytest.raises(pgoutput.DecodeError, match="before its Relation"):
        pgoutput.Transactions().feed([begin, insert])
