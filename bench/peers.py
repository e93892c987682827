"""Peers, same workload, same run: pgbinding against the two usual signal-based ways of pushing
model changes to WebSocket clients with Django Channels.

    python -m bench.peers [--runs 3] [--seconds 5] [--clients 1,8] [--rows 1000]
    python -m bench.peers --quick        # 1 run, 3 s per measurement, 200 rows: a smoke check

**Systems** (bench/site: model ``benchapp.Tick``, daphne, channels_redis core on a private
Redis for all of them, because the signal peers send from the writing process):

* ``pgbinding``: the statement-level triggers write ``pgbinding_change``; ``manage.py pglisten``
  (its own process) sends each change to group ``ticks``; a client of ``/pgbinding/`` (the
  Demultiplexer) gets ``{"stream": "ticks", "payload": {...}}``.
* ``signal``: a hand-written ``post_save``/``post_delete`` receiver that calls
  ``async_to_sync(group_send)`` from ``transaction.on_commit`` (bench/site/benchapp/peers.py);
  clients of ``/signal/``.
* ``dcrf``: djangochannelsrestframework's ``@model_observer(Tick)`` (post_init/post_save
  receivers, ``on_commit``, ``async_to_sync(group_send)``), clients of ``/dcrf/``.
* ``no live updates``: the baseline for write throughput; no trigger, no receivers.

**One system at a time.** Each is measured with the others switched off: pgbinding's triggers
are disabled (``ALTER TABLE benchapp_tick DISABLE TRIGGER USER``) unless pgbinding is measured,
and the writer processes connect only the measured peer's receivers (``BENCH_PEERS``, read by
peers.py and apps.py). daphne, pglisten and Redis run throughout (idle when not used). The order
of the four rotates from run to run; every run starts a fresh daphne and pglisten.

**ORM saves (throughput and latency).** 1 and 8 writer processes (multiprocessing spawn, Django
set up with the Redis layer, the measured system's receivers) run closed loops of
``tick.value = n; tick.save()`` in autocommit (one transaction per save) on rows of their own
(16 each), ``--seconds`` long, started together. Each write's commit time is taken with
``connection.execute_wrapper`` right after its UPDATE returns (in autocommit that is the commit
as the writer sees it, before any ``post_save``/``on_commit`` work of the peers). One WebSocket
client (its own process, asyncio ``websockets``) connected to the system's route stamps every
frame as it arrives; both stamps are ``CLOCK_MONOTONIC`` (system-wide). Reported: writes/s
(and ÷ the baseline's in the same run), changes/s delivered to the client (frames matched to
writes, over first write → last frame) and the share delivered, latency commit → frame p50 /
p99, and the CPU of each process.

**Share delivered.** With each system, from one writer process (its receivers connected), on
``--rows`` rows: ``save()`` on each row (the control: every system should deliver it),
``QuerySet.update(value=F("value") + 1)``, ``bulk_create`` of ``--rows`` new rows, a raw
``UPDATE`` through Django's ``connection.cursor()``, and the same raw ``UPDATE`` from a separate
psycopg connection (as psql or another service would). The client counts the distinct rows it
gets until it has them all or none came for ``--wait`` seconds.

**Keeping the load generators apart (2 cores).** Writers and client are separate OS processes;
nothing shares an interpreter with daphne or pglisten. The writers run at ``nice --nice`` (10)
so that, when the machine is saturated, the delivery side (daphne, pglisten, Redis, Postgres)
and the measuring client are served first and the writers' throughput takes the loss. The peers
build and send their messages inside the writers, so that part of their delivery path is niced
too (pgbinding's is in pglisten, at normal priority): ``--nice 0`` measures without this. The
CPU of writers, client, daphne, pglisten, Redis, Postgres and the whole machine is measured and
reported for every measurement. Before each one the driver waits (up to 10 s) for the machine
to be quiet.

Every figure is the median over ``--runs``; ratios are taken within a run, then the median.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from . import common, live, module

SYSTEMS = ("baseline", "pgbinding", "signal", "dcrf")
LABEL = {
    "baseline": "no live updates",
    "pgbinding": "pgbinding",
    "signal": "signal + group_send",
    "dcrf": "dcrf model_observer",
}
ROUTE = {"baseline": "/pgbinding/", "pgbinding": "/pgbinding/", "signal": "/signal/"}
ROUTE["dcrf"] = "/dcrf/"
PEERS_ENV = {"baseline": "none", "pgbinding": "none", "signal": "signal", "dcrf": "dcrf"}
OPS = ("save", "qs_update", "bulk_create", "raw_cursor", "raw_psycopg")
OP_LABEL = {
    "save": "save() on each row (control)",
    "qs_update": 'QuerySet.update(value=F("value") + 1)',
    "bulk_create": "QuerySet.bulk_create()",
    "raw_cursor": "raw UPDATE, Django connection.cursor()",
    "raw_psycopg": "raw UPDATE, separate psycopg connection",
}
OP_SHORT = {
    "save": "save() each row\n(control)",
    "qs_update": "QuerySet.update()",
    "bulk_create": "bulk_create()",
    "raw_cursor": "raw SQL,\nconnection.cursor()",
    "raw_psycopg": "raw SQL,\nother connection",
}
ROWS_PER_WRITER = 16
SHARE_BASE = 100_000  # ids of the share rows start above this
VALUE_STRIDE = 10**9  # writer w writes values (w + 1) * VALUE_STRIDE + i


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = module.Parser("peers", __doc__, quick="1 run, 3 s, 200 rows")
    p.add_argument(
        "--seconds", type=float, default=5.0, help="length of each save measurement (5; quick 3)"
    )
    p.add_list(
        "--clients", "client_list", "1,8", "writer processes, comma-separated (1,8)", item=int
    )
    p.add_argument(
        "--rows",
        type=int,
        default=1000,
        help="rows per share-delivered operation (1000; quick 200)",
    )
    p.set_quick_defaults(seconds=3.0, rows=200)
    p.add_argument("--wait", type=float, default=5.0, help="share: wait for frames (5 s)")
    p.add_list(
        "--systems",
        "systems",
        ",".join(SYSTEMS[1:]),
        "systems besides the baseline (pgbinding,signal,dcrf)",
        choices=SYSTEMS,
    )
    p.add_argument("--nice", type=int, default=10, help="niceness of the writers (10)")
    args = p.parse(argv)
    args.system_list = ["baseline", *args.systems]
    if len(set(args.system_list)) != len(args.system_list):
        p.error("a system is listed twice")
    return args


# --------------------------------------------------------------------------- WebSocket client


def _client_main(url: str, pipe: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_client(url, pipe))


def _change(raw: str | bytes) -> tuple[Any, Any, str] | None:
    """(value, pk, action) of a change frame of any of the systems, else None."""
    msg = json.loads(raw)
    payload = msg.get("payload") if "stream" in msg else msg
    if not isinstance(payload, dict) or "status" in payload:
        return None
    action = payload.get("action")
    if action not in ("create", "update", "delete"):
        return None
    data = payload.get("data") or {}
    return data.get("value"), payload.get("pk"), action


async def _client(url: str, pipe: Any) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, max_size=None) as ws:
        frames: list[tuple[Any, Any, str, int]] = []
        state = {"last": time.monotonic(), "other": 0, "cpu0": common.proc_cpu(os.getpid())}

        async def receive() -> None:
            async for raw in ws:
                now = time.monotonic_ns()
                change = _change(raw)
                state["last"] = time.monotonic()
                if change is None:
                    state["other"] += 1
                else:
                    frames.append((*change, now))

        task = asyncio.create_task(receive())
        pipe.send(("ready", os.getpid()))
        while True:
            cmd = await asyncio.to_thread(pipe.recv)
            if cmd[0] == "stop":
                task.cancel()
                return
            if task.done():
                pipe.send(("error", repr(task.exception())))
                return
            if cmd[0] == "reset":
                frames.clear()
                state.update(other=0, cpu0=common.proc_cpu(os.getpid()))
                pipe.send(("ok",))
            elif cmd[0] == "collect":
                _, expect, idle = cmd
                since = time.monotonic()
                while len(frames) < expect:
                    if time.monotonic() - max(since, state["last"]) > idle:
                        break
                    await asyncio.sleep(0.005)
                cpu = common.proc_cpu(os.getpid()) - state["cpu0"]
                pipe.send(("done", list(frames), state["other"], cpu))


class Client:
    """A WebSocket client of one route in its own OS process, stamping every change frame."""

    def __init__(self, url: str) -> None:
        ctx = mp.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_client_main, args=(url, child), daemon=True)
        self.proc.start()
        msg = _recv(self.pipe, 60, "the client to connect")
        if msg[0] != "ready":
            raise RuntimeError(f"client failed: {msg}")
        self.pid = int(msg[1])

    def reset(self) -> None:
        self.pipe.send(("reset",))
        msg = _recv(self.pipe, 30, "the client to reset")
        if msg[0] != "ok":
            raise RuntimeError(f"client failed: {msg}")

    def collect(self, expect: int, idle: float) -> dict[str, Any]:
        """Frames since the last reset, once ``expect`` came or none for ``idle`` s."""
        self.pipe.send(("collect", expect, idle))
        msg = _recv(self.pipe, 900, "the client's frames")
        if msg[0] != "done":
            raise RuntimeError(f"client failed: {msg}")
        return {"frames": msg[1], "other": msg[2], "cpu_s": msg[3]}

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.pipe.send(("stop",))
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def _recv(pipe: Any, timeout: float, what: str) -> Any:
    if not pipe.poll(timeout):
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
    return pipe.recv()


# --------------------------------------------------------------------------- writers


def _worker_main(
    dsn: str, redis_url: str, peers: str, nice: int, index: int, rows: list[int], pipe: Any
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["BENCH_PEERS"] = peers
    live.setup_django(dsn, "redis", redis_url)
    if nice:
        os.nice(nice)
    from django.db import connection
    from django.db.models import F
    from django.db.models.signals import post_delete, post_init, post_save

    from bench.site.benchapp.models import Tick

    receivers = sorted(
        f"{name}:{getattr(r, '__qualname__', type(r).__name__)}"
        for name, sig in (("post_init", post_init), ("post_save", post_save))
        for r in sig._live_receivers(Tick)[0]
    ) + sorted(
        f"post_delete:{getattr(r, '__qualname__', type(r).__name__)}"
        for r in post_delete._live_receivers(Tick)[0]
    )
    ticks = list(Tick.objects.filter(id__in=rows).order_by("id"))
    stamp = [0]

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        stamp[0] = time.monotonic_ns()
        return result

    pipe.send(("ready", os.getpid(), receivers))
    seq = 0  # values never repeat: a save that changes nothing is no change to capture
    while True:
        cmd = pipe.recv()
        if cmd[0] == "stop":
            return
        if cmd[0] == "saves":  # closed loop from start_at for seconds; or ``count`` saves
            _, start_at, seconds, count = cmd
            values: list[int] = []
            stamps: list[int] = []
            base = (index + 1) * VALUE_STRIDE
            while time.monotonic() < start_at:
                time.sleep(0.001)
            end = start_at + seconds
            r0 = _self_cpu()
            with connection.execute_wrapper(wrapper):
                i = 0
                while (count and i < count) or (not count and time.monotonic() < end):
                    tick = ticks[i % len(ticks)]
                    tick.value = base + seq
                    tick.save()
                    values.append(tick.value)
                    stamps.append(stamp[0])
                    i += 1
                    seq += 1
            pipe.send(("done", values, stamps, _self_cpu() - r0))
        elif cmd[0] == "op":
            _, op, ids, n = cmd
            with connection.execute_wrapper(wrapper):
                if op == "save":
                    objs = list(Tick.objects.filter(id__in=ids))
                    for obj in objs:
                        obj.value += 1
                        obj.save()
                    changed = len(objs)
                elif op == "qs_update":
                    changed = Tick.objects.filter(id__in=ids).update(value=F("value") + 1)
                elif op == "bulk_create":
                    made = Tick.objects.bulk_create(
                        [Tick(value=i, note="bulk") for i in range(n)], batch_size=n
                    )
                    changed = len(made)
                elif op == "raw_cursor":
                    with connection.cursor() as cur:
                        cur.execute(
                            "UPDATE benchapp_tick SET value = value + 1 WHERE id = ANY(%s)", [ids]
                        )
                        changed = cur.rowcount
                else:
                    raise ValueError(op)
            pipe.send(("done", changed, stamp[0]))


def _self_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Writers:
    """``n`` writer processes of one system, spawned together."""

    def __init__(self, n: int, dsn: str, redis_url: str, system: str, nice: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        for w in range(n):
            rows = list(range(w * ROWS_PER_WRITER + 1, (w + 1) * ROWS_PER_WRITER + 1))
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                args=(dsn, redis_url, PEERS_ENV[system], nice, w, rows, child),
                daemon=True,
            )
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        self.receivers: list[str] = []
        for pipe in self.pipes:
            msg = _recv(pipe, 120, "a writer to start")
            self.receivers = msg[2]

    def saves(self, n: int, seconds: float, count: int = 0) -> list[tuple[Any, ...]]:
        start_at = time.monotonic() + 0.2
        for pipe in self.pipes[:n]:
            pipe.send(("saves", start_at, seconds, count))
        out = [_recv(pipe, seconds + 300, "a writer's saves") for pipe in self.pipes[:n]]
        return [(start_at, *m[1:]) for m in out]

    def op(self, op: str, ids: list[int], n: int) -> tuple[int, int]:
        self.pipes[0].send(("op", op, ids, n))
        msg = _recv(self.pipes[0], 300, f"the writer's {op}")
        return int(msg[1]), int(msg[2])

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send(("stop",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


# --------------------------------------------------------------------------- measurements


def load_table(dsn: str, writers: int, rows: int) -> None:
    """The writers' rows (16 each) and the share rows, written with triggers off."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("TRUNCATE benchapp_tick")
        conn.execute(
            "INSERT INTO benchapp_tick (id, value, note) SELECT i, 0, 'tick ' || i"
            " FROM generate_series(1, %s) i",
            [writers * ROWS_PER_WRITER],
        )
        conn.execute(
            "INSERT INTO benchapp_tick (id, value, note) SELECT i, 0, 'share ' || i"
            " FROM generate_series(%s, %s) i",
            [SHARE_BASE + 1, SHARE_BASE + rows],
        )
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('benchapp_tick', 'id'), %s)",
            [SHARE_BASE * 10],
        )
        conn.execute("VACUUM ANALYZE benchapp_tick")


def redis_connections(url: str) -> int:
    """Connections the Redis server has accepted so far (INFO stats)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_connections_received"])
    finally:
        client.close()


def set_trigger(conn: psycopg.Connection[Any], on: bool) -> None:
    conn.execute(f"ALTER TABLE benchapp_tick {'ENABLE' if on else 'DISABLE'} TRIGGER USER")
    conn.execute("TRUNCATE pgbinding_change")  # the listener's saved position stays valid


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure_saves(
    system: str,
    clients: int,
    writers: Writers,
    client: Client,
    others: dict[str, int],
    postmaster: int | None,
    redis_url: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    client.reset()
    waited, quiet = common.wait_quiet(0.4, 10)
    meter = common.CpuMeter(postmaster, others)
    conns0 = redis_connections(redis_url)
    meter.start()
    got = writers.saves(clients, args.seconds)
    start_at = got[0][0]
    commits: dict[int, int] = {}
    writer_cpu = 0.0
    last_commit = 0
    for _, values, stamps, cpu in got:
        commits.update(zip(values, stamps, strict=True))
        writer_cpu += cpu
        last_commit = max(last_commit, max(stamps, default=0))
    total = len(commits)
    expect = 0 if system == "baseline" else total
    res = client.collect(expect, 0.5 if system == "baseline" else args.wait)
    cpu = meter.stop()
    conns = redis_connections(redis_url) - conns0 - 1  # less our own INFO connection
    lat, seen, last_recv = [], set(), 0
    unknown = 0
    for value, _pk, _action, recv_ns in res["frames"]:
        sent = commits.get(value)
        if sent is None or value in seen:
            unknown += 1
            continue
        seen.add(value)
        lat.append((recv_ns - sent) / 1e6)
        last_recv = max(last_recv, recv_ns)
    start_ns = int(start_at * 1e9)  # time.monotonic() and monotonic_ns share CLOCK_MONOTONIC
    write_s = (last_commit - start_ns) / 1e9 if total else float("nan")
    deliver_s = (last_recv - start_ns) / 1e9 if seen else float("nan")
    wall = cpu["wall"]
    cores = {k: cpu[k] for k in others}
    cores["writers"] = writer_cpu / wall
    cores["postgres"] = cpu["postgres"]
    cores["machine"] = cpu["busy"] * common.NCPU
    # Whatever else ran on the machine meanwhile (other people's work, kernel threads).
    cores["outside"] = cores["machine"] - sum(v for k, v in cores.items() if k != "machine")
    return {
        "kind": "saves",
        "system": system,
        "clients": clients,
        "writes": total,
        "write_s": write_s,
        "writes_per_s": total / write_s if total else float("nan"),
        "delivered": len(seen),
        "extra_frames": unknown,
        "other_frames": res["other"],
        "share": len(seen) / total if total and system != "baseline" else float("nan"),
        "delivered_per_s": len(seen) / deliver_s if seen else float("nan"),
        "p50_ms": pct(lat, 0.5),
        "p99_ms": pct(lat, 0.99),
        "max_ms": max(lat, default=float("nan")),
        "writer_cpu_ms": writer_cpu * 1000 / total if total else float("nan"),
        "redis_connections": conns,
        "cores": cores,
        "wall": wall,
        "quiet_wait_s": waited,
        "busy_before": quiet,
    }


def measure_share(
    system: str, op: str, writers: Writers, client: Client, dsn: str, args: argparse.Namespace
) -> dict[str, Any]:
    n = args.rows
    ids = list(range(SHARE_BASE + 1, SHARE_BASE + n + 1))
    client.reset()
    if op == "raw_psycopg":
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(
                "UPDATE benchapp_tick SET value = value + 1 WHERE id = ANY(%s)", [ids]
            )
            changed, commit_ns = cur.rowcount, time.monotonic_ns()
    else:
        changed, commit_ns = writers.op(op, ids, n)
    res = client.collect(changed, args.wait)
    pks = {str(pk) for _v, pk, _a, _t in res["frames"]}
    last = max((t for *_, t in res["frames"]), default=None)
    if op == "bulk_create":
        with psycopg.connect(dsn, autocommit=True) as conn:  # tidy up, uncaptured
            conn.execute("SET session_replication_role = replica")
            conn.execute("DELETE FROM benchapp_tick WHERE note = 'bulk'")
    return {
        "kind": "share",
        "system": system,
        "op": op,
        "rows": changed,
        "frames": len(res["frames"]),
        "distinct": len(pks),
        "share": len(pks) / changed if changed else float("nan"),
        "last_s": (last - commit_ns) / 1e9 if last is not None else float("nan"),
    }


def run_system(
    system: str,
    run: int,
    st: live.Stack,
    dsn: str,
    redis_url: str,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        set_trigger(conn, system == "pgbinding")
        postmaster = common.postmaster_pid(conn)
    writers = Writers(max(args.client_list), dsn, redis_url, system, args.nice)
    client = Client(st.url + ROUTE[system])
    try:
        expected_hooks = {
            "baseline": set(),
            "pgbinding": set(),
            "signal": {"post_save:_saved"},
            "dcrf": {"post_init:ModelObserver.post_init_receiver"},
        }[system]
        hooks = set(writers.receivers)
        if not expected_hooks <= hooks or (not expected_hooks and hooks):
            raise RuntimeError(f"{system}: writers have receivers {sorted(hooks)}")
        # Warm-up, and a check that the path delivers: dcrf subscribes after accepting.
        for attempt in range(10):
            client.reset()
            writers.saves(1, 0, count=5)
            got = client.collect(0 if system == "baseline" else 5, 1.0)
            if system == "baseline" or len(got["frames"]) >= 5:
                break
            if attempt == 9:
                raise RuntimeError(f"{system}: warm-up writes were not delivered: {got}")
        if system == "baseline" and got["frames"]:
            raise RuntimeError(f"baseline delivered frames: {got['frames'][:3]}")
        others = {"server_py": st.server.pid, "client_py": client.pid}
        if st.listener is not None:
            others["listener_py"] = st.listener.pid
        rpid = common.redis_pid(redis_url)
        if rpid:
            others["redis"] = rpid
        for clients in args.client_list:
            r = measure_saves(system, clients, writers, client, others, postmaster, redis_url, args)
            r.update(run=run, receivers=writers.receivers)
            out.append(r)
            print(
                f"   run {run + 1} {LABEL[system]:20} {clients} writer(s): "
                f"{r['writes_per_s']:6.0f} writes/s, delivered {r['delivered']}/{r['writes']}"
                f" ({_f(r['delivered_per_s'])}/s), p50 {_f(r['p50_ms'], '.1f')} ms p99 "
                f"{_f(r['p99_ms'], '.1f')} ms; cores: writers {r['cores']['writers']:.2f}, "
                f"machine {r['cores']['machine']:.2f}",
                flush=True,
            )
        if system != "baseline":
            for op in OPS:
                r = measure_share(system, op, writers, client, dsn, args)
                r["run"] = run
                out.append(r)
                print(
                    f"   run {run + 1} {LABEL[system]:20} {op:12}: {r['distinct']}/{r['rows']}"
                    f" rows delivered ({100 * r['share']:.0f}%)",
                    flush=True,
                )
    finally:
        client.close()
        writers.close()
    return out


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    import djangochannelsrestframework  # noqa: F401 - fail early without the peer installed

    with common.server(args.dsn) as dsn, live.redis() as redis_url:
        with psycopg.connect(dsn, autocommit=True) as conn:
            machine = common.announce_server(conn)
        live.migrate(dsn)
        load_table(dsn, max(args.client_list), args.rows)
        print(
            f"== {args.runs} run(s); saves {args.seconds:g} s at "
            f"{','.join(map(str, args.client_list))} writer(s), "
            f"nice {args.nice}; share operations over {args.rows} rows",
            flush=True,
        )
        for run in range(args.runs):
            k = run % len(args.system_list)
            order = args.system_list[k:] + args.system_list[:k]
            with live.stack(dsn, "redis", tmp / f"run{run}", redis_url) as st:
                for system in order:
                    results += run_system(system, run, st, dsn, redis_url, args)
        with psycopg.connect(dsn, autocommit=True) as conn:
            set_trigger(conn, True)
    params = {
        "runs": args.runs,
        "seconds": args.seconds,
        "clients": args.client_list,
        "rows": args.rows,
        "wait": args.wait,
        "nice": args.nice,
        "systems": args.system_list,
        "rows_per_writer": ROWS_PER_WRITER,
        "layer": "redis",
        "versions": versions(),
    }
    module.finish(args, params, machine, results, report_text)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("django", "channels", "channels-redis", "djangochannelsrestframework"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


# --------------------------------------------------------------------------- report


def _f(x: float, spec: str = ".0f") -> str:
    return common.fmt(x, spec)


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def _med(values: list[float]) -> float:
    vals = [v for v in values if v == v]
    return common.median(vals) if vals else float("nan")


CORES = (
    "writers",
    "server_py",
    "listener_py",
    "redis",
    "postgres",
    "client_py",
    "outside",
    "machine",
)
CORE_LABEL = {
    "writers": "writers",
    "server_py": "daphne",
    "listener_py": "pglisten",
    "redis": "Redis",
    "postgres": "Postgres",
    "client_py": "client",
    "outside": "outside",
    "machine": "machine",
}


def summary(data: dict[str, Any]) -> dict[str, Any]:
    res = data["results"]
    p = data["params"]
    saves = [r for r in res if r["kind"] == "saves"]

    def one(system: str, clients: int, run: int) -> dict[str, Any] | None:
        for r in saves:
            if (r["system"], r["clients"], r["run"]) == (system, clients, run):
                return r
        return None

    rows = []
    for clients in p["clients"]:
        for system in p["systems"]:
            rs = [r for r in saves if r["system"] == system and r["clients"] == clients]
            if not rs:
                continue
            ratio_w, ratio_p50, ratio_p99 = [], [], []
            for r in rs:
                base = one("baseline", clients, r["run"])
                pgb = one("pgbinding", clients, r["run"])
                if base:
                    ratio_w.append(r["writes_per_s"] / base["writes_per_s"])
                if pgb:
                    ratio_p50.append(r["p50_ms"] / pgb["p50_ms"])
                    ratio_p99.append(r["p99_ms"] / pgb["p99_ms"])
            rows.append(
                {
                    "system": system,
                    "clients": clients,
                    "writes_per_s": _med([r["writes_per_s"] for r in rs]),
                    "runs_writes": [r["writes_per_s"] for r in rs],
                    "vs_baseline": _med(ratio_w),
                    "delivered_per_s": _med([r["delivered_per_s"] for r in rs]),
                    "share": _med([r["share"] for r in rs]),
                    "delivered": [f"{r['delivered']}/{r['writes']}" for r in rs],
                    "p50_ms": _med([r["p50_ms"] for r in rs]),
                    "p99_ms": _med([r["p99_ms"] for r in rs]),
                    "p50_vs_pgbinding": _med(ratio_p50),
                    "p99_vs_pgbinding": _med(ratio_p99),
                    "writer_cpu_ms": _med([r["writer_cpu_ms"] for r in rs]),
                    "redis_per_1000": _med(
                        [1000 * r["redis_connections"] / r["writes"] for r in rs if r["writes"]]
                    ),
                    "cores": {
                        k: _med([r["cores"].get(k, float("nan")) for r in rs]) for k in CORES
                    },
                }
            )
    share = []
    for op in OPS:
        row: dict[str, Any] = {"op": op}
        for system in p["systems"]:
            rs = [r for r in res if r["kind"] == "share" and r["system"] == system]
            rs = [r for r in rs if r["op"] == op]
            if rs:
                row[system] = {
                    "share": _med([r["share"] for r in rs]),
                    "min": min(r["share"] for r in rs),
                    "counts": [f"{r['distinct']}/{r['rows']}" for r in rs],
                    "last_s": _med([r["last_s"] for r in rs]),
                }
        share.append(row)
    return {"saves": rows, "share": share}


def report_text(data: dict[str, Any]) -> str:
    s = summary(data)
    p = data["params"]
    out = [
        f"== ORM saves, {p['seconds']:g} s each, median of {p['runs']} run(s); writers at nice "
        f"{p['nice']}",
    ]
    hdr = (
        f"{'system':20} {'wr':>2} {'writes/s':>8} {'÷base':>6} {'deliv/s':>7} {'share':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'p50÷pgb':>7} {'wr ms':>5} {'redis':>5}  cores: "
        + " ".join(f"{CORE_LABEL[k][:7]:>7}" for k in CORES)
    )
    out += [hdr, "-" * len(hdr)]
    for r in s["saves"]:
        out.append(
            f"{LABEL[r['system']]:20} {r['clients']:>2} {_f(r['writes_per_s']):>8} "
            f"{_f(r['vs_baseline'], '.2f'):>6} {_f(r['delivered_per_s']):>7} "
            f"{_pct(r['share']):>6} {_f(r['p50_ms'], '.2f'):>7} "
            f"{_f(r['p99_ms'], '.2f'):>7} {_f(r['p50_vs_pgbinding'], '.2f'):>7} "
            f"{_f(r['writer_cpu_ms'], '.2f'):>5} {_f(r['redis_per_1000']):>5}         "
            + " ".join(f"{_f(r['cores'][k], '.2f'):>7}" for k in CORES)
        )
    systems = [x for x in p["systems"] if x != "baseline"]
    out += ["", f"== share of changes delivered ({p['rows']} rows per operation)"]
    hdr = f"{'operation':42} " + " ".join(f"{LABEL[x]:>20}" for x in systems)
    out += [hdr, "-" * len(hdr)]
    for row in s["share"]:
        cells = []
        for x in systems:
            c = row.get(x)
            cells.append(f"{'-' if c is None else _f(100 * c['share'], '.0f') + '%':>20}")
        out.append(f"{OP_LABEL[row['op']]:42} " + " ".join(cells))
    out.append(
        "  ÷base = writes/s ÷ no live updates (same run); deliv/s = changes matched at the client"
        " over first write → last frame;\n  p50/p99 = commit (UPDATE returned to the writer) →"
        " frame at the client; p50÷pgb = ÷ pgbinding's (same run);\n  wr ms = writers' CPU ms"
        " per save; redis = Redis connections opened per 1000 saves;\n  cores = CPU of each "
        "process over the measurement (outside = the rest of the machine's busy time: other work"
        f";\n  machine = all CPUs busy, of {common.NCPU})."
    )
    return "\n".join(out)


def targets(data: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(what, target, measured, met) for the summary table of docs/benchmarks.md."""
    s = summary(data)
    cells = [
        (row["op"], row["pgbinding"]) for row in s["share"] if row.get("pgbinding") is not None
    ]
    if not cells:
        return []
    worst = min(c["min"] for _op, c in cells)
    return [
        (
            "changes delivered by pgbinding: save, QuerySet.update, bulk_create, raw SQL",
            "100%",
            f"{100 * worst:.1f}% (lowest of {len(cells)} operations x runs)",
            worst >= 1.0,
        )
    ]


def markdown(data: dict[str, Any]) -> str:
    s = summary(data)
    p = data["params"]
    v = p.get("versions", {})
    lines = [
        "pgbinding against the two usual signal-based ways of pushing model changes to Channels "
        "clients: a hand-written `post_save` receiver calling `async_to_sync(group_send)` from "
        "`transaction.on_commit`, and djangochannelsrestframework's `@model_observer` "
        f"(dcrf {v.get('djangochannelsrestframework', '?')}, installed in the benchmark's "
        "environment only). Same model (`benchapp.Tick`), same daphne, same channels_redis core "
        "layer on a private Redis (the peers send from the writing process, so the layer must "
        "cross processes), one WebSocket client per system. Each system is measured with the "
        "others switched off (pgbinding's triggers disabled, the writers connect only the "
        "measured peer's receivers); the order rotates from run to run; "
        f"medians of {p['runs']} run(s), ratios taken within each run.",
        "",
        f"**ORM saves.** {' and '.join(str(c) for c in p['clients'])} writer processes run "
        f"closed loops of `tick.value = n; tick.save()` (autocommit, own rows) for "
        f"{p['seconds']:g} s. Latency is from the moment the UPDATE (the commit, in autocommit) "
        "returned to the writer, before any peer's `post_save` work, to the frame's arrival at "
        "the client (both `CLOCK_MONOTONIC`). writes/s is given ÷ the no-live-updates baseline, "
        "latency ÷ pgbinding's.",
        "",
        "| system | writers | writes/s | ÷ no live updates | delivered/s | delivered | "
        "latency p50 ms | p99 ms | p50 ÷ pgbinding | p99 ÷ pgbinding | writer CPU ms per save "
        "| Redis connections per 1,000 saves |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["saves"]:
        lines.append(
            f"| {LABEL[r['system']]} | {r['clients']} | {_f(r['writes_per_s'])} | "
            f"{_f(r['vs_baseline'], '.2f')} | {_f(r['delivered_per_s'])} | "
            f"{_pct(r['share'])} | {_f(r['p50_ms'], '.2f')} | "
            f"{_f(r['p99_ms'], '.2f')} | {_f(r['p50_vs_pgbinding'], '.2f')} | "
            f"{_f(r['p99_vs_pgbinding'], '.2f')} | {_f(r['writer_cpu_ms'], '.2f')} | "
            f"{_f(r['redis_per_1000'])} |"
        )
    systems = [x for x in p["systems"] if x != "baseline"]
    lines += [
        "",
        f"**Share of changes delivered** ({p['rows']:,} rows per operation; the client waits "
        f"until it has them all or none came for {p['wait']:g} s; distinct rows received ÷ rows "
        "written; lowest run in brackets when runs differ):",
        "",
        "| operation | " + " | ".join(LABEL[x] for x in systems) + " |",
        "|---|" + "---:|" * len(systems),
    ]
    for row in s["share"]:
        cells = []
        for x in systems:
            c = row.get(x)
            if c is None:
                cells.append("-")
                continue
            cell = f"{_f(100 * c['share'], '.0f')}%"
            if c["min"] != c["share"]:
                cell += f" ({_f(100 * c['min'], '.0f')}%)"
            cells.append(cell)
        lines.append(f"| {OP_LABEL[row['op']].replace('|', '/')} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Keeping the load generators apart.** Writers (one process each, Django + psycopg) "
        "and the client (asyncio `websockets`) are separate OS processes from daphne, pglisten "
        f"and Redis. The writers run at nice {p['nice']}, so on the 2 cores the delivery side "
        "and the measuring client are served first when the machine is saturated, and the "
        "writers' throughput takes the loss. The peers build and send their messages inside "
        "the writers, so that part of their path runs niced too, while pgbinding's runs in "
        "pglisten at normal priority. CPU of every process, in cores (CPU seconds ÷ the "
        "measurement's wall time):",
        "",
        "| system | writer processes | "
        + " | ".join(f"{CORE_LABEL[k]} (cores)" for k in CORES)
        + " |",
        "|---|---:|" + "---:|" * len(CORES),
    ]
    for r in s["saves"]:
        lines.append(
            f"| {LABEL[r['system']]} | {r['clients']} | "
            + " | ".join(_f(r["cores"][k], ".2f") for k in CORES)
            + " |"
        )
    lines += [
        "",
        "Postgres includes the writers' backends and the trigger's work; pglisten is idle (asleep)"
        " while a peer or the baseline is measured; the client's column is the load it puts on "
        "the machine to stamp every frame; outside = the machine's busy time not accounted for "
        "by these processes (other work on the shared machine, kernel threads). The peers' "
        "writer CPU per save includes building and sending their messages: each "
        "`async_to_sync(group_send)` from a synchronous thread runs on a new event loop, so "
        "channels_redis opens a new Redis connection for it (the Redis column of the first "
        "table counts them).",
    ]
    return "\n".join(lines)


def plots(data: dict[str, Any], outdir: Path) -> list[Path]:
    plt = module.pyplot()

    s = summary(data)
    p = data["params"]
    if not s["saves"]:
        return []
    paths = []
    clients = p["clients"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(1, len(p["systems"]))
    for i, system in enumerate(p["systems"]):
        rows = {r["clients"]: r for r in s["saves"] if r["system"] == system}
        xs = [c + (i - (len(p["systems"]) - 1) / 2) * width for c in range(len(clients))]
        axes[0].bar(
            xs,
            [rows[c]["writes_per_s"] if c in rows else 0 for c in clients],
            width,
            label=LABEL[system],
            color=f"C{i}",
        )
        axes[0].scatter(
            xs,
            [rows[c]["delivered_per_s"] if c in rows else float("nan") for c in clients],
            marker="_",
            s=300,
            color="black",
            zorder=3,
        )
        if system != "baseline":
            axes[1].bar(
                xs,
                [rows[c]["p50_ms"] if c in rows else 0 for c in clients],
                width,
                color=f"C{i}",
                label=LABEL[system],
            )
            axes[1].scatter(
                xs,
                [rows[c]["p99_ms"] if c in rows else float("nan") for c in clients],
                marker="v",
                color=f"C{i}",
                edgecolor="black",
                zorder=3,
            )
    for ax in axes:
        ax.set_xticks(range(len(clients)), [f"{c} writer(s)" for c in clients])
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("writes/s (bars), delivered/s (—)")
    axes[0].set_title("ORM save() throughput")
    axes[0].legend(fontsize=7)
    axes[1].set_ylabel("ms, commit → frame at client")
    axes[1].set_yscale("log")
    axes[1].set_title("latency p50 (bars), p99 (▼)")
    path = module.save(fig, outdir / "peers-saves.png")
    paths.append(path)

    systems = [x for x in p["systems"] if x != "baseline"]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        xs = [k + (i - (len(systems) - 1) / 2) * width for k in range(len(OPS))]
        vals = [
            100 * row[system]["share"] if row.get(system) else float("nan") for row in s["share"]
        ]
        ax.bar(xs, vals, width, label=LABEL[system], color=f"C{p['systems'].index(system)}")
        for x, v in zip(xs, vals, strict=True):
            ax.text(x, (v if v == v else 0) + 1, _f(v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(OPS)), [OP_SHORT[o] for o in OPS], fontsize=8)
    ax.set_ylabel("% of changed rows delivered")
    ax.set_ylim(0, 115)
    ax.set_title(f"Share of changes delivered ({p['rows']} rows per operation)")
    ax.legend(fontsize=7, loc="upper center", ncols=len(systems))
    ax.grid(axis="y", alpha=0.3)
    path = module.save(fig, outdir / "peers-share.png")
    paths.append(path)
    return paths


if __name__ == "__main__":
    main()
