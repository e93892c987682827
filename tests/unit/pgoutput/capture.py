"""Capture pgoutput messages from a real server into ``messages.json`` (the decoder's fixture).

    .venv/bin/python -m tests.unit.pgoutput.capture            # a private server (devservers)
    .venv/bin/python -m tests.unit.pgoutput.capture --dsn URL  # a server with wal_level=logical

It makes two tables in a scratch database, a publication and a pgoutput slot, runs the
statements of :data:`STATEMENTS` (each its own transaction), and writes every message that
``pg_logical_slot_peek_binary_changes`` returns, as hex with its LSN and xid, together with
the server version. tests/unit/test_pgoutput.py decodes the file; rerun this after changing
the statements (and update the expectations there).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import psycopg

OUT = Path(__file__).with_name("messages.json")
DB = "pgoutput_capture"
SETUP = [
    "CREATE TABLE cap_item (id int PRIMARY KEY, name text, body text, doc jsonb, tags int[],"
    " at timestamptz, n numeric, flag boolean)",
    "ALTER TABLE cap_item REPLICA IDENTITY FULL",
    "ALTER TABLE cap_item ALTER COLUMN body SET STORAGE EXTERNAL",  # TOAST without compression
    "CREATE TABLE cap_plain (k text PRIMARY KEY, v int)",  # default replica identity (the key)
    "CREATE PUBLICATION cap_pub FOR TABLE cap_item, cap_plain",
]
SESSION = [
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET bytea_output = 'hex'",
    "SET extra_float_digits = 1",
]
#: Each a transaction (a list of statements).
STATEMENTS = [
    [
        "INSERT INTO cap_item VALUES (1, 'é ☃', repeat('0123456789', 250), '{\"a\": [1, 2.50]}',"
        " '{1,NULL,3}', '2026-01-02 03:04:05.678901+00', 1234.5678, true)"
    ],
    ["UPDATE cap_item SET name = 'renamed' WHERE id = 1"],  # body unchanged: TOASTed, 'u'
    ["UPDATE cap_item SET id = 2 WHERE id = 1"],  # the key changes
    [
        "INSERT INTO cap_plain VALUES ('a', 1), ('b', NULL)",
        "UPDATE cap_plain SET v = 2 WHERE k = 'a'",
        "DELETE FROM cap_plain WHERE k = 'b'",
    ],
    ["DELETE FROM cap_item WHERE id = 2"],
    ["TRUNCATE cap_item, cap_plain"],
]


def capture(dsn: str) -> dict[str, object]:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
    url = psycopg.conninfo.make_conninfo(dsn, dbname=DB)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in SETUP:
                conn.execute(statement)
            conn.execute("SELECT pg_create_logical_replication_slot('cap_slot', 'pgoutput')")
            try:
                for transaction in STATEMENTS:
                    with conn.transaction():
                        for statement in transaction:
                            conn.execute(statement)
                for statement in SESSION:
                    conn.execute(statement)
                rows = conn.execute(
                    "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_binary_changes("
                    "'cap_slot', NULL, NULL, 'proto_version', '1', 'publication_names', 'cap_pub')"
                ).fetchall()
                version = conn.execute("SHOW server_version").fetchone()
            finally:
                conn.execute("SELECT pg_drop_replication_slot('cap_slot')")
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    return {
        "server_version": version[0] if version else "",
        "statements": STATEMENTS,
        "messages": [{"lsn": r[0], "xid": r[1], "hex": bytes(r[2]).hex()} for r in rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="a server with wal_level=logical (default: a private one)")
    args = parser.parse_args()
    if args.dsn:
        data = capture(args.dsn)
    else:
        from devservers import EmbeddedPostgres

        with tempfile.TemporaryDirectory() as tmp:
            settings = {"wal_level": "logical", "max_replication_slots": "4"}
            with EmbeddedPostgres(Path(tmp) / "pgdata", settings=settings) as pg:
                data = capture(pg.dsn())
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(data['messages'])} message(s) to {OUT}")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
