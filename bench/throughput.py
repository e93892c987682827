"""Capture throughput: how many changes a second the listener turns into group sends that reach
a subscribed WebSocket client, against the raw NOTIFY receive rate on the same machine.

    python -m bench.throughput [--backlog 100000] [--runs 3] [--layers memory,redis]
    python -m bench.throughput --quick          # 20,000 changes, 1 run: a smoke check

**pgbinding (backlog drain).** The bench site (bench/site) runs under daphne (bench/live.py);
``benchapp_tick`` holds ``--rows`` rows (5,000: at most what one ``subscribe`` may snapshot).
For each layer, mode and run, on a fresh stack:

1. The driver holds the listener name's lease (``pgbinding.delivery.lease.hold``), so the
   listener (``pglisten`` for ``redis``; inside daphne for ``memory``, started by the first
   WebSocket connection) comes up *standing by*. Its Postgres backend is found in
   ``pg_stat_activity`` by its standby query (and checked afterwards: it then holds the lease).
2. A WebSocket client (its own OS process, asyncio ``websockets``, no compression) connects to
   ``/pgbinding/`` and so joins group ``ticks``. Mode ``group``: that is all, one frame per
   change. Mode ``subscribe``: the same socket also ``subscribe``s to the stream with no filter,
   so each change also goes through the change group and the consumer's filter evaluation: two
   frames per change.
3. The backlog: ``backlog / rows`` statements ``UPDATE benchapp_tick SET value = value + 1``,
   each its own transaction (a few big transactions), written while the listener stands by.
4. The driver releases the lease; the listener takes over within ``STANDBY_RETRY`` (1 s) and
   drains the log in batches of ``BATCH_SIZE`` (500). The client counts frames; the driver polls
   ``pgbinding_listener.position``.

Reported: changes/s at the client (backlog / time from its first to its last frame) and at the
listener (backlog / time from the first frame until the listener's saved position reached the
end of the log; the position is saved every ``SAVE_INTERVAL`` and when idle, so this overstates
the time by up to ~0.1 s), and CPU per 1,000 changes of: the listener (its Python process plus
its Postgres backend; with ``memory`` the Python process is daphne, so it includes the consumer
and the socket writes), daphne (``redis`` only: the consumer side), Redis, all of Postgres, the
client, and the whole machine.

**NOTIFY baseline (same run).** A receiver in its own process (psycopg async, as the listener
uses) LISTENs, then holds a transaction open so its backend queues notifications instead of
sending them. The driver sends the backlog as ``pg_notify`` calls with payloads the size of a
log row (``jsonb_build_object('table', .., 'op', 'U', 'pk', id, 'old', to_jsonb(t), 'new',
to_jsonb(t))`` of the same table), ``rows`` per transaction, the same shape as the backlog.
Then the receiver commits and drains them, parsing each payload as JSON. Reported: receive
rate (first to last notification) and its CPU (Python + backend) per 1,000. The ratio
pgbinding changes/s / NOTIFY receive rate is given per layer and mode.

**Capture backends** (``--captures``, default ``trigger,logical``). Each drain is done with the
trigger backend and with the logical backend (``PGBINDING["CAPTURE"] = "logical"``: the bound
tables switched with the SQL the migration operations pin, as bench/logical_capture.py does,
for that drain only). With the logical backend nothing reaches the log while the listener
stands by: the backlog waits in the replication slot, and the leading listener's pump decodes
it and writes the log while it drains, so its rate is the slot -> log -> client path. With
``logical`` in the run the private server runs with ``wal_level = logical`` for both backends.

Each figure is the median over ``--runs``; before each drain the driver waits (up to 10 s)
for the machine to be quiet and the log is emptied (TRUNCATE) and vacuumed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from . import common, live, logical_capture, module, slot

LISTENER_NAME = "bench"
CAPTURES = ("trigger", "logical")
NOTIFY_CHANNEL = "bench_throughput"
MODES = ("group", "subscribe")
#: The baseline's payload: the same jsonb as a log row of this table (the row as old and new).
NOTIFY_SQL = """
SELECT count(pg_notify('bench_throughput', jsonb_build_object(
    'table', 'benchapp_tick', 'op', 'U', 'pk', t.id, 'old', to_jsonb(t), 'new', to_jsonb(t)
)::text)) FROM benchapp_tick t
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = module.Parser("throughput", __doc__, quick="20,000 changes, 1 run")
    p.add_argument(
        "--backlog", type=int, default=100_000, help="changes per drain (100000; --quick 20000)"
    )
    p.set_quick_defaults(backlog=20_000)
    p.add_argument("--rows", type=int, default=5000, help="rows of benchapp_tick (5000)")
    p.add_list(
        "--layers",
        "layer_list",
        "memory,redis",
        "channel layers (memory,redis)",
        choices=live.LAYERS,
    )
    p.add_list("--modes", "mode_list", ",".join(MODES), "group,subscribe (both)", choices=MODES)
    p.add_list(
        "--captures",
        "capture_list",
        ",".join(CAPTURES),
        "capture backends (trigger,logical; logical needs wal_level = logical)",
        choices=CAPTURES,
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="record a py-spy profile (collapsed stacks) of the listener's process during the "
        "first run's drains into this directory and print its top frames (needs py-spy and "
        "ptrace rights)",
    )
    args = p.parse(argv)
    args.backlog = max(args.rows, args.backlog // args.rows * args.rows)
    if args.rows > 5000 and "subscribe" in args.mode_list:
        p.error("--rows over 5000: a subscribe snapshot holds at most 5000 rows")
    return args


# --------------------------------------------------------------------------- WebSocket client


def _client_main(url: str, pipe: Any, subscribe: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_client(url, pipe, subscribe))


async def _client(url: str, pipe: Any, subscribe: bool) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, max_size=None) as ws:
        if subscribe:
            request = {"action": "subscribe", "request_id": "s1"}
            await ws.send(json.dumps({"stream": "ticks", "payload": request}))
            while True:
                payload = json.loads(await ws.recv()).get("payload") or {}
                if payload.get("action") == "subscribe" and payload.get("request_id") == "s1":
                    if payload.get("status") != 200:
                        pipe.send(("error", json.dumps(payload)[:500]))
                        return
                    break
        pipe.send(("ready", os.getpid()))
        while True:
            cmd = await asyncio.to_thread(pipe.recv)
            if cmd[0] == "stop":
                return
            _, expect, idle = cmd
            pipe.send(("armed",))
            pipe.send(("done", await _count(ws, expect, idle)))


async def _count(ws: Any, expect: int, idle: float) -> dict[str, Any]:
    """Receive until ``expect`` change frames came, or none for ``idle`` seconds."""
    state: dict[str, Any] = {
        "frames": 0,
        "subscription": 0,
        "other": 0,
        "first": None,
        "last": None,
        "seen": time.monotonic(),
    }
    cpu0 = common.proc_cpu(os.getpid())

    async def receive() -> None:
        async for raw in ws:
            now = state["seen"] = time.monotonic()
            payload = json.loads(raw).get("payload") or {}
            if payload.get("action") in ("create", "update", "delete") and "status" not in payload:
                state["frames"] += 1
                if "subscription" in payload:
                    state["subscription"] += 1
                if state["first"] is None:
                    state["first"] = now
                state["last"] = now
                if state["frames"] >= expect:
                    return
            else:
                state["other"] += 1

    task = asyncio.create_task(receive())
    while not task.done():
        await asyncio.wait([task], timeout=0.25)
        if not task.done() and time.monotonic() - state["seen"] > idle:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    state["cpu"] = common.proc_cpu(os.getpid()) - cpu0
    del state["seen"]
    return state


class Client:
    """A WebSocket client of the bench site in its own OS process (spawn), counting frames."""

    def __init__(self, url: str, subscribe: bool = False) -> None:
        ctx = mp.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_client_main, args=(url, child, subscribe), daemon=True)
        self.proc.start()
        msg = self._recv(60, "the client to connect")
        if msg[0] != "ready":
            raise RuntimeError(f"client failed: {msg}")
        self.pid = int(msg[1])

    def _recv(self, timeout: float, what: str) -> Any:
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        return self.pipe.recv()

    def arm(self, expect: int, idle: float = 20.0) -> None:
        """Start counting: from now until ``expect`` frames came or none for ``idle`` s."""
        self.pipe.send(("expect", expect, idle))
        self._recv(30, "the client to arm")

    def result(self, timeout: float) -> dict[str, Any]:
        msg = self._recv(timeout, "the client's count")
        return dict(msg[1])

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.pipe.send(("stop",))
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


# --------------------------------------------------------------------------- NOTIFY receiver


def _receiver_main(dsn: str, pipe: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_receiver(dsn, pipe))


async def _receiver(dsn: str, pipe: Any) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        cur = await conn.execute("SELECT pg_backend_pid()")
        row = await cur.fetchone()
        # Hold a transaction open: a backend in a transaction queues notifications and sends
        # them only when it is idle again, so the whole backlog waits in Postgres's queue.
        await conn.set_autocommit(False)
        await conn.execute("SELECT 1")
        pipe.send(("ready", os.getpid(), int(row[0]) if row else 0))
        cmd = await asyncio.to_thread(pipe.recv)
        expect, idle = int(cmd[1]), float(cmd[2])
        count, first, last = 0, None, None
        t0 = time.monotonic()
        await conn.commit()
        await conn.set_autocommit(True)
        while count < expect:
            got = 0
            async for notify in conn.notifies(timeout=idle):
                json.loads(notify.payload)
                got += 1
                now = time.monotonic()
                if first is None:
                    first = now
                last = now
                if count + got >= expect:
                    break
            count += got
            if not got:
                break
        pipe.send(("done", {"frames": count, "start": t0, "first": first, "last": last}))


def notify_baseline(dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    pipe, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver_main, args=(dsn, child), daemon=True)
    proc.start()
    try:
        if not pipe.poll(60):
            raise TimeoutError("NOTIFY receiver did not start")
        _, py_pid, pg_pid = pipe.recv()
        with psycopg.connect(dsn, autocommit=True) as sender:
            sender_pid = sender.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            cpu_s0 = common.proc_cpu(sender_pid)
            t0 = time.monotonic()
            sent = 0
            while sent < args.backlog:
                with sender.transaction():
                    row = sender.execute(NOTIFY_SQL).fetchone()
                sent += int(row[0]) if row else 0
            send_s = time.monotonic() - t0
            sender_cpu = common.proc_cpu(sender_pid) - cpu_s0
            usage = sender.execute("SELECT pg_notification_queue_usage()").fetchone()[0]  # type: ignore[index]
        common.wait_quiet(0.4, 10)
        meter = common.CpuMeter(None, {"py": py_pid, "pg": pg_pid})
        meter.start()
        pipe.send(("go", sent, 20.0))
        if not pipe.poll(600):
            raise TimeoutError("NOTIFY receiver did not finish")
        res = pipe.recv()[1]
        cpu = meter.stop()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    span = (res["last"] - res["first"]) if res["first"] is not None else float("nan")
    out = {
        "kind": "notify",
        "sent": sent,
        "received": res["frames"],
        "send_s": send_s,
        "queue_usage": float(usage),
        "sender_backend_cpu_s": sender_cpu,
        "span_s": span,
        "start_to_last_s": res["last"] - res["start"] if res["last"] else float("nan"),
        # From the receiver's COMMIT (the queue is full and starts flowing) to the last one:
        # the first ones arrive with the COMMIT's reply, so first-to-last would miss most.
        "rate": res["frames"] / (res["last"] - res["start"]) if res["last"] else float("nan"),
        "cpu_s": {
            "receiver_py": cpu["py"] * cpu["wall"],
            "receiver_pg": cpu["pg"] * cpu["wall"],
        },
        "busy": cpu["busy"],
        "wall": cpu["wall"],
    }
    n = max(1, res["frames"])
    out["receiver_ms_per_1000"] = (
        (out["cpu_s"]["receiver_py"] + out["cpu_s"]["receiver_pg"]) / n * 1e6
    )
    return out


# --------------------------------------------------------------------------- pgbinding drain


def standby_backend(conn: psycopg.Connection[Any], timeout: float = 30) -> int:
    """The backend pid of the listener standing by: its last query is its claim on the lease."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND query LIKE '%%UPDATE pgbinding_listener AS l%%'"
        ).fetchall()
        if len(row) == 1:
            return int(row[0][0])
        if len(row) > 1:
            raise RuntimeError(f"more than one listener standing by: {row}")
        time.sleep(0.1)
    raise TimeoutError("no listener standing by")


def lock_holder(conn: psycopg.Connection[Any]) -> int | None:
    """The Postgres backend of the leading listener (it holds the lease)."""
    from pgbinding.delivery.lease import leader_pid

    return leader_pid(conn, LISTENER_NAME)


def load_table(dsn: str, rows: int) -> None:
    """``rows`` rows in benchapp_tick, written with triggers off (nothing captured)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("TRUNCATE benchapp_tick")
        conn.execute(
            "INSERT INTO benchapp_tick (id, value, note) SELECT i, 0, 'tick ' || i"
            " FROM generate_series(1, %s) i",
            [rows],
        )
        conn.execute("SELECT setval(pg_get_serial_sequence('benchapp_tick', 'id'), %s)", [rows])
        conn.execute("VACUUM ANALYZE benchapp_tick")


BENCH_HOLDER = "bench-throughput"


def release_lead(conn: psycopg.Connection[Any]) -> None:
    from pgbinding.delivery.lease import release

    release(conn, LISTENER_NAME, BENCH_HOLDER)


@contextlib.contextmanager
def paused_stack(
    dsn: str, layer: str, logdir: Path, redis_url: str | None, lock: psycopg.Connection[Any]
) -> Iterator[tuple[live.Stack, subprocess.Popen[bytes] | None]]:
    """A stack whose listener stands by: ``lock`` holds the listener name's lease
    (:func:`release_lead` lets the listener take it)."""
    from pgbinding.delivery.lease import hold

    with live.stack(dsn, layer, logdir, redis_url) as st:
        own = None
        if st.listener is not None:
            st.listener.terminate()  # a clean stop: position saved, lease released
            st.listener.wait(15)
        deadline = time.monotonic() + 30
        while not hold(lock, LISTENER_NAME, BENCH_HOLDER, 3600):
            if time.monotonic() > deadline:
                raise TimeoutError(f"listener {LISTENER_NAME!r} keeps its lead")
            time.sleep(0.1)
        try:
            if layer != "memory":
                own = subprocess.Popen(
                    [sys.executable, "-m", "django", "pglisten"],
                    cwd=live.ROOT,
                    env=live.site_env(dsn, layer, redis_url),
                    stdout=(logdir / "pglisten-standby.log").open("w"),
                    stderr=subprocess.STDOUT,
                )
            yield st, own
        finally:
            if own is not None:
                live.stop([own])
            release_lead(lock)


def drain(
    dsn: str,
    layer: str,
    mode: str,
    run: int,
    args: argparse.Namespace,
    redis_url: str | None,
    tmp: Path,
    capture: str = "trigger",
) -> dict[str, Any]:
    logdir = tmp / f"{capture}-{layer}-{mode}-{run}"
    expect = args.backlog * (2 if mode == "subscribe" else 1)
    with (
        psycopg.connect(dsn, autocommit=True) as lock,
        paused_stack(dsn, layer, logdir, redis_url, lock) as (st, own),
    ):
        client = Client(st.url + "/pgbinding/", subscribe=mode == "subscribe")
        try:
            backend = standby_backend(lock)
            py_pid = own.pid if own is not None else st.server.pid
            lock.execute("TRUNCATE pgbinding_change")
            lock.execute("VACUUM ANALYZE pgbinding_change")
            t0 = time.monotonic()
            for _ in range(args.backlog // args.rows):
                lock.execute("UPDATE benchapp_tick SET value = value + 1")
            write_s = time.monotonic() - t0
            if capture == "logical":
                # The backlog is in the slot: the pump writes it into the log once the listener
                # leads, with the next ids (nothing else writes the log, and it opens no gaps).
                row = lock.execute(
                    "SELECT count(*), coalesce(pg_sequence_last_value(pg_get_serial_sequence("
                    "'pgbinding_change', 'id')::regclass), 0) + %s FROM pgbinding_change",
                    [args.backlog],
                ).fetchone()
                assert row is not None
                if row[0] != 0:
                    raise RuntimeError(f"the log holds {row[0]} rows before the drain")
            else:
                row = lock.execute(
                    "SELECT count(*), max(id) FROM pgbinding_change WHERE id > coalesce("
                    "(SELECT position FROM pgbinding_listener WHERE name = %s), 0)",
                    [LISTENER_NAME],
                ).fetchone()
                assert row is not None
                if row[0] != args.backlog:
                    raise RuntimeError(f"backlog holds {row[0]} changes, not {args.backlog}")
            target = int(row[1])
            lock.execute("CHECKPOINT")
            common.wait_quiet(0.4, 10)
            others = {"listener_py": py_pid, "listener_pg": backend, "client_py": client.pid}
            if own is not None:
                others["server_py"] = st.server.pid
            rpid = common.redis_pid(redis_url) if redis_url and layer != "memory" else None
            if rpid:
                others["redis"] = rpid
            meter = common.CpuMeter(common.postmaster_pid(lock), others)
            client.arm(expect)
            profiler = None
            if args.profile and run == 0:
                args.profile.mkdir(parents=True, exist_ok=True)
                stacks = args.profile / f"throughput-{layer}-{mode}.txt"
                profiler = subprocess.Popen(
                    [
                        *(str(Path(sys.executable).parent / "py-spy"), "record", "-f", "raw"),
                        *("-o", str(stacks), "--pid", str(py_pid), "--nonblocking"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)
            meter.start()
            release_lead(lock)
            released = time.monotonic()
            done_at = None
            while time.monotonic() - released < 600:
                pos = lock.execute(
                    "SELECT position FROM pgbinding_listener WHERE name = %s", [LISTENER_NAME]
                ).fetchone()
                if pos and int(pos[0]) >= target:
                    done_at = time.monotonic()
                    break
                time.sleep(0.02)
            res = client.result(600)
            cpu = meter.stop()
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)
                print(profile_top(stacks), flush=True)
            holder = lock_holder(lock)
        finally:
            client.close()
    if holder != backend:
        raise RuntimeError(f"the lock holder is backend {holder}, not {backend} as found")
    first, last = res["first"], res["last"]
    span = last - first if first is not None else float("nan")
    wall = cpu["wall"]
    cpu_s = {k: cpu[k] * wall for k in others}
    cpu_s["postgres"] = cpu["postgres"] * wall
    cpu_s["machine"] = cpu["busy"] * common.NCPU * wall
    out = {
        "kind": "pgbinding",
        "capture": capture,
        "layer": layer,
        "mode": mode,
        "run": run,
        "backlog": args.backlog,
        "transactions": args.backlog // args.rows,
        "expected_frames": expect,
        "frames": res["frames"],
        "subscription_frames": res["subscription"],
        "other_frames": res["other"],
        "write_s": write_s,
        "span_s": span,
        "takeover_s": (first - released) if first is not None else float("nan"),
        "listener_s": (done_at - first) if done_at and first is not None else float("nan"),
        "rate": args.backlog / span if span and span > 0 else float("nan"),
        # The same from the lease's release: the takeover counted too (with the logical
        # backend, the pump's first decoding of the slot).
        "release_rate": args.backlog / (last - released) if last else float("nan"),
        "cpu_s": cpu_s,
        "busy": cpu["busy"],
        "wall": wall,
    }
    out["listener_rate"] = args.backlog / out["listener_s"] if out["listener_s"] > 0 else 0.0
    k = args.backlog / 1000
    out["ms_per_1000"] = {name: v * 1000 / k for name, v in cpu_s.items()}
    out["ms_per_1000"]["listener"] = out["ms_per_1000"]["listener_py"] + out["ms_per_1000"].get(
        "listener_pg", 0.0
    )
    return out


#: Leaf frames of threads that wait (py-spy counts some of them as active): left out.
IDLE_FRAMES = ("concurrent/futures/thread.py:81", "EpollSelector.select", "Condition.wait")


def profile_top(path: Path, n: int = 15) -> str:
    """The top frames of a py-spy raw profile: by own samples, and by samples below them."""
    own: dict[str, int] = {}
    below: dict[str, int] = {}
    total = 0
    if not path.exists():
        return f"   (no profile written to {path})"
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or any(w in stack[-60:] for w in IDLE_FRAMES):
            continue
        k = int(count)
        total += k
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + k
        for frame in set(frames):
            below[frame] = below.get(frame, 0) + k
    out = [f"   py-spy profile {path} ({total} samples, waits left out):"]
    for title, table in (("own", own), ("inclusive", below)):
        out.append(f"   top {n} by {title} samples:")
        for frame, k in sorted(table.items(), key=lambda kv: -kv[1])[:n]:
            out.append(f"   {100 * k / max(1, total):5.1f}%  {frame[:110]}")
    return "\n".join(out)


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The stack's processes connect no peer's signal receivers (bench/site/benchapp/peers.py):
    # djangochannelsrestframework's observer hooks Tick's post_init, which every row the
    # listener builds would otherwise pay for.
    os.environ.setdefault("BENCH_PEERS", "none")
    results: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    extra = slot.SERVER_SETTINGS if "logical" in args.capture_list else None
    with common.server(args.dsn, extra=extra) as dsn, contextlib.ExitStack() as stack:
        with psycopg.connect(dsn, autocommit=True) as conn:
            machine = common.announce_server(conn)
            level = slot.wal_level(conn)
            if "logical" in args.capture_list and level != "logical":
                raise SystemExit(
                    f"the logical backend needs wal_level = logical; this server has "
                    f"{level!r}: set it or pass --captures trigger"
                )
            print(f"== wal_level = {level} for every capture backend")
        live.migrate(dsn)
        load_table(dsn, args.rows)
        with psycopg.connect(dsn, autocommit=True) as conn:
            tables = logical_capture.bound_tables(conn)
        redis_url = None
        if any(layer != "memory" for layer in args.layer_list):
            redis_url = stack.enter_context(live.redis())
        print(
            f"== backlog: {args.backlog} changes = {args.backlog // args.rows} transactions of "  # noqa: S608
            f"UPDATE benchapp_tick SET value = value + 1 ({args.rows} rows each); "
            f"{args.runs} run(s)"
        )
        for run in range(args.runs):
            res = notify_baseline(dsn, args)
            results.append({**res, "run": run})
            print(
                f"   run {run + 1} NOTIFY baseline: {res['received']}/{res['sent']} received,"
                f" {res['rate']:.0f}/s, receiver {res['receiver_ms_per_1000']:.0f} ms CPU"
                " per 1000",
                flush=True,
            )
            for capture, layer, mode in (
                (c, layer, mode)
                for layer in args.layer_list
                for mode in args.mode_list
                # the backends' order alternates from run to run
                for c in (args.capture_list if run % 2 == 0 else args.capture_list[::-1])
            ):
                with logical_capture.backend(dsn, capture, tables):
                    r = drain(dsn, layer, mode, run, args, redis_url, tmp, capture)
                results.append(r)
                print(
                    f"   run {run + 1} {capture:7} {layer:6} {mode:9}: {r['frames']}/"
                    f"{r['expected_frames']} frames, {r['rate']:.0f} changes/s at the "
                    f"client, listener {r['listener_rate']:.0f}/s, listener CPU "
                    f"{r['ms_per_1000']['listener']:.0f} ms per 1000",
                    flush=True,
                )
    params = {
        "backlog": args.backlog,
        "rows": args.rows,
        "runs": args.runs,
        "layers": args.layer_list,
        "modes": args.mode_list,
        "captures": args.capture_list,
        "wal_level": level,
        "batch_size": 500,
    }
    module.finish(args, params, machine, results, report_text)


# --------------------------------------------------------------------------- report


def _med(rs: list[dict[str, Any]], key: str, sub: str | None = None) -> float:
    vals = [float(r[key][sub] if sub else r[key]) for r in rs if (sub is None or sub in r[key])]
    return common.median(vals) if vals else float("nan")


def summary(data: dict[str, Any]) -> dict[str, Any]:
    res = data["results"]
    notify = [r for r in res if r["kind"] == "notify"]
    base = _med(notify, "rate")
    rows = []
    # Older JSON has no capture backend: all its drains were the trigger's.
    for capture in data["params"].get("captures", ["trigger"]):
        for layer in data["params"]["layers"]:
            for mode in data["params"]["modes"]:
                rs = [r for r in res if r["kind"] == "pgbinding" and r["layer"] == layer]
                rs = [r for r in rs if r["mode"] == mode]
                rs = [r for r in rs if r.get("capture", "trigger") == capture]
                if rs:
                    rows.append(_summary_row(capture, layer, mode, rs, base))
    return {
        "notify_rate": base,
        "notify_rates": [r["rate"] for r in notify],
        "notify_ms": _med(notify, "receiver_ms_per_1000"),
        "notify_complete": all(r["received"] == r["sent"] for r in notify),
        "notify_send_s": _med(notify, "send_s"),
        "rows": rows,
    }


def _summary_row(
    capture: str, layer: str, mode: str, rs: list[dict[str, Any]], base: float
) -> dict[str, Any]:
    rate = _med(rs, "rate")
    return {
        "capture": capture,
        "layer": layer,
        "mode": mode,
        "rate": rate,
        "rates": [r["rate"] for r in rs],
        "listener_rate": _med(rs, "listener_rate"),
        "ratio": rate / base if base else float("nan"),
        "complete": all(r["frames"] == r["expected_frames"] for r in rs),
        "frames": [f"{r['frames']}/{r['expected_frames']}" for r in rs],
        "takeover_s": _med(rs, "takeover_s"),
        "release_rate": common.median([float(r.get("release_rate", "nan")) for r in rs]),
        "write_s": _med(rs, "write_s"),
        "busy": _med(rs, "busy"),
        **{
            f"ms_{k}": _med(rs, "ms_per_1000", k)
            for k in (
                "listener",
                "listener_py",
                "listener_pg",
                "server_py",
                "redis",
                "postgres",
                "client_py",
                "machine",
            )
        },
    }


def _f(x: float, spec: str = ".0f") -> str:
    return common.fmt(x, spec)


def report_text(data: dict[str, Any]) -> str:
    s = summary(data)
    p = data["params"]
    out = [
        f"== throughput: backlog of {p['backlog']} changes drained; median of {p['runs']} run(s)",
        f"   NOTIFY baseline: {_f(s['notify_rate'])} notifications/s received, receiver "
        f"{_f(s['notify_ms'])} ms CPU per 1000 (Python + backend)"
        + ("" if s["notify_complete"] else "  INCOMPLETE"),
    ]
    hdr = (
        f"{'capture':7} {'layer':7} {'mode':9} {'client/s':>8} {'rel/s':>7} {'lsnr/s':>7} "
        f"{'ratio':>6} "
        f"{'lsnr ms':>7} {'py':>5} {'pg':>5} {'daphne':>6} {'redis':>5} {'postgres':>8} "
        f"{'client':>6} {'machine':>7}  frames"
    )
    out += [hdr, "-" * len(hdr)]
    for r in s["rows"]:
        out.append(
            f"{r['capture']:7} {r['layer']:7} {r['mode']:9} {_f(r['rate']):>8} "
            f"{_f(r['release_rate']):>7} "
            f"{_f(r['listener_rate']):>7} "
            f"{_f(r['ratio'], '.2f'):>6} {_f(r['ms_listener']):>7} {_f(r['ms_listener_py']):>5} "
            f"{_f(r['ms_listener_pg']):>5} {_f(r['ms_server_py']):>6} {_f(r['ms_redis']):>5} "
            f"{_f(r['ms_postgres']):>8} {_f(r['ms_client_py']):>6} {_f(r['ms_machine']):>7}  "
            + " ".join(r["frames"])
        )
    out.append(
        "  client/s = changes/s at the WebSocket client (first to last frame); rel/s = the same"
        " from the lease's release\n  (the takeover counted, and the logical pump's first"
        " decoding); lsnr/s = changes/s"
        " until the listener's saved\n  position reached the end; ratio = client/s / NOTIFY"
        " receive rate; the rest is CPU ms per 1000 changes: lsnr ms = the\n  listener (py ="
        " its Python process, daphne itself with memory; pg = its backend); daphne = the server"
        " apart from\n  the listener (redis layers); postgres = every Postgres process (lsnr's"
        " backend too); machine = all CPUs."
    )
    return "\n".join(out)


def targets(data: module.Data) -> list[module.Target]:
    """The logical backend's drain rate at the client, at least the trigger backend's (issue
    14); the trigger backend's own rate is reported, not judged (see docs/benchmarks.md)."""
    rows = summary(data)["rows"]
    out: list[module.Target] = []
    for r in rows:
        if r["capture"] != "logical":
            continue
        trigger = next(
            (
                t
                for t in rows
                if t["capture"] == "trigger" and t["layer"] == r["layer"] and t["mode"] == r["mode"]
            ),
            None,
        )
        if trigger is None:
            continue
        out.append(
            (
                f"capture throughput, logical capture, {r['layer']} layer, {r['mode']}: backlog "
                "drained to the client, changes/s from the lease's release",
                ">= the trigger backend's",
                f"{_f(r['release_rate'])} vs {_f(trigger['release_rate'])}",
                r["release_rate"] >= trigger["release_rate"] and r["complete"],
            )
        )
    return out


def markdown(data: dict[str, Any]) -> str:
    s = summary(data)
    p = data["params"]
    lines = [
        f"A backlog of {p['backlog']:,} changes ({p['backlog'] // p['rows']} transactions, each "  # noqa: S608
        f"`UPDATE benchapp_tick SET value = value + 1` over {p['rows']:,} rows) is written "
        "while the listener stands by (the benchmark holds its lease); then the lease is "
        "released and the listener drains the log in batches of "
        f"{p['batch_size']} to a WebSocket client of the bench site under daphne. `group`: the "
        "socket is in group `ticks` (one frame per change); `subscribe`: the same socket also "
        "holds a `subscribe` with no filter (two frames per change). With `memory` the listener "
        "runs inside daphne; with `redis` (channels_redis core) it is `manage.py pglisten`. "
        f"Medians of {p['runs']} run(s).",
        "",
        "Capture backends: *trigger* (the triggers write the log as the backlog is written) and "
        '*logical* (`PGBINDING["CAPTURE"] = "logical"`: the bound tables switched with '
        "the SQL the migrations pin for that drain; the backlog waits in the replication slot, "
        "and the leading listener's pump decodes it and writes the log while it drains, so its "
        "rate and its listener CPU include the slot -> log step). The rates count from the "
        "first frame to the last; the time before the first frame (the takeover, up to "
        "`STANDBY_RETRY`, and with the logical backend the pump's first peek and write) is its "
        "own column, and *changes/s from the release* counts it (backlog / time from the lease's "
        "release to the last frame): the logical backend's target compares those. "
        f"The server ran with `wal_level = {p.get('wal_level', '?')}` for both.",
        "",
        f"**Baseline:** raw NOTIFY, same machine, same run: {_f(s['notify_rate'])} "
        "notifications/s received by one psycopg async connection (payload: the same jsonb "
        "row, parsed), queued in Postgres first, then drained; the receiver used "
        f"{_f(s['notify_ms'])} ms CPU (Python + backend) per 1,000.",
        "",
        "| capture | layer | mode | changes/s at client | changes/s at listener | ÷ NOTIFY rate | "
        "listener CPU ms/1000 (Python + backend) | daphne ms/1000 | Redis ms/1000 | "
        "Postgres ms/1000 | client ms/1000 | lease released to first frame s | changes/s "
        "from the release | per-run changes/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['capture']} | {r['layer']} | {r['mode']} | {_f(r['rate'])} | "
            f"{_f(r['listener_rate'])} | "
            f"{_f(r['ratio'], '.2f')} | {_f(r['ms_listener'])} ({_f(r['ms_listener_py'])} + "
            f"{_f(r['ms_listener_pg'])}) | {_f(r['ms_server_py'])} | {_f(r['ms_redis'])} | "
            f"{_f(r['ms_postgres'])} | {_f(r['ms_client_py'])} | {_f(r['takeover_s'], '.2f')} | "
            f"{_f(r['release_rate'])} | " + ", ".join(_f(x) for x in r["rates"]) + " |"
        )
    incomplete = [
        f"{r['capture']}/{r['layer']}/{r['mode']}" for r in s["rows"] if not r["complete"]
    ]
    lines += [
        "",
        "With `memory` the listener's Python process is daphne, so its CPU includes the "
        "consumers and the socket writes; with `redis`, daphne (consumer side) is its own "
        "column. The WebSocket client (asyncio `websockets`, JSON-parsing every frame) and the "
        "NOTIFY receiver each run in their own OS process; the backlog is written before the "
        "timed drain, so no load generator runs during it. "
        + (
            "Every run delivered every frame."
            if not incomplete and s["notify_complete"]
            else f"**Incomplete deliveries:** {', '.join(incomplete) or 'NOTIFY baseline'}."
        ),
    ]
    return "\n".join(lines)


def plots(data: dict[str, Any], outdir: Path) -> list[Path]:
    plt = module.pyplot()

    s = summary(data)
    if not s["rows"]:
        return []
    labels = ["NOTIFY\nbaseline"] + [
        f"{r['layer']}\n{r['mode']}" + ("\nlogical" if r["capture"] == "logical" else "")
        for r in s["rows"]
    ]
    rates = [s["notify_rate"]] + [r["rate"] for r in s["rows"]]
    cpu = [s["notify_ms"]] + [r["ms_listener"] for r in s["rows"]]
    logical_rows = ["C2" if r["capture"] == "logical" else "C0" for r in s["rows"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10 if len(s["rows"]) <= 4 else 14, 3.6))
    a1.bar(labels, rates, color=["grey", *logical_rows])
    a1.set_yscale("log")
    for x, y in enumerate(rates):
        a1.annotate(_f(y), (x, y), ha="center", va="bottom", fontsize=8)
    a1.set_ylabel("changes (notifications) / s, log")
    a1.set_title("backlog drain rate at the receiver")
    a2.bar(labels, cpu, color=["grey"] + ["C3" if c == "C2" else "C1" for c in logical_rows])
    a2.set_ylabel("CPU ms per 1,000 (Python + backend)")
    a2.set_title("listener / receiver CPU")
    for ax in (a1, a2):
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    path = module.save(fig, outdir / "throughput.png")
    return [path]


if __name__ == "__main__":
    main()
