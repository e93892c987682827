"""Resume replay: how long a client that reconnects with ``since`` waits for the changes it
missed, and whether other sockets notice.

    python -m bench.replay [--runs 3] [--sizes 1000,3000,10000] [--probes 20]
    python -m bench.replay --quick          # 1 run: a smoke check

**Setup.** The bench site (bench/site) under daphne with the in-memory layer (the listener
inside daphne; ``--layer`` picks another). ``benchapp_tick`` holds ``--rows`` rows (1,000; a
subscription snapshot may hold at most 5,000, and a resuming ``subscribe`` reads the view too).
With the listener running, ``max(--sizes)`` changes are written as ``UPDATE benchapp_tick SET
value = value + 1`` statements over the rows (1,000 changes each), and the resume position
``N`` changes before the end is taken for every size ``N``: a ``subscribe`` on another socket
right after the statement that leaves ``N`` changes to go, whose reply carries the position of
its database snapshot. Then the driver waits until the listener has caught up, so none of its
work overlaps a measurement. The positions stay valid for every run (a replay reads the log,
it changes nothing); ``MAX_REPLAY`` is 10,000, so a size over it would get ``resync`` instead.

**One replay.** A fresh socket connects to ``/users/`` (anonymous: stream ``ticks`` lets anyone
read) and sends ``{"stream": "ticks", "payload": {"action": "subscribe", "request_id": "r",
"since": <position N back>}}``. Measured: from just before that frame is written to the
arrival of the reply (``time.monotonic_ns()`` at ``data_received``, in the client process);
the ``N`` replayed events arrive before the reply, and the run fails unless exactly ``N`` came
and the reply says ``replayed: N``. daphne's CPU and the whole machine's over that window.

**Other sockets.** ``--probes`` other sockets (their own client process) send ``list``
requests on ``ticks`` (``page_size`` 10) in a loop, each at most ``--probe-rate`` a second (the
per-socket ``RATE_LIMIT`` is 50), and time each reply. Their latency is reported without a
replay (``--baseline`` seconds first) and during each replay (requests in flight at any moment
of it).

**Each run**, on a fresh stack: every size replayed alone (no other request in flight), then
the list loops start and every size is replayed ``--repeats`` times again, half a second
apart (sizes in an order rotated per run). Replay times: medians over the runs. The other
sockets' latencies are pooled: all requests in flight during any loaded replay of a size, in
every run, against all requests of the baselines (one replay of 10,000 overlaps ~20 requests,
whose p99 is their maximum: too few to judge a p99 by). Target (issue): the replay of 10,000
changes under 2 s, judged with the list loops running, and the other sockets' requests
unaffected (here: their pooled p99 during the replays within 2x, or 10 ms, of their pooled
p99 without one).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from . import common, live, module
from .clients import ClientProcess
from .latency import percentile, prepare_table

PATH = "/users/"
STREAM = "ticks"
TARGET_S = 2.0
#: "Unaffected": p99 during a replay at most this many times the p99 without it, or...
UNAFFECTED_RATIO = 2.0
#: ... at most this many ms above it, whichever is more lenient.
UNAFFECTED_MS = 10.0
LIST = {"stream": STREAM, "payload": {"action": "list", "request_id": "l", "page_size": 10}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = module.Parser("replay", __doc__, quick="1 run")
    p.add_list(
        "--sizes", "size_list", "1000,3000,10000", "changes replayed (1000,3000,10000)", item=int
    )
    p.add_argument("--rows", type=int, default=1000, help="rows of benchapp_tick (1000)")
    p.add_argument(
        "--layer", default="memory", choices=live.LAYERS, help="channel layer of the stack (memory)"
    )
    p.add_argument("--probes", type=int, default=20, help="other sockets sending list (20)")
    p.add_argument("--probe-rate", type=float, default=2.0, help="list/s per probe socket (2)")
    p.add_argument("--baseline", type=float, default=3.0, help="s of probes without replay (3)")
    p.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="replays of each size per run with the list loops running, their samples pooled (5)",
    )
    p.add_argument(
        "--taker-nice",
        type=int,
        default=0,
        help="nice of the resuming client's process (0; the list loops' process stays at 0)",
    )
    p.add_quiet(wait=5.0)
    args = p.parse(argv)
    args.size_list = sorted(set(args.size_list))
    if args.rows > 5000:
        p.error("--rows over 5000: a subscription's view may hold at most 5000 rows")
    return args


def host_port(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].split(":")
    return host, int(port)


def write_log(
    dsn: str, url: str, sizes: list[int], rows: int, helper: ClientProcess
) -> dict[int, str]:
    """Write max(sizes) changes to benchapp_tick; the position ``N`` changes before the end,
    for each size ``N`` (from a subscribe's snapshot on a helper socket)."""
    host, port = host_port(url)
    helper.call("connect", host, port, PATH, [(None, None)], 1)
    total = max(sizes)
    marks = sorted({total - n for n in sizes})
    positions: dict[int, str] = {}
    done = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for mark in marks:
            while done < mark:
                step = min(rows, mark - done)
                conn.execute("UPDATE benchapp_tick SET value = value + 1 WHERE id <= %s", [step])
                done += step
            frame = {
                "stream": STREAM,
                "payload": {"action": "subscribe", "request_id": f"p{mark}", "pk": 1},
            }
            reply = helper.call("request", 0, frame)["reply"]["payload"]
            if reply.get("status") != 200:
                raise RuntimeError(f"position subscribe failed: {reply}")
            positions[total - mark] = str(reply["data"]["position"])
        while done < total:
            step = min(rows, total - done)
            conn.execute("UPDATE benchapp_tick SET value = value + 1 WHERE id <= %s", [step])
            done += step
    helper.call("close")
    return positions


def wait_caught_up(dsn: str, timeout: float = 120) -> float:
    """Wait until the listener's saved position reaches the end of the log; seconds waited."""
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT (SELECT coalesce(max(id), 0) FROM pgbinding_change),"
                " (SELECT coalesce(max(position), 0) FROM pgbinding_listener)"
            ).fetchone()
            assert row is not None
            if row[1] >= row[0]:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"the listener is behind: position {row[1]} of {row[0]}")
            time.sleep(0.1)


def stats(latencies: list[float]) -> dict[str, float]:
    s = sorted(latencies)
    return {
        "n": len(s),
        "p50": percentile(s, 0.5),
        "p99": percentile(s, 0.99),
        "max": s[-1] if s else math.nan,
    }


# --------------------------------------------------------------------------- one run


def replay_once(
    host: str, port: int, taker: ClientProcess, size: int, since: str, daphne: int
) -> dict[str, Any]:
    """A fresh socket resumes ``size`` changes back: the time to its reply, daphne's CPU."""
    taker.call("connect", host, port, PATH, [(None, None)], 1)
    frame = {
        "stream": STREAM,
        "payload": {"action": "subscribe", "request_id": "r", "since": since},
    }
    cpu0, ticks0, steal0 = common.proc_cpu(daphne), common.machine_ticks(), common.steal_ticks()
    res = taker.call("request", 0, frame)
    cpu1, ticks1, steal1 = common.proc_cpu(daphne), common.machine_ticks(), common.steal_ticks()
    taker.call("close")
    payload = res["reply"].get("payload") or {}
    data = payload.get("data") or {}
    if payload.get("status") != 200 or data.get("replayed") != size:
        raise RuntimeError(f"replay of {size}: {str(res['reply'])[:300]}")
    if res["frames_before"] != size:
        raise RuntimeError(f"replay of {size}: {res['frames_before']} events arrived")
    seconds = (res["reply_ns"] - res["sent_ns"]) / 1e9
    total = ticks1[0] - ticks0[0]
    idle = (ticks1[1] - ticks0[1]) + (ticks1[2] - ticks0[2])
    return {
        "size": size,
        "seconds": seconds,
        "rate": size / seconds,
        "sent_ns": res["sent_ns"],
        "reply_ns": res["reply_ns"],
        "daphne_cpu_s": cpu1 - cpu0,
        "machine": (1 - idle / total) * common.NCPU if total else math.nan,
        "steal": (steal1 - steal0) / total * common.NCPU if total else math.nan,
    }


def run_once(
    st: live.Stack,
    run: int,
    args: argparse.Namespace,
    positions: dict[int, str],
    probes: ClientProcess,
    taker: ClientProcess,
) -> dict[str, Any]:
    """Each size replayed alone, then again while the probe sockets send ``list``."""
    host, port = host_port(st.url)
    daphne = st.server.pid
    probes.call("connect", host, port, PATH, [(i, None) for i in range(args.probes)], 20)
    # A first request on a socket: imports and caches in place before anything is timed.
    taker.call("connect", host, port, PATH, [(None, None)], 1)
    taker.call("request", 0, LIST)
    taker.call("close")
    # A first long replay starts the server's replay worker processes (pgbinding.processes)
    # and is built in the server process while they start: not timed.
    warm = min(args.size_list)
    replay_once(host, port, taker, warm, positions[warm], daphne)
    time.sleep(3.0)
    k = run % len(args.size_list)
    order = args.size_list[k:] + args.size_list[:k]
    alone = []
    for size in order:
        common.wait_quiet(args.quiet_cores, args.quiet_wait)
        alone.append(replay_once(host, port, taker, size, positions[size], daphne))
    common.wait_quiet(args.quiet_cores, args.quiet_wait)
    probes.call("probe_start", LIST, args.probe_rate)
    base_from = time.monotonic_ns() + int(0.5e9)  # the loops' first requests warm up
    time.sleep(args.baseline + 0.5)
    base_to = time.monotonic_ns()
    loaded = []
    for size in order:
        for _ in range(args.repeats):
            time.sleep(0.5)
            loaded.append(replay_once(host, port, taker, size, positions[size], daphne))
    time.sleep(0.5)
    samples = probes.call("probe_stop")
    probes.call("close")
    refused = sum(1 for _, _, status in samples if status != 200)
    base = [(b - a) / 1e6 for a, b, _ in samples if a >= base_from and b <= base_to]
    for r in loaded:
        inside = [(a, b) for a, b, _ in samples if a < r["reply_ns"] and b > r["sent_ns"]]
        during = [(b - a) / 1e6 for a, b in inside]
        r["during_ms"] = [round(x, 3) for x in during]
        # when each of those requests was sent, ms from the replay's subscribe (< 0: before)
        r["during_at_ms"] = [round((a - r["sent_ns"]) / 1e6, 3) for a, _ in inside]
    return {
        "run": run,
        "baseline": stats(base),
        "baseline_ms": [round(x, 3) for x in base],
        "refused": refused,
        "alone": alone,
        "replays": loaded,
    }


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    live.raise_fd_limit()
    os.environ.setdefault("BENCH_PEERS", "none")  # no peer receivers in the stack
    results: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    with common.server(args.dsn) as dsn, contextlib.ExitStack() as stack:
        with psycopg.connect(dsn, autocommit=True) as conn:
            machine = common.announce_server(conn)
        live.migrate(dsn)
        prepare_table(dsn, args.rows)
        redis_url = stack.enter_context(live.redis()) if args.layer != "memory" else None
        probes = ClientProcess()
        stack.callback(probes.close)
        taker = ClientProcess()
        stack.callback(taker.close)
        if args.taker_nice:
            os.setpriority(os.PRIO_PROCESS, taker.pid, args.taker_nice)
        positions: dict[int, str] = {}
        print(
            f"== replays of {', '.join(f'{n:,}' for n in args.size_list)} changes of "
            f"benchapp_tick ({args.rows} rows), {args.layer} layer; {args.probes} other sockets "
            f"sending list at {args.probe_rate:g}/s each; {args.runs} run(s); logs in {tmp}",
            flush=True,
        )
        for run in range(args.runs):
            with live.stack(dsn, args.layer, tmp / f"run{run}", redis_url) as st:
                if not positions:
                    t0 = time.monotonic()
                    positions = write_log(dsn, st.url, args.size_list, args.rows, taker)
                    waited = wait_caught_up(dsn)
                    print(
                        f"   wrote {max(args.size_list):,} changes in "
                        f"{time.monotonic() - t0 - waited:.1f} s; the listener caught up "
                        f"{waited:.1f} s later",
                        flush=True,
                    )
                r = run_once(st, run, args, positions, probes, taker)
            results.append(r)
            b = r["baseline"]
            for a in r["alone"]:
                xs = [x for x in r["replays"] if x["size"] == a["size"]]
                d = _pooled([x["during_ms"] for x in xs])
                print(
                    f"   run {run + 1} replay {a['size']:>6,}: alone {a['seconds'] * 1000:6.0f} ms"
                    f" (daphne {a['daphne_cpu_s'] * 1e6 / a['size']:.0f} µs/event); with the "
                    "list loops "
                    + " ".join(f"{x['seconds'] * 1000:.0f}" for x in xs)
                    + f" ms, their p50/p99 {d['p50']:.1f}/{d['p99']:.1f} ms (n={d['n']}) vs "
                    f"{b['p50']:.1f}/{b['p99']:.1f} without (n={b['n']}); stolen by the "
                    f"hypervisor during them: {max(x['steal'] for x in xs):.2f} cores at most",
                    flush=True,
                )
    params = {
        "runs": args.runs,
        "sizes": args.size_list,
        "rows": args.rows,
        "layer": args.layer,
        "probes": args.probes,
        "probe_rate": args.probe_rate,
        "baseline": args.baseline,
        "repeats": args.repeats,
    }
    module.finish(args, params, machine, results, report_text)


# --------------------------------------------------------------------------- report


def _f(x: float, spec: str = ".1f") -> str:
    return common.fmt(x, spec)


def _pooled(parts: list[list[float]]) -> dict[str, float]:
    return stats([x for part in parts for x in part])


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """Medians over the runs of each replay's time and CPU. The other sockets' latencies are
    pooled: every request in flight during any loaded replay of a size (all runs, all
    repeats), against every request of the baselines; a p99 of the ~20 requests one replay
    overlaps would be their maximum, which decides nothing. Per run: the pooled p99 of that
    run."""
    res = data["results"]
    med = common.median
    rows = []
    for size in data["params"]["sizes"]:
        rs = [x for r in res for x in r["replays"] if x["size"] == size]
        alone = [x for r in res for x in r["alone"] if x["size"] == size]
        if not rs:
            continue
        during = _pooled([x["during_ms"] for x in rs])
        per_run = [
            _pooled([x["during_ms"] for x in r["replays"] if x["size"] == size])["p99"] for r in res
        ]
        rows.append(
            {
                "size": size,
                "alone_s": med([x["seconds"] for x in alone]),
                "alone_runs": [x["seconds"] for x in alone],
                "alone_us": med([x["daphne_cpu_s"] / size * 1e6 for x in alone]),
                "alone_daphne": med([x["daphne_cpu_s"] / x["seconds"] for x in alone]),
                "alone_machine": med([x["machine"] for x in alone]),
                "seconds": med([x["seconds"] for x in rs]),
                "seconds_max": max(x["seconds"] for x in rs),
                "seconds_runs": [x["seconds"] for x in rs],
                "replays": len(rs),
                "rate": med([x["rate"] for x in rs]),
                "daphne": med([x["daphne_cpu_s"] / x["seconds"] for x in rs]),
                "machine": med([x["machine"] for x in rs]),
                "p50": during["p50"],
                "p99": during["p99"],
                "max": during["max"],
                "n": during["n"],
                "p99_runs": per_run,
                "steal_max": max(x["steal"] for x in rs),
            }
        )
    base = _pooled([r["baseline_ms"] for r in res])
    return {
        "rows": rows,
        "base_p50": base["p50"],
        "base_p99": base["p99"],
        "base_max": base["max"],
        "base_n": base["n"],
        "base_p99_runs": [r["baseline"]["p99"] for r in res],
        "refused": sum(r["refused"] for r in res),
    }


def unaffected(p99: float, base: float) -> bool:
    return p99 <= max(UNAFFECTED_RATIO * base, base + UNAFFECTED_MS)


def report_text(data: dict[str, Any]) -> str:
    s = summary(data)
    p = data["params"]
    out = [
        f"== resume replay, {p['layer']} layer: subscribe with since -> reply, ms; medians of "
        f"{p['runs']} run(s); alone, then {p['repeats']} time(s) per run with "
        f"{p['probes']} other sockets sending list at {p['probe_rate']:g}/s each (their "
        "latencies pooled over every loaded replay)",
        f"   their list latency without a replay: p50 {_f(s['base_p50'])} p99 "
        f"{_f(s['base_p99'])} max {_f(s['base_max'])} ms (n={s['base_n']}); refused: "
        f"{s['refused']}",
        f"{'changes':>8} {'alone':>7} {'µs/event':>8} {'daphne':>6} | {'loaded':>7} "
        f"{'events/s':>8} {'daphne':>6} {'machine':>7} | {'list p50':>8} {'p99':>7} {'max':>7} "
        f"{'n':>4}  alone / loaded per run",
    ]
    out.append("-" * len(out[-1]))
    for r in s["rows"]:
        out.append(
            f"{r['size']:>8,} {r['alone_s'] * 1000:7.0f} {r['alone_us']:8.0f} "
            f"{r['alone_daphne']:6.2f} | {r['seconds'] * 1000:7.0f} {r['rate']:8,.0f} "
            f"{r['daphne']:6.2f} {r['machine']:7.2f} | {_f(r['p50']):>8} {_f(r['p99']):>7} "
            f"{_f(r['max']):>7} {r['n']:>4}  "
            + " ".join(f"{x * 1000:.0f}" for x in r["alone_runs"])
            + " / "
            + " ".join(f"{x * 1000:.0f}" for x in r["seconds_runs"])
        )
        out.append(
            f"{'':>8} others' list p99 per run: "
            + " / ".join(_f(x) for x in r["p99_runs"])
            + " ms, without a replay: "
            + " / ".join(_f(x) for x in s["base_p99_runs"])
            + f" ms; slowest loaded replay {r['seconds_max'] * 1000:.0f} ms"
        )
    out.append("")
    for what, want, got, ok in targets(data):
        out.append(f"   target {what}: {want}; measured {got}: {'met' if ok else 'MISSED'}")
    return "\n".join(out)


def targets(data: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    s = summary(data)
    p = data["params"]
    out = []
    for r in s["rows"]:
        if r["size"] != 10_000:
            continue
        out.append(
            (
                "resume replay of 10,000 changes: subscribe with since -> reply, while "
                f"{p['probes']} other sockets send list",
                f"< {TARGET_S:g} s",
                f"{r['seconds']:.2f} s, slowest of {r['replays']} {r['seconds_max']:.2f} s "
                f"({r['alone_s']:.2f} s with no other requests)",
                r["seconds"] < TARGET_S,
            )
        )
        out.append(
            (
                "other sockets' list requests during that replay: p99",
                f"unaffected (<= {UNAFFECTED_RATIO:g}x or +{UNAFFECTED_MS:g} ms of the p99 "
                "without a replay)",
                f"{_f(r['p99'])} ms vs {_f(s['base_p99'])} ms without ("
                f"{r['n']:,} and {s['base_n']:,} requests pooled over the runs; per run "
                + " / ".join(_f(x) for x in r["p99_runs"])
                + " ms)",
                unaffected(r["p99"], s["base_p99"]),
            )
        )
    return out


def markdown(data: dict[str, Any]) -> str:
    s = summary(data)
    p = data["params"]
    lines = [
        f"A client resumes: a fresh socket sends `subscribe` on stream `ticks` with `since` set "  # noqa: S608
        f"to a position N changes back (`benchapp_tick`, {p['rows']:,} rows, the changes "
        "written as `UPDATE benchapp_tick SET value = value + 1` statements while the listener "
        "ran, and caught up on before measuring). Measured at the client: from writing the "
        "frame to the reply's arrival, with the N replayed events before it (checked: exactly "
        "N, and `replayed: N`). Each N is replayed *alone*, then again while "
        f"{p['probes']} other sockets send `list` (page size 10) in a loop, at most "
        f"{p['probe_rate']:g}/s each (*with list loops*); their reply latency is given without a "
        f"replay ({p['baseline']:g} s before the first replay) and for the requests in flight "
        f"during the replays, each size replayed {p['repeats']} time(s) per run half a "
        "second apart and the requests of all of them pooled (one replay overlaps only ~20 "
        "requests, whose p99 would be their maximum). Layer "
        f"`{p['layer']}`; a fresh daphne per run; replay times are medians of "
        f"{p['runs']} run(s).",
        "",
        "| changes replayed | alone: subscribe → reply ms | daphne µs CPU/event | with list "
        "loops: subscribe → reply ms | events/s | daphne cores | whole machine | others' list "
        "p50 ms | p99 ms | max ms | requests | p99 per run ms | per-run ms (alone / with loops) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        f"| none (baseline) | | | | | | | {_f(s['base_p50'])} | {_f(s['base_p99'])} | "
        f"{_f(s['base_max'])} | {s['base_n']:,} | "
        + ", ".join(_f(x) for x in s["base_p99_runs"])
        + " | |",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['size']:,} | {r['alone_s'] * 1000:.0f} | {r['alone_us']:.0f} | "
            f"{r['seconds'] * 1000:.0f} | {r['rate']:,.0f} | {r['daphne']:.2f} | "
            f"{r['machine']:.2f} | {_f(r['p50'])} | {_f(r['p99'])} | {_f(r['max'])} | "
            f"{r['n']:,} | "
            + ", ".join(_f(x) for x in r["p99_runs"])
            + " | "
            + ", ".join(f"{x * 1000:.0f}" for x in r["alone_runs"])
            + " / "
            + ", ".join(f"{x * 1000:.0f}" for x in r["seconds_runs"])
            + " |"
        )
    lines += [
        "",
        "**Targets:** "
        + "; ".join(
            f"{what}: {want}, measured {got} — **{'met' if ok else 'missed'}**"
            for what, want, got, ok in targets(data)
        )
        + f". Requests refused (429 or errors): {s['refused']}. CPU the hypervisor gave other "
        "guests (steal) during a loaded replay: "
        + ", ".join(f"{r['steal_max']:.2f}" for r in s["rows"])
        + " cores at most.",
        "",
        "*daphne µs CPU/event*: daphne's CPU over a replay alone divided by the events replayed "
        "(reading the log and sending the frames; decoding, judging and encoding each change "
        "run in daphne's replay worker process, `pgbinding/processes.py`, which is not "
        "counted here, and which a first, untimed replay of the smallest size started). "
        "*daphne cores* and *whole machine*: CPU over the replay with the list loops running. "
        "With `memory` the listener runs inside daphne, but it had caught up before the "
        "replays and had nothing to do during them.",
    ]
    return "\n".join(lines)


def plots(data: dict[str, Any], outdir: Path) -> list[Path]:
    plt = module.pyplot()

    s = summary(data)
    if not s["rows"]:
        return []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    sizes = [r["size"] for r in s["rows"]]
    a1.plot(sizes, [r["alone_s"] for r in s["rows"]], marker="o", label="alone")
    a1.plot(sizes, [r["seconds"] for r in s["rows"]], marker="o", label="with list loops")
    a1.axhline(TARGET_S, color="grey", linestyle="--", linewidth=1, label="target 2 s")
    a1.set_xlabel("changes replayed")
    a1.set_ylabel("subscribe -> reply, s")
    a1.set_title("resume replay")
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    labels = ["none"] + [f"{n:,}" for n in sizes]
    xs = list(range(len(labels)))
    p50 = [s["base_p50"]] + [r["p50"] for r in s["rows"]]
    p99 = [s["base_p99"]] + [r["p99"] for r in s["rows"]]
    a2.bar([x - 0.2 for x in xs], p50, 0.4, label="p50")
    a2.bar([x + 0.2 for x in xs], p99, 0.4, label="p99")
    a2.set_xticks(xs, labels)
    a2.set_xlabel("replay running (changes)")
    a2.set_ylabel("list reply, ms")
    a2.set_yscale("log")
    a2.set_title("other sockets' requests")
    a2.legend(fontsize=7)
    a2.grid(axis="y", alpha=0.3)
    path = module.save(fig, outdir / "replay.png")
    return [path]


if __name__ == "__main__":
    main()
