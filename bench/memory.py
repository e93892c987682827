"""Memory per connection: daphne's RSS per idle, subscribed pgbinding socket, against a plain
Channels consumer.

    python -m bench.memory [--runs 3] [--layers memory,redis] [--connections 1000,5000]
    python -m bench.memory --quick          # 1 run, 1,000 and 2,000 sockets (~2 min)

**What is measured.** The bench site (bench/site) runs under daphne (bench/live.py), with the
in-memory channel layer (listener inside daphne) and with channels_redis core (``pglisten`` its
own process; ``pubsub`` may be added with ``--layers``). For each layer, socket count ``N`` and
run, on a fresh daphne:

* **pgbinding**: one warm-up socket connects to ``/pgbinding/``, subscribes, sees one change
  and closes (so imports, the listener, the thread pool and Django's caches are in place before
  the first reading). Then daphne's RSS (VmRSS) is read: *before*. ``N`` sockets connect to
  ``/pgbinding/`` (each joins group ``ticks``; ``connected``), then each sends
  ``{"stream": "ticks", "payload": {"action": "subscribe", "request_id": "s"}}`` and waits for
  its 200 reply (``subscribed``). The table holds ``--rows`` rows, so each snapshot is small.
  After each step the sockets idle ``--idle`` seconds before RSS is read. Then ``--events``
  single-row UPDATEs are written and every socket receives each twice (its group event and its
  subscription event): ``after events``. Last, the sockets close: ``closed`` (memory not given
  back).
* **baseline**: a fresh daphne, the same warm-up, ``N`` sockets to ``/signal/``, a bare
  ``AsyncJsonWebsocketConsumer`` (bench/site/benchapp/peers.py) that joins one group in
  ``connect`` and accepts: the least a Channels socket in a group costs.

Per-connection figure = (RSS at the step - RSS before) / N. The target (benchmark issue) is
<= 50 KB per idle subscribed connection; the ratio to the baseline says how much of it is
pgbinding's own. With Redis, pglisten's and Redis's RSS are read too (pglisten does not hold
sockets; Redis holds the group memberships).

The clients are a minimal asyncio WebSocket client (bench/latency.py), in their own OS
processes (``--per-process`` sockets each, 1,250 by default: four for 5,000), opening at most
``--concurrency`` handshakes at a time in all (daphne's listen backlog is 50). The open-files
limit is raised for the driver, so daphne and the clients inherit it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from . import common, live, module
from .latency import ClientPool, Writer, prepare_table

TARGET_KB = 50.0
KINDS = ("pgbinding", "baseline")
STEPS = ("connected", "subscribed", "events", "closed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = module.Parser("memory", __doc__, quick="1 run, 1000,2000 sockets")
    p.add_list(
        "--layers",
        "layer_list",
        "memory,redis",
        "channel layers (memory,redis)",
        choices=live.LAYERS,
    )
    p.add_list(
        "--connections",
        "count_list",
        "1000,5000",
        "socket counts (1000,5000; --quick 1000,2000)",
        item=int,
    )
    p.add_argument("--rows", type=int, default=10, help="rows in each snapshot (10)")
    p.add_argument(
        "--idle", type=float, default=3.0, help="seconds idle before each reading (3; --quick 1)"
    )
    p.add_argument(
        "--events",
        type=int,
        default=40,
        help="changes sent to every socket (40: more than the consumer's repeat filter "
        "keeps, so it is full; --quick 4)",
    )
    p.set_quick_defaults(count_list="1000,2000", idle=1.0, events=4)
    p.add_argument("--per-process", type=int, default=1250, help="sockets per client process")
    p.add_argument("--concurrency", type=int, default=50, help="handshakes in flight, in all")
    return p.parse(argv)


def rss(pids: dict[str, int]) -> dict[str, int]:
    return {k: live.rss_kib(p) for k, p in pids.items()}


def warm_up(pool: ClientPool, st: live.Stack, path: str, writer: Writer) -> None:
    """One socket: connect, subscribe (pgbinding), see a change, close."""
    pool.connect(st.url, path, 1, 1, keep=False)
    if path == "/pgbinding/":
        res = pool.broadcast("subscribe", "ticks", 1)[0]
        if res["statuses"] != {"200": 1}:
            raise RuntimeError(f"warm-up subscribe failed: {res}")
    pool.broadcast("mark")
    writer.write(1, 10)
    if path == "/pgbinding/":
        pool.wait_frames(2, idle=10)
    pool.close_sockets()


def measure(
    dsn: str,
    layer: str,
    kind: str,
    n: int,
    run: int,
    args: argparse.Namespace,
    pool: ClientPool,
    writer: Writer,
    redis_url: str | None,
    tmp: Path,
) -> dict[str, Any]:
    logdir = tmp / f"{layer}-{kind}-{n}-{run}"
    path = "/pgbinding/" if kind == "pgbinding" else "/signal/"
    out: dict[str, Any] = {"layer": layer, "kind": kind, "connections": n, "run": run}
    with live.stack(dsn, layer, logdir, redis_url) as st:
        pids = {"daphne": st.server.pid}
        if st.listener is not None:
            pids["pglisten"] = st.listener.pid
        rpid = common.redis_pid(redis_url) if layer != "memory" else None
        if rpid:
            pids["redis"] = rpid
        warm_up(pool, st, path, writer)
        time.sleep(args.idle)
        readings: dict[str, dict[str, int]] = {"before": rss(pids)}
        try:
            res = pool.connect(st.url, path, n, args.per_process, args.concurrency, keep=False)
            out["connect_s"] = res["seconds"]
            time.sleep(args.idle)
            readings["connected"] = rss(pids)
            if kind == "pgbinding":
                k = len(pool.active)
                sub = pool.broadcast("subscribe", "ticks", max(1, args.concurrency // k))
                statuses: dict[str, int] = {}
                for r in sub:
                    for s, c in r["statuses"].items():
                        statuses[s] = statuses.get(s, 0) + c
                out["subscribe_s"] = max(r["seconds"] for r in sub)
                out["subscribe_statuses"] = statuses
                errors = [r["first_error"] for r in sub if r["first_error"]]
                if statuses.get("200", 0) != n:
                    raise RuntimeError(f"{n} subscribes got {statuses}; first error {errors[:1]}")
                time.sleep(args.idle)
                readings["subscribed"] = rss(pids)
                if args.events:
                    pool.broadcast("mark")
                    rate = max(0.2, min(20.0, 5000 / (2 * n)))
                    t0 = time.monotonic()
                    writer.write(args.events, rate)
                    # With the in-memory layer a fan-out to thousands of sockets is slow
                    # (see the report); give up after 30 s without progress.
                    got = pool.wait_frames(2 * n * args.events, idle=30, limit=300)
                    out["events_s"] = time.monotonic() - t0
                    out["event_frames"] = got["total"]
                    out["event_frames_expected"] = 2 * n * args.events
                    out["min_frames_per_socket"] = got["min"]
                    time.sleep(args.idle)
                    readings["events"] = rss(pids)
            out["open_at_end"] = pool.counts()["open"]
        finally:
            pool.close_sockets()
        time.sleep(args.idle)
        readings["closed"] = rss(pids)
    out["rss_kib"] = readings
    if "events" in readings and out.get("event_frames"):
        frames_per_socket = out["event_frames"] / n
        grown = (readings["events"]["daphne"] - readings["subscribed"]["daphne"]) * 1024 / n
        out["bytes_per_frame"] = grown / frames_per_socket
    before = readings["before"]
    out["per_conn_kb"] = {
        step: {proc: (kib - before[proc]) * 1.024 / n for proc, kib in r.items()}
        for step, r in readings.items()
        if step != "before"
    }
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    nofile = live.raise_fd_limit()
    need = max(args.count_list) + 200
    if nofile < need:
        raise SystemExit(f"open-files limit {nofile} is below the {need} needed")
    results: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    started = time.monotonic()
    with common.server(args.dsn) as dsn, contextlib.ExitStack() as stack:
        with psycopg.connect(dsn, autocommit=True) as conn:
            machine = common.announce_server(conn)
        live.migrate(dsn)
        prepare_table(dsn, args.rows)
        redis_url = None
        if any(layer != "memory" for layer in args.layer_list):
            redis_url = stack.enter_context(live.redis())
        nproc = max(math.ceil(c / args.per_process) for c in args.count_list)
        pool = ClientPool(nproc)
        stack.callback(pool.close)
        writer = Writer(dsn)
        stack.callback(writer.close)
        print(
            f"== {nproc} client process(es) of at most {args.per_process} sockets; open-files "
            f"limit {nofile}; {args.rows} rows per snapshot; idle {args.idle:g} s before each "
            f"reading; {args.events} events; {args.runs} run(s); logs in {tmp}",
            flush=True,
        )
        for run in range(args.runs):
            for n in args.count_list:
                for layer in args.layer_list:
                    kinds = KINDS if run % 2 == 0 else KINDS[::-1]
                    for kind in kinds:
                        r = measure(dsn, layer, kind, n, run, args, pool, writer, redis_url, tmp)
                        results.append(r)
                        d = r["per_conn_kb"]
                        steps = ", ".join(f"{s} {d[s]['daphne']:.1f}" for s in STEPS if s in d)
                        print(
                            f"   run {run + 1} {layer:6} {kind:9} {n:5} sockets: daphne KB per "
                            f"socket: {steps}; connect {r['connect_s']:.1f} s"
                            + (
                                f", subscribe {r['subscribe_s']:.1f} s"
                                if "subscribe_s" in r
                                else ""
                            ),
                            flush=True,
                        )
    params = {
        "runs": args.runs,
        "layers": args.layer_list,
        "connections": args.count_list,
        "rows": args.rows,
        "idle_s": args.idle,
        "events": args.events,
        "per_process": args.per_process,
        "concurrency": args.concurrency,
        "minutes": (time.monotonic() - started) / 60,
    }
    module.finish(args, params, machine, results, report_text)


# --------------------------------------------------------------------------- report


def _f(x: float, spec: str = ".1f") -> str:
    return common.fmt(x, spec)


def summary(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (layer, connections): medians over the runs of KB per socket."""
    rows = []
    res = data["results"]
    for n in data["params"]["connections"]:
        for layer in data["params"]["layers"]:
            row: dict[str, Any] = {"layer": layer, "connections": n}
            for kind in KINDS:
                rs = [
                    r
                    for r in res
                    if r["layer"] == layer and r["connections"] == n and r["kind"] == kind
                ]
                for step in STEPS:
                    for proc in ("daphne", "pglisten", "redis"):
                        vals = [
                            r["per_conn_kb"][step][proc]
                            for r in rs
                            if step in r["per_conn_kb"] and proc in r["per_conn_kb"][step]
                        ]
                        row[f"{kind}_{step}_{proc}"] = common.median(vals) if vals else float("nan")
                    row[f"{kind}_{step}_runs"] = [
                        r["per_conn_kb"][step]["daphne"] for r in rs if step in r["per_conn_kb"]
                    ]
                for key in ("connect_s", "subscribe_s", "events_s"):
                    vals = [float(r[key]) for r in rs if key in r]
                    row[f"{kind}_{key}"] = common.median(vals) if vals else float("nan")
                row[f"{kind}_runs"] = len(rs)
                vals = [float(r["bytes_per_frame"]) for r in rs if "bytes_per_frame" in r]
                row[f"{kind}_bytes_per_frame"] = common.median(vals) if vals else float("nan")
                vals = [
                    r["event_frames"] / r["event_frames_expected"]
                    for r in rs
                    if r.get("event_frames_expected")
                ]
                row[f"{kind}_delivered"] = min(vals) if vals else float("nan")
                row[f"{kind}_events_complete"] = all(
                    r.get("event_frames", 0) >= r.get("event_frames_expected", 0) for r in rs
                )
                befores = [r["rss_kib"]["before"]["daphne"] / 1024 for r in rs]
                row[f"{kind}_before_mib"] = common.median(befores) if befores else float("nan")
            base = row["baseline_connected_daphne"]
            for step in ("connected", "subscribed", "events"):
                v = row[f"pgbinding_{step}_daphne"]
                row[f"ratio_{step}"] = v / base if base and base == base else float("nan")
            if row["pgbinding_runs"] or row["baseline_runs"]:
                rows.append(row)
    return rows


def report_text(data: dict[str, Any]) -> str:
    p = data["params"]
    rows = summary(data)
    out = [
        f"== daphne RSS per socket, KB (1000 bytes), (RSS at step - RSS before) / N; medians of "
        f"{p['runs']} run(s); baseline = /signal/ (bare AsyncJsonWebsocketConsumer in a group)",
        f"{'layer':6} {'N':>5} {'before MiB':>10} {'baseline':>8} {'pgb conn':>8} "
        f"{'pgb subs':>8} {'x base':>6} {'+events':>8} {'B/frame':>7} {'dlvrd':>5} {'closed':>7} "
        f"{'base closed':>11} "
        f"{'pglisten':>8} {'redis':>6} {'connect s':>9} {'subscr s':>8}  subscribed per run",
    ]
    out.append("-" * len(out[-1]))
    for r in rows:
        out.append(
            f"{r['layer']:6} {r['connections']:>5} {_f(r['pgbinding_before_mib']):>10} "
            f"{_f(r['baseline_connected_daphne']):>8} {_f(r['pgbinding_connected_daphne']):>8} "
            f"{_f(r['pgbinding_subscribed_daphne']):>8} {_f(r['ratio_subscribed'], '.2f'):>6} "
            f"{_f(r['pgbinding_events_daphne']):>8} {_f(r['pgbinding_bytes_per_frame'], '.0f'):>7} "
            f"{_f(r['pgbinding_delivered'], '.0%'):>5} {_f(r['pgbinding_closed_daphne']):>7} "
            f"{_f(r['baseline_closed_daphne']):>11} "
            f"{_f(r['pgbinding_subscribed_pglisten']):>8} "
            f"{_f(r['pgbinding_subscribed_redis']):>6} {_f(r['pgbinding_connect_s']):>9} "
            f"{_f(r['pgbinding_subscribe_s']):>8}  "
            + " ".join(_f(x) for x in r["pgbinding_subscribed_runs"])
        )
    out += [
        f"  pgb conn = /pgbinding/ sockets in group ticks; pgb subs = also subscribed (the figure "
        f"the target is about); +events = after {p['events']} changes reached every socket "
        "twice (group + subscription);\n  B/frame = that growth in bytes per frame a socket "
        "received; dlvrd = share of those frames delivered before giving up;\n  "
        "closed = after every socket closed (not given back); "
        "pglisten, redis = their RSS growth per subscribed socket (Redis layer only).",
        "",
    ]
    for what, want, got, ok in targets(data):
        out.append(f"   target {what}: {want}; measured {got}: {'met' if ok else 'MISSED'}")
    return "\n".join(out)


def targets(data: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(what, target, measured, met) for the summary table of docs/benchmarks.md."""
    out = []
    for r in summary(data):
        v = r["pgbinding_subscribed_daphne"]
        if v != v:
            continue
        out.append(
            (
                f"memory per idle subscribed socket, {r['connections']:,} sockets, "
                f"{r['layer']} layer",
                f"<= {TARGET_KB:g} KB",
                f"{v:.1f} KB ({_f(r['ratio_subscribed'], '.2f')}x a bare Channels consumer)",
                v <= TARGET_KB,
            )
        )
    return out


def markdown(data: dict[str, Any]) -> str:
    p = data["params"]
    rows = summary(data)
    lines = [
        "daphne's RSS growth per WebSocket socket: (RSS after the step - RSS before any "
        f"socket) / N, in KB of 1,000 bytes, read after {p['idle_s']:g} s idle; fresh daphne per "
        "measurement, warmed by one socket that connected, subscribed, saw a change and closed. "
        "*pgbinding*: N sockets on `/pgbinding/` (each in group `ticks`), then each subscribed "
        f"to stream `ticks` (no filter; the table has {p['rows']} rows, so each snapshot is "
        "small). *Baseline*: a fresh daphne with N sockets on `/signal/`, a bare Channels "
        "`AsyncJsonWebsocketConsumer` that joins one group and accepts. "
        f"Medians of {p['runs']} run(s).",
        "",
        "| layer | sockets | baseline | pgbinding, connected | pgbinding, subscribed | "
        f"÷ baseline | after {p['events']} events | bytes kept per frame received | "
        "event frames delivered | after closing | subscribed, per run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['connections']:,} | {_f(r['baseline_connected_daphne'])} | "
            f"{_f(r['pgbinding_connected_daphne'])} | **{_f(r['pgbinding_subscribed_daphne'])}** "
            f"| {_f(r['ratio_subscribed'], '.2f')} | {_f(r['pgbinding_events_daphne'])} | "
            f"{_f(r['pgbinding_bytes_per_frame'], '.0f')} | "
            f"{_f(r['pgbinding_delivered'], '.0%')} | {_f(r['pgbinding_closed_daphne'])} | "
            + ", ".join(_f(x) for x in r["pgbinding_subscribed_runs"])
            + " |"
        )
    lines += [
        "",
        "**Target** (≤ 50 KB per idle subscribed socket): "
        + "; ".join(
            f"{what}: {got} — **{'met' if ok else 'missed'}**" for what, _, got, ok in targets(data)
        )
        + ".",
        "",
        f"*After events*: every socket received {p['events']} changes, each twice (its group "
        "event and its subscription's event); growth over *subscribed* is what the server "
        "kept after sending them; *bytes kept per frame* divides it by the frames each socket "
        "received. pgbinding's consumer remembers the last 32 changes it sent, to drop "
        "repeats (about 4 KB once full); the rest is the allocator's high-water mark from the "
        "fan-out and, where the fan-out falls behind, of messages that queued in the layer. "
        "*Event frames delivered* below 100% means the fan-out had not finished after 30 s "
        "without progress (or 300 s in all) and the reading was taken anyway. "
        "*After closing*: RSS still held once every socket closed "
        "(Python rarely returns freed memory to the OS, so this is not by itself a leak).",
    ]
    redis_rows = [r for r in rows if r["layer"] != "memory"]
    if redis_rows:
        lines += [
            "",
            "With channels_redis the listener is `pglisten`, its own process: its RSS does not "
            "grow with sockets. Growth per subscribed socket of pglisten / Redis: "
            + "; ".join(
                f"{r['layer']}, {r['connections']:,}: {_f(r['pgbinding_subscribed_pglisten'])}"
                f" / {_f(r['pgbinding_subscribed_redis'])} KB"
                for r in redis_rows
            )
            + ".",
        ]
    lines += [
        "",
        "Time to open the sockets and to subscribe them (median s): "
        + "; ".join(
            f"{r['layer']}, {r['connections']:,}: {_f(r['pgbinding_connect_s'])} / "
            f"{_f(r['pgbinding_subscribe_s'])}"
            for r in rows
        )
        + f". The clients are their own OS processes (at most {p['per_process']} sockets "
        f"each, {p['concurrency']} handshakes in flight in all); only daphne's RSS is counted.",
    ]
    return "\n".join(lines)


def plots(data: dict[str, Any], outdir: Path) -> list[Path]:
    plt = module.pyplot()

    rows = summary(data)
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels = [f"{r['layer']}\n{r['connections']:,}" for r in rows]
    xs = list(range(len(rows)))
    series = [
        ("baseline (/signal/)", "baseline_connected_daphne", "grey"),
        ("pgbinding, connected", "pgbinding_connected_daphne", "C0"),
        ("pgbinding, subscribed", "pgbinding_subscribed_daphne", "C1"),
        (f"+ {data['params']['events']} events", "pgbinding_events_daphne", "C3"),
    ]
    width = 0.2
    for k, (name, key, color) in enumerate(series):
        ax.bar(
            [x + (k - 1.5) * width for x in xs],
            [r[key] for r in rows],
            width,
            label=name,
            color=color,
        )
    ax.axhline(TARGET_KB, color="black", linestyle="--", linewidth=1, label="target 50 KB")
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("daphne RSS per socket, KB")
    ax.set_title("Memory per WebSocket socket (median)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    path = module.save(fig, outdir / "memory_per_connection.png")
    return [path]


if __name__ == "__main__":
    main()
