"""Bulk-statement cost of change capture: one ``UPDATE t SET value = value + 1`` over every row.

    python -m bench.bulk [--rows 10000,100000] [--repeat 5] [--dsn URL] [--experiment rowlevel]

For each table size, identical tables with and without pgbinding's triggers (schema_v1 +
trigger_v1, as the migrations install them) are updated in turn (the order alternates), each
statement in its own transaction, timed from the client up to the end of its commit. Reported:
the median of ``--repeat`` statements, the ratio to no trigger, and the WAL written.

The capture is synchronous: when the statement has committed, the log holds every changed row
(checked after each statement), so "time until the log holds all rows" is the statement's time.
No listener runs; the ``sleeping`` flag (``pgbinding_state``) stays as installed (true: a
listener would be asleep), so each captured statement sends one wake-up NOTIFY, as it would on an
idle system.

Table names in the SQL below are this module's own constants, never input.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import psycopg

from . import common
from .experiment import install_experiment


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.bulk",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rows", default="10000,100000", help="table sizes (10000,100000)")
    p.add_argument("--repeat", type=int, default=5, help="statements per variant (5)")
    p.add_argument("--dsn", help="benchmark this database instead of a private server")
    p.add_argument(
        "--experiment",
        action="append",
        default=[],
        choices=["rowlevel", "stmt-once"],
        help="also time an experimental capture function (bench/experiment.py)",
    )
    p.add_argument(
        "--quiet-cores",
        type=float,
        default=0.4,
        help="wait (up to 20 s) before each statement until the machine uses "
        "less than this many cores (0.4); 0 disables",
    )
    args = p.parse_args(argv)
    args.row_list = [int(r) for r in args.rows.split(",")]
    return args


def wal_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with common.server(args.dsn) as dsn:
        conn = psycopg.connect(dsn, autocommit=True)
        notes = common.ensure_durable(conn)
        print("== machine")
        print("\n".join(common.machine_report(conn)))
        print("== settings in force (source in brackets)")
        print("\n".join(common.settings_report(conn)))
        for note in notes:
            print("  " + note)

        common.install_pgbinding_schema(conn)
        variants = [("plain", "no trigger"), ("pgbinding", "pgbinding")]
        variants += [(f"exp_{name.replace('-', '_')}", f"EXP {name}") for name in args.experiment]
        for rows in args.row_list:
            for key, _ in variants:
                table = f"b_{key}_{rows}"
                common.create_table(conn, table, rows)
                if key == "pgbinding":
                    common.install_pgbinding_trigger(conn, table)
                elif key.startswith("exp_"):
                    install_experiment(conn, key[4:].replace("_", "-"), table)
        conn.execute("VACUUM ANALYZE")
        wakeup = common.wakeup_table(conn)
        sleeping = conn.execute(f"SELECT sleeping FROM {wakeup}").fetchone()  # noqa: S608
        print(
            f"== {wakeup}.sleeping = {sleeping[0] if sleeping else '?'}; "
            f"{args.repeat} statements per variant, order alternating"
        )

        results: dict[tuple[int, str], list[tuple[float, int]]] = {}
        for rows in args.row_list:
            for rep in range(args.repeat):
                order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
                for key, _ in order:
                    table = f"b_{key}_{rows}"
                    conn.execute("TRUNCATE pgbinding_change")
                    conn.execute(f"VACUUM {table}, pgbinding_change")
                    conn.execute("CHECKPOINT")
                    if args.quiet_cores > 0:
                        common.wait_quiet(args.quiet_cores, 20)
                    before = wal_lsn(conn)
                    t0 = time.perf_counter()
                    conn.execute(f"UPDATE {table} SET value = value + 1")  # noqa: S608
                    elapsed = time.perf_counter() - t0
                    wal = wal_lsn(conn) - before
                    logged = conn.execute("SELECT count(*) FROM pgbinding_change").fetchone()
                    expected = 0 if key == "plain" else rows
                    if not logged or logged[0] != expected:
                        raise SystemExit(f"{table}: log holds {logged} rows, not {expected}")
                    results.setdefault((rows, key), []).append((elapsed, wal))
                print(
                    f"   {rows} rows, statement {rep + 1}: "
                    + "  ".join(
                        f"{k} {results[(rows, k)][-1][0] * 1000:.0f} ms" for k, _ in variants
                    ),
                    flush=True,
                )

        print()
        print(
            f"== UPDATE t SET value = value + 1: median of {args.repeat} (client-side, "  # noqa: S608
            "statement + commit); the log holds all rows at commit"
        )
        hdr = (
            f"{'rows':>7}  {'variant':18} {'median ms':>9} {'min-max ms':>13} "
            f"{'ratio':>6} {'WAL MB':>7} {'us/row':>7}"
        )
        print(hdr)
        print("-" * len(hdr))
        for rows in args.row_list:
            base = common.median([t for t, _ in results[(rows, "plain")]])
            for key, label in variants:
                times = [t for t, _ in results[(rows, key)]]
                wal_med = common.median([w for _, w in results[(rows, key)]])
                med = common.median(times)
                print(
                    f"{rows:>7}  {label:18} {med * 1000:>9.1f} "
                    f"{min(times) * 1000:>6.0f}-{max(times) * 1000:<6.0f} "
                    f"{med / base:>6.2f} {wal_med / 1e6:>7.1f} {med / rows * 1e6:>7.2f}"
                )
            print()
        conn.close()


if __name__ == "__main__":
    main()
