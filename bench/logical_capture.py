"""The logical capture backend against the trigger backend: wake-up latency and idle cost.

    python -m bench.logical_capture [--runs 3] [--writes 1000] [--idle 30] [--sparse 20]
    python -m bench.logical_capture --quick          # 1 run, fewer writes (~4 min)

Needs a server with ``wal_level = logical``: the private one is started with it (``--dsn``
names your own). Each run measures, for ``trigger``, ``logical`` (the slot streamed over a
replication connection) and ``logical-poll`` (read with the slot's SQL functions), interleaved
(the order rotating from run to run), on the bench site (bench/site) under daphne with the
in-process listener and the in-memory layer:

* **latency**: bench/latency's 1-client measurement unchanged (``latency.measure``: a writer
  process runs ``UPDATE benchapp_tick`` at 50/s, durable commits, and a raw WebSocket client
  takes the time each frame arrives; commit acknowledged -> frame received);
* **sparse**: the same with one write every 2 s (``--sparse`` writes), so that each change
  arrives after a quiet spell: the polling listener then looks for WAL every
  ``LOGICAL_IDLE_POLL_INTERVAL`` instead of ``LOGICAL_POLL_INTERVAL``;
* **idle**: with the listener caught up and nothing written, the CPU (cores) of all of
  Postgres' processes and of daphne over ``--idle`` seconds, and the statements per second
  the listener runs (pg_stat_database's xact_commit).

The logical run switches the bound tables with the SQL the migration operations pin (the
trigger removed, REPLICA IDENTITY FULL, the publication, a slot) and back afterwards.
Prints medians over the runs, and writes JSON with ``--json``; bench/report.py renders it as
the logical backend's part of docs/benchmarks.md's latency (targets as bench/latency's at one
client: p50 <= 2 ms, p99 <= 10 ms).
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

from . import common, latency, live, module

#: "logical" streams the slot (LOGICAL_READER = "stream", the default), "logical-poll" reads
#: it with the slot's SQL functions (LOGICAL_READER = "poll", the fallback).
BACKENDS = ("trigger", "logical", "logical-poll")
#: What the server needs for the logical backend (both backends are measured under it).
SERVER_SETTINGS = {"wal_level": "logical", "max_replication_slots": "4", "max_wal_senders": "4"}
#: The bench site's bound tables (bench/site/benchapp/bindings.py) and their primary keys.
SLOT = "pgbinding"
PUBLICATION = "pgbinding"


def bound_tables(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT c.relname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE t.tgname LIKE 'pgbinding\\_%' AND c.relname <> 'pgbinding_change' ORDER BY 1"
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = module.Parser("logical_capture", __doc__, quick="1 run, 300 + 8 writes, 15 s idle (~4 min)")
    p.add_argument(
        "--writes", type=int, default=1000, help="timed writes at 50/s (1000; --quick 300)"
    )
    p.add_argument("--sparse", type=int, default=20, help="timed writes at 0.5/s (20; --quick 8)")
    p.add_argument("--idle", type=float, default=30.0, help="idle window, seconds (30; --quick 15)")
    p.set_quick_defaults(writes=300, sparse=8, idle=15.0)
    return p.parse(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    latency_args = latency.parse_args(
        ["--layers", "memory", "--clients", "1", "--rates", "50", "--writes", str(args.writes)]
    )
    live.raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="bench-logical-"))
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        dsn = stack.enter_context(common.server(args.dsn, extra=SERVER_SETTINGS))
        with psycopg.connect(dsn, autocommit=True) as conn:
            machine = common.announce_server(conn)
            row = conn.execute("SELECT current_setting('wal_level')").fetchone()
            wal_level = str(row[0]) if row else "?"
            if wal_level != "logical":
                raise SystemExit(f"needs wal_level = logical; this server has {wal_level!r}")
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
    params = {
        "runs": args.runs,
        "writes": args.writes,
        "sparse": args.sparse,
        "idle": args.idle,
        "wal_level": wal_level,
    }
    module.finish(args, params, machine, results, report_text)


# --------------------------------------------------------------------------- report

#: The latency targets at one client (bench/latency.py's), for the logical backend too.
TARGET_P50 = latency.TARGET_ONE_P50
TARGET_P99 = latency.TARGET_ONE_P99
#: What the figures are, in report order: (key, label, format).
FIGURES = (
    ("p50", "50 writes/s: p50 ms", ".2f"),
    ("p99", "50 writes/s: p99 ms", ".2f"),
    ("sparse_p50", "one write every 2 s: p50 ms", ".2f"),
    ("sparse_p99", "one write every 2 s: p99 ms", ".2f"),
    ("busy_postgres_cores", "Postgres CPU at 50 writes/s (cores)", ".3f"),
    ("busy_daphne_cores", "daphne CPU at 50 writes/s (cores)", ".3f"),
    ("idle_postgres_cores", "idle: Postgres CPU (cores)", ".4f"),
    ("idle_daphne_cores", "idle: daphne CPU (cores)", ".4f"),
    ("idle_statements_per_s", "idle: listener statements /s", ".1f"),
    ("lost", "frames lost", ".0f"),
)


def summary(data: module.Data) -> dict[str, dict[str, float]]:
    """The median of each figure per backend."""
    results = data["results"]
    out: dict[str, dict[str, float]] = {}
    for name in BACKENDS:
        rs = [r for r in results if r["backend"] == name]
        if rs:
            out[name] = {k: common.median([float(r[k]) for r in rs]) for k, _, _ in FIGURES}
            out[name]["n"] = len(rs)
    return out


def report_text(data: module.Data) -> str:
    s = summary(data)
    out = [f"== medians over {data['params']['runs']} run(s)"]
    out.append(f"{'':40}" + "".join(f"{name:>12}" for name in s))
    for key, label, spec in FIGURES:
        out.append(f"{label:40}" + "".join(f"{common.fmt(s[n][key], spec):>12}" for n in s))
    return "\n".join(out)


def targets(data: module.Data) -> list[module.Target]:
    """The latency targets of one client, for the logical backend."""
    r = summary(data).get("logical")
    if r is None:
        return []
    return [
        (
            "logical capture, latency, 1 client, memory layer: p50 / p99",
            f"<= {TARGET_P50:g} / <= {TARGET_P99:g} ms",
            f"{common.fmt(r['p50'], '.2f')} / {common.fmt(r['p99'], '.2f')} ms",
            r["p50"] <= TARGET_P50 and r["p99"] <= TARGET_P99 and not r["lost"],
        )
    ]


def markdown(data: module.Data) -> str:
    s = summary(data)
    p = data["params"]
    lines = [
        'The logical capture backend (`PGBINDING["CAPTURE"] = "logical"`) against the '
        "trigger backend: *logical* streams the slot over a replication connection (the "
        "default), *logical-poll* reads it with the slot's SQL functions (`LOGICAL_READER = "
        '"poll"`, the fallback); on the bench site under daphne with the in-process listener '
        "and the in-memory layer, the server at "
        f"`wal_level = {p.get('wal_level', 'logical')}` for all three; "
        f"medians of {p['runs']} interleaved run(s). Latency is bench/latency.py's 1-client "
        "measurement (commit acknowledged to the WebSocket frame arriving) at 50 writes/s "
        f"({p['writes']} writes) and at one write every 2 s ({p['sparse']} writes: each change "
        "after a quiet spell, when the polling listener looks for WAL less often); *idle* is "
        f"{p['idle']:g} s with the listener caught up and nothing written. The logical run "
        "switches the bound tables with the SQL the migration operations pin and back "
        "afterwards.",
        "",
        "| | " + " | ".join(s) + " |",
        "|---|" + "---:|" * len(s),
    ]
    for key, label, spec in FIGURES:
        lines.append(f"| {label} | " + " | ".join(common.fmt(s[n][key], spec) for n in s) + " |")
    r = s.get("logical")
    if r is not None:
        met = r["p50"] <= TARGET_P50 and r["p99"] <= TARGET_P99
        lines += [
            "",
            f"Target for the logical backend (as for the trigger's, one client): p50 <= "
            f"{TARGET_P50:g} ms, p99 <= {TARGET_P99:g} ms: **{'met' if met else 'missed'}** "
            f"({r['p50']:.2f} / {r['p99']:.2f} ms at 50 writes/s).",
        ]
    return "\n".join(lines)


def plots(data: module.Data, outdir: Path) -> list[Path]:
    s = summary(data)
    if not s:
        return []
    plt = module.pyplot()
    keys = [("p50", "50/s p50"), ("p99", "50/s p99"), ("sparse_p50", "0.5/s p50")]
    keys.append(("sparse_p99", "0.5/s p99"))
    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = 0.8 / len(s)
    for i, name in enumerate(s):
        xs = [x + i * width for x in range(len(keys))]
        ax.bar(xs, [s[name][k] for k, _ in keys], width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(keys))], [label for _, label in keys])
    ax.axhline(TARGET_P50, color="grey", linestyle=":", linewidth=1)
    ax.axhline(TARGET_P99, color="grey", linestyle="--", linewidth=1)
    ax.set_ylabel("ms")
    ax.set_title("1-client latency by capture backend (targets: 2 ms p50, 10 ms p99)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return [module.save(fig, outdir / "logical_capture.png")]


if __name__ == "__main__":
    main()
