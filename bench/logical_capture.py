"""The logical capture backend against the trigger backend: wake-up latency and idle cost.

    python -m bench.logical_capture [--runs 3] [--writes 1000] [--idle 30] [--sparse 20]
    python -m bench.logical_capture --quick          # 1 run, fewer writes (~4 min)

Needs a server with ``wal_level = logical``: the private one is started with it (``--dsn``
names your own). Each run measures, for ``trigger``, ``logical`` (the slot streamed over a
replication connection) and ``logical-poll`` (read with the slot's SQL functions), interleaved
(the order rotating from run to run), on the bench site (bench/site) under daphne with the in-process
listener and the in-memory layer:

* **latency**: bench/latency's 1-client measurement unchanged (``latency.measure``: a writer
  process runs ``UPDATE benchapp_tick`` at 50/s, durable commits, and a raw WebSocket client
  takes the time each frame arrives; commit acknowledged -> frame received);
* **sparse**: the same with one write every 2 s (``--sparse`` writes), so that each change
  arrives after a quiet spell: the logical listener then looks for WAL every
  ``LOGICAL_IDLE_POLL_INTERVAL`` instead of ``LOGICAL_POLL_INTERVAL``;
* **idle**: with the listener caught up and nothing written, the CPU (cores) of all of
  Postgres' processes and of daphne over ``--idle`` seconds, and the statements per second
  the listener runs (pg_stat_database's xact_commit).

The logical run switches the bound tables with the SQL the migration operations pin (the
trigger removed, REPLICA IDENTITY FULL, the publication, a slot) and back afterwards.
Prints medians over the runs, and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from pgbinding.capture import logical, sql

from . import common, latency, live

#: "logical" streams the slot (LOGICAL_READER = "stream", the default), "logical-poll" reads
#: it with the slot's SQL functions (LOGICAL_READER = "poll", the fallback).
BACKENDS = ("trigger", "logical", "logical-poll")
#: The bench site's bound tables (bench/site/benchapp/bindings.py) and their primary keys.
SLOT = "pgbinding"
PUBLICATION = "pgbinding"


def bound_tables(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT c.relname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE t.tgname LIKE 'pgbinding\\_%' ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


@contextlib.contextmanager
def backend(dsn: str, name: str, tables: list[str]) -> Iterator[None]:
    """The bound tables captured by ``name`` for the block."""
    capture = {"CAPTURE": "trigger" if name == "trigger" else "logical"}
    if name == "logical-poll":
        capture["LOGICAL_READER"] = "poll"
    os.environ["BENCH_PGBINDING"] = json.dumps(capture)
    if name == "trigger":
        yield
        return
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor() as cursor:
            logical.ensure_slot(cursor, SLOT)
        with conn.transaction():
            for table in tables:
                for s in (
                    sql.trigger_sql(table, "id")[1] + logical.capture_sql(table, PUBLICATION)[0]
                ):
                    conn.execute(s)
    try:
        yield
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            with conn.transaction():
                for table in tables:
                    for s in (
                        logical.capture_sql(table, PUBLICATION)[1] + sql.trigger_sql(table, "id")[0]
                    ):
                        conn.execute(s)
            with conn.cursor() as cursor:
                logical.drop_slot(cursor, SLOT)
            conn.execute(f"DROP PUBLICATION IF EXISTS {PUBLICATION}")
        os.environ.pop("BENCH_PGBINDING", None)


def idle_cost(
    dsn: str, seconds: float, pool: latency.ClientPool, writer: latency.Writer, tmp: Path, tag: str
) -> dict[str, float]:
    """CPU of Postgres and daphne, and the listener's statements per second, while idle."""
    with live.stack(dsn, "memory", tmp / f"idle-{tag}") as st:
        pool.connect(st.url, "/pgbinding/", 1, 500)
        try:
            pool.broadcast("mark")
            writer.write(3, 10.0)  # starts the in-process listener
            pool.wait_frames(3, idle=10)
            time.sleep(3.0)  # caught up, past LOGICAL_IDLE_AFTER
            with psycopg.connect(dsn, autocommit=True) as c:
                postmaster = common.postmaster_pid(c)
                stat = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                c.execute("SELECT pg_stat_clear_snapshot()")
                before = int(c.execute(stat).fetchone()[0])  # type: ignore[index]
                meter = common.CpuMeter(postmaster, {"daphne": st.server.pid})
                meter.start()
                time.sleep(seconds)
                cpu = meter.stop()
                c.execute("SELECT pg_stat_clear_snapshot()")
                after = int(c.execute(stat).fetchone()[0])  # type: ignore[index]
        finally:
            pool.close_sockets()
    return {
        "postgres_cores": cpu["postgres"],
        "daphne_cores": cpu["daphne"],
        "statements_per_s": (after - before) / seconds,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.logical_capture", description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--writes", type=int, default=1000, help="timed writes at 50/s (1000)")
    p.add_argument("--sparse", type=int, default=20, help="timed writes at 0.5/s (20)")
    p.add_argument("--idle", type=float, default=30.0, help="idle window, seconds (30)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dsn", help="a database on a server with wal_level = logical")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.writes, args.sparse, args.idle = 1, 300, 8, 15.0
    latency_args = latency.parse_args(
        ["--layers", "memory", "--clients", "1", "--rates", "50", "--writes", str(args.writes)]
    )
    live.raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="bench-logical-"))
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if args.dsn:
            dsn = args.dsn
        else:
            common.SERVER_SETTINGS.update(wal_level="logical", max_replication_slots="4")
            dsn = stack.enter_context(common.server(None))
        with psycopg.connect(dsn, autocommit=True) as conn:
            common.announce_server(conn)
        live.migrate(dsn)
        latency.prepare_table(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            tables = bound_tables(conn)
        pool = latency.ClientPool(1)
        stack.callback(pool.close)
        writer = latency.Writer(dsn)
        stack.callback(writer.close)
        print(f"== tables {tables}; logs in {tmp}", flush=True)
        for run in range(args.runs):
            shift = run % len(BACKENDS)
            order = BACKENDS[shift:] + BACKENDS[:shift]
            for name in order:
                with backend(dsn, name, tables):
                    fast = latency.measure(
                        dsn,
                        "memory",
                        1,
                        50.0,
                        args.writes,
                        run,
                        latency_args,
                        pool,
                        writer,
                        None,
                        tmp / name,
                    )
                    sparse = latency.measure(
                        dsn,
                        "memory",
                        1,
                        0.5,
                        args.sparse,
                        run,
                        latency_args,
                        pool,
                        writer,
                        None,
                        tmp / f"{name}-sparse",
                    )
                    idle = idle_cost(dsn, args.idle, pool, writer, tmp, f"{name}-{run}")
                r = {
                    "backend": name,
                    "run": run,
                    "p50": fast["p50"],
                    "p99": fast["p99"],
                    "lost": fast["lost"] + sparse["lost"],
                    "busy_postgres_cores": fast["cpu"]["postgres"],
                    "busy_daphne_cores": fast["cpu"]["daphne"],
                    "sparse_p50": sparse["p50"],
                    "sparse_p99": sparse["p99"],
                    **{f"idle_{k}": v for k, v in idle.items()},
                }
                results.append(r)
                print(
                    f"   run {run + 1} {name:12} 50/s p50 {r['p50']:.2f} p99 {r['p99']:.2f} ms "
                    f"(Postgres {r['busy_postgres_cores']:.3f} cores); 0.5/s p50 "
                    f"{r['sparse_p50']:.2f} p99 {r['sparse_p99']:.2f} ms; idle: Postgres "
                    f"{idle['postgres_cores']:.4f} cores, daphne {idle['daphne_cores']:.4f}, "
                    f"{idle['statements_per_s']:.1f} statements/s; lost {r['lost']}",
                    flush=True,
                )
    print("== medians over the runs")
    keys = [k for k in results[0] if k not in ("backend", "run")]
    for name in BACKENDS:
        rs = [r for r in results if r["backend"] == name]
        print(
            f"   {name:12} "
            + ", ".join(f"{k} {common.median([r[k] for r in rs]):.4g}" for k in keys)
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
