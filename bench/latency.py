"""Latency: from a commit being acknowledged to the WebSocket clients receiving the change.

    python -m bench.latency [--runs 3] [--layers memory,redis,pubsub] [--clients 1,100,1000]
    python -m bench.latency --quick          # fewer writes, 1 run: a smoke check (~2 min)

**What is measured.** The bench site (bench/site) runs under daphne (bench/live.py) with each
channel layer: ``memory`` (InMemoryChannelLayer, the listener inside daphne), ``redis``
(channels_redis core) and ``pubsub`` (channels_redis pub/sub); with the Redis layers the
listener is ``manage.py pglisten``, its own process. ``C`` WebSocket clients connect to
``/pgbinding/``, so each socket is in group ``ticks`` and gets every change of
``benchapp_tick`` as one ``{"stream": "ticks", "payload": {"action": "update", ...}}`` frame.

* **Writer** (its own OS process): one psycopg connection, autocommit, runs
  ``UPDATE benchapp_tick SET value = %s WHERE id = 1`` at a fixed rate (a schedule, not "as fast
  as possible": ``--rates``, per client count) with a new ``value`` each time, and records
  ``time.monotonic_ns()`` right after the statement returns, i.e. when the durable commit was
  acknowledged (the server runs with fsync and synchronous_commit on).
* **Clients** (their own OS processes, at most ``--per-process`` sockets each, 500 by default:
  two processes for 1,000 clients): a minimal WebSocket client written on asyncio's Protocol
  API in this file (no compression; it answers pings). It takes ``time.monotonic_ns()`` at the
  top of ``data_received``, the moment the bytes reach the process, and stores the raw frame;
  frames are decoded only after the measurement. The ``websockets`` library was not used for
  the timed path: at 1,000 sockets on 2 cores its per-frame work (reader task, queue, wake-up)
  would be timed as server latency. CLOCK_MONOTONIC is system-wide on Linux, so writer and
  client times compare directly.
* **Procedure** per layer x client count x run, on a fresh daphne (and pglisten): connect all
  sockets (the handshake's 101 means the socket is in the group), ``--warmup`` writes that are
  not counted (they also start the in-process listener and fill the caches), wait for the machine
  to be quiet, then ``--writes`` timed writes. Afterwards every (socket, write) pair must have
  been delivered; a missing one is reported as lost, not dropped silently.
* **Reported:** p50/p99/p99.9 over all deliveries (every socket, every write), and the *last
  client* latency of each write (the slowest socket's), p50/p99; the median of each over the
  runs. CPU (cores = CPU seconds per second over the timed window) of daphne, pglisten, Redis,
  all of Postgres, the writer, the clients, and the whole machine, so a reader can see that the
  load generators did not starve the server. Layers are measured interleaved within each run,
  and ratios to ``memory`` are given.

Targets (benchmark issue): one client p50 <= 2 ms and p99 <= 10 ms; 1,000 clients, last client
p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import ProtocolError

from . import common, live, module

WRITE_SQL = "UPDATE benchapp_tick SET value = %s WHERE id = 1"
NOTE = "latency probe " + "x" * 26  # a 40-character note: a small row, like a typical model's
TARGET_ONE_P50 = 2.0
TARGET_ONE_P99 = 10.0
TARGET_LAST_P99 = 50.0
#: The baseline "layer": Channels alone (a group_send over channels_redis pub/sub to plain
#: consumers), so pgbinding's share of a fan-out's latency can be read off.
BARE = "bare"
LAYERS = (*live.LAYERS, BARE)

# --------------------------------------------------------------------------- WebSocket client


class WsConnection(asyncio.Protocol):
    """A WebSocket client connection: asyncio's Protocol API for the bytes, wsproto (sans-IO)
    for the handshake, the frames, pings and the closing handshake.

    Every text message is kept as ``(monotonic_ns when its last bytes arrived, payload)`` when
    ``keep`` is set, else only counted (``_text``: a subclass decides what to keep). A
    ``waiter`` future gets the payload of the first text message holding ``"status"`` (a reply)
    while it is set. ``extra_headers`` go into the handshake request (e.g. a ``Cookie``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        keep: bool,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.upgrade = Request(
            host=f"{host}:{port}",
            target=path,
            extra_headers=[(k.encode(), v.encode()) for k, v in extra_headers],
        )
        self.keep = keep
        self.open = False
        self.frames: list[tuple[int, str]] = []
        self.count = 0
        self.partial: list[str] = []
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.waiter: asyncio.Future[str] | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.ws.send(self.upgrade))

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        for fut in (self.ready, self.closed, self.waiter):
            if fut is not None and not fut.done():
                if fut is self.closed:
                    fut.set_result(None)
                else:
                    fut.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()  # first: the moment the bytes reached the process
        ws = self.ws
        try:
            ws.receive_data(data)
            for event in ws.events():
                if type(event) is TextMessage:
                    if not event.message_finished:
                        self.partial.append(event.data)
                    elif self.partial:
                        self.partial.append(event.data)
                        self._text(now, "".join(self.partial))
                        self.partial.clear()
                    else:
                        self._text(now, event.data)
                elif isinstance(event, Ping):
                    self._send(event.response())
                elif isinstance(event, CloseConnection):
                    # Echo the server's close (when it began the closing handshake), then drop
                    # the connection.
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        self._send(event.response())
                    self._drop()
                elif isinstance(event, AcceptConnection):
                    self.open = True
                    self.ready.set_result(None)
                elif isinstance(event, RejectConnection):
                    self._drop(ConnectionError(f"handshake refused: HTTP {event.status_code}"))
        except ProtocolError as exc:  # wsproto's LocalProtocolError, RemoteProtocolError
            self._drop(ConnectionError(f"WebSocket protocol error: {exc}"))

    # -- messages
    def _text(self, now: int, payload: str) -> None:
        self.count += 1
        if self.keep:
            self.frames.append((now, payload))
        if self.waiter is not None and not self.waiter.done() and '"status"' in payload:
            self.waiter.set_result(payload)

    def _send(self, event: Event) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.ws.send(event))

    def _drop(self, error: Exception | None = None) -> None:
        if error is not None and not self.ready.done():
            self.ready.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a request frame and wait for the first reply frame (one holding a status)."""
        self.waiter = asyncio.get_running_loop().create_future()
        self._send(TextMessage(data=json.dumps(frame)))
        try:
            raw = await self.waiter
        finally:
            self.waiter = None
        return dict(json.loads(raw))

    async def close(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.ws.state is ConnectionState.OPEN:
            self._send(CloseConnection(code=CloseReason.NORMAL_CLOSURE))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 2)
        except TimeoutError:
            self.transport.abort()


class ClientWorker:
    """The client process's side: holds the sockets and runs the driver's commands."""

    def __init__(self) -> None:
        self.conns: list[WsConnection] = []

    async def connect(
        self, host: str, port: int, path: str, n: int, concurrency: int, keep: bool
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(concurrency)
        errors: list[str] = []
        t0 = time.monotonic()

        async def one() -> None:
            async with sem:
                for attempt in range(5):
                    try:
                        _, proto = await loop.create_connection(
                            lambda: WsConnection(host, port, path, keep), host, port
                        )
                        await asyncio.wait_for(proto.ready, 60)
                        self.conns.append(proto)
                        return
                    except (OSError, TimeoutError) as exc:
                        if attempt == 4:
                            errors.append(repr(exc))
                        await asyncio.sleep(0.2 * (attempt + 1))

        await asyncio.gather(*(one() for _ in range(n)))
        return {"connected": len(self.conns), "seconds": time.monotonic() - t0, "errors": errors}

    async def subscribe(self, stream: str, concurrency: int) -> dict[str, Any]:
        sem = asyncio.Semaphore(concurrency)
        statuses: dict[str, int] = {}
        first_error: list[str] = []
        t0 = time.monotonic()

        async def one(conn: WsConnection) -> None:
            async with sem:
                frame = {"stream": stream, "payload": {"action": "subscribe", "request_id": "s"}}
                try:
                    async with asyncio.timeout(120):
                        reply = await conn.request(frame)
                    status = str((reply.get("payload") or {}).get("status"))
                    if status != "200" and not first_error:
                        first_error.append(json.dumps(reply)[:500])
                except (ConnectionError, TimeoutError) as exc:
                    status = type(exc).__name__
                    if not first_error:
                        first_error.append(repr(exc))
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(one(c) for c in self.conns))
        return {
            "statuses": statuses,
            "seconds": time.monotonic() - t0,
            "first_error": first_error[0] if first_error else None,
        }

    def mark(self) -> None:
        for c in self.conns:
            c.frames = []
            c.count = 0

    def counts(self) -> dict[str, Any]:
        counts = [c.count for c in self.conns]
        return {
            "total": sum(counts),
            "min": min(counts) if counts else 0,
            "open": sum(c.open for c in self.conns),
        }

    def collect(self) -> list[dict[int, int]]:
        """Per socket: {value: monotonic_ns of its first delivery} of the group events."""
        out = []
        for c in self.conns:
            seen: dict[int, int] = {}
            for t, raw in c.frames:
                frame = json.loads(raw)
                payload = frame.get("payload") or frame  # bare: {"action", "pk", "data"}
                if payload.get("action") in ("create", "update") and "status" not in payload:
                    value = int((payload.get("data") or {}).get("value", -1))
                    seen.setdefault(value, t)
            out.append(seen)
        return out

    async def close(self, concurrency: int = 50) -> int:
        # Paced: thousands of simultaneous disconnects exhaust channels_redis's connection
        # pool in daphne (group_discard fails with MaxConnectionsError).
        sem = asyncio.Semaphore(concurrency)

        async def one(conn: WsConnection) -> None:
            async with sem:
                await conn.close()

        await asyncio.gather(*(one(c) for c in self.conns))
        n = len(self.conns)
        self.conns = []
        return n


async def _client_loop(pipe: Any) -> None:
    worker = ClientWorker()
    pipe.send(("ready", os.getpid()))
    while True:
        cmd, *args = await asyncio.to_thread(pipe.recv)
        if cmd == "stop":
            await worker.close()
            return
        if cmd == "connect":
            pipe.send(("ok", await worker.connect(*args)))
        elif cmd == "subscribe":
            pipe.send(("ok", await worker.subscribe(*args)))
        elif cmd == "mark":
            worker.mark()
            pipe.send(("ok", None))
        elif cmd == "counts":
            pipe.send(("ok", worker.counts()))
        elif cmd == "collect":
            pipe.send(("ok", worker.collect()))
        elif cmd == "close":
            pipe.send(("ok", await worker.close()))
        else:
            pipe.send(("error", f"unknown command {cmd!r}"))


def _client_main(pipe: Any, nofile: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    live.raise_fd_limit(nofile)
    asyncio.run(_client_loop(pipe))


class ClientProcess:
    """One client OS process (spawn) holding some of the WebSocket connections."""

    def __init__(self, nofile: int = 65536) -> None:
        ctx = mp.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_client_main, args=(child, nofile), daemon=True)
        self.proc.start()
        msg = self._recv(60, "a client process to start")
        self.pid = int(msg[1])

    def _recv(self, timeout: float, what: str) -> Any:
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        return self.pipe.recv()

    def send(self, *cmd: Any) -> None:
        self.pipe.send(cmd)

    def result(self, timeout: float = 600, what: str = "a client process") -> Any:
        status, value = self._recv(timeout, what)
        if status != "ok":
            raise RuntimeError(f"client process: {value}")
        return value

    def call(self, *cmd: Any, timeout: float = 600) -> Any:
        self.send(*cmd)
        return self.result(timeout, f"the clients' reply to {cmd[0]!r}")

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.pipe.send(("stop",))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


class ClientPool:
    """Client processes; ``connect`` spreads ``n`` sockets over as few as hold them."""

    def __init__(self, processes: int) -> None:
        self.procs = [ClientProcess() for _ in range(processes)]
        self.active: list[ClientProcess] = []

    def broadcast(self, *cmd: Any, timeout: float = 600) -> list[Any]:
        for p in self.active:
            p.send(*cmd)
        return [p.result(timeout, f"the clients' reply to {cmd[0]!r}") for p in self.active]

    def connect(
        self,
        url: str,
        path: str,
        n: int,
        per_process: int,
        concurrency: int = 50,
        keep: bool = True,
    ) -> dict[str, Any]:
        """Open ``n`` sockets to ``url + path``, ``per_process`` at most per process, the
        processes connecting at once (each with ``concurrency`` handshakes in flight)."""
        host, port = url.split("//", 1)[1].split(":")
        k = min(len(self.procs), max(1, math.ceil(n / per_process)))
        if k * per_process < n:
            raise ValueError(f"{n} sockets need more than {len(self.procs)} client processes")
        self.active = self.procs[:k]
        shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        t0 = time.monotonic()
        for p, share in zip(self.active, shares, strict=True):
            p.send("connect", host, int(port), path, share, max(1, concurrency // k), keep)
        res = [p.result(600, "the sockets to connect") for p in self.active]
        out = {
            "connected": sum(r["connected"] for r in res),
            "seconds": time.monotonic() - t0,
            "errors": [e for r in res for e in r["errors"]][:5],
        }
        if out["connected"] != n:
            raise RuntimeError(f"only {out['connected']} of {n} sockets connected: {out}")
        return out

    def counts(self) -> dict[str, int]:
        res = self.broadcast("counts")
        return {
            "total": sum(r["total"] for r in res),
            "min": min(r["min"] for r in res),
            "open": sum(r["open"] for r in res),
        }

    def wait_frames(self, total: int, idle: float = 5.0, limit: float = 300) -> dict[str, int]:
        """Poll until ``total`` frames arrived in all, or none came for ``idle`` seconds."""
        last, since, start = -1, time.monotonic(), time.monotonic()
        while True:
            c = self.counts()
            if c["total"] >= total:
                return c
            now = time.monotonic()
            if c["total"] != last:
                last, since = c["total"], now
            elif now - since > idle or now - start > limit:
                return c
            time.sleep(0.05)

    def close_sockets(self) -> None:
        self.broadcast("close", timeout=120)
        self.active = []

    def pids(self) -> list[int]:
        return [p.pid for p in self.active]

    def close(self) -> None:
        for p in self.procs:
            p.close()


# --------------------------------------------------------------------------- writer


def _writer_main(dsn: str, pipe: Any, bare_redis: str | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with psycopg.connect(dsn, autocommit=True) as conn:
        send = None
        if bare_redis:
            send = _bare_sender(dsn, bare_redis)
        pipe.send(("ready", os.getpid(), conn.info.backend_pid))
        while True:
            cmd = pipe.recv()
            if cmd[0] == "stop":
                return
            _, first, count, rate = cmd
            period = 1e9 / rate
            out = []
            start = time.monotonic_ns()
            for i in range(count):
                delay = start + int(i * period) - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
                if send is None:
                    conn.execute(WRITE_SQL, (first + i,), prepare=True)
                else:
                    send(first + i)
                out.append((first + i, time.monotonic_ns()))
            pipe.send(("done", out))


def _bare_sender(dsn: str, redis_url: str) -> Callable[[int], None]:
    """For the ``bare`` baseline: a function doing one channels_redis pub/sub ``group_send``
    to the bench site's plain Channels consumers (``/signal/``), on one loop and connection
    kept for the whole run. No database, no pgbinding: what Channels alone costs to fan out."""
    live.setup_django(dsn, "pubsub", redis_url)
    from channels.layers import get_channel_layer

    from bench.site.benchapp.peers import SIGNAL_GROUP

    layer = get_channel_layer()
    loop = asyncio.new_event_loop()

    def send(value: int) -> None:
        message = {
            "type": "tick.event",
            "action": "update",
            "pk": 1,
            "data": {"id": 1, "value": value, "note": NOTE},
        }
        loop.run_until_complete(layer.group_send(SIGNAL_GROUP, message))

    return send


class Writer:
    """The writer in its own OS process (spawn): timed single-row UPDATEs, one per commit; or,
    with ``bare_redis``, timed Channels ``group_send`` calls (the ``bare`` baseline)."""

    def __init__(self, dsn: str, bare_redis: str | None = None) -> None:
        ctx = mp.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_writer_main, args=(dsn, child, bare_redis), daemon=True)
        self.proc.start()
        if not self.pipe.poll(60):
            raise TimeoutError("the writer did not start")
        _, self.pid, self.backend = self.pipe.recv()
        self.next_value = 1

    def write(self, count: int, rate: float) -> list[tuple[int, int]]:
        """``count`` writes at ``rate`` a second; [(value, monotonic_ns at commit ack)]."""
        self.pipe.send(("run", self.next_value, count, rate))
        self.next_value += count
        if not self.pipe.poll(count / rate + 120):
            raise TimeoutError("the writer did not finish")
        return list(self.pipe.recv()[1])

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.pipe.send(("stop",))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()


# --------------------------------------------------------------------------- helpers


def prepare_table(dsn: str, rows: int = 1) -> None:
    """``rows`` rows in benchapp_tick (id 1 is the one written), written with capture off."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("TRUNCATE benchapp_tick")
        conn.execute(
            "INSERT INTO benchapp_tick (id, value, note) SELECT i, 0, %s"
            " FROM generate_series(1, %s) i",
            [NOTE, rows],
        )
        conn.execute("SELECT setval(pg_get_serial_sequence('benchapp_tick', 'id'), %s)", [rows])
        conn.execute("TRUNCATE pgbinding_change")
        conn.execute("VACUUM ANALYZE benchapp_tick")


class CpuWindow:
    """CPU of named processes, of all of Postgres and of the machine over a window, in cores."""

    def __init__(self, postmaster: int | None, procs: dict[str, int]) -> None:
        self.meter = common.CpuMeter(postmaster, dict(procs))
        self.procs = procs

    def start(self) -> None:
        self.meter.start()

    def stop(self) -> dict[str, float]:
        res = self.meter.stop()
        wall = res["wall"]
        out = {k: res[k] for k in self.procs}
        out["postgres"] = res["postgres"]
        out["machine"] = res["busy"] * common.NCPU
        out["other"] = out["machine"] - sum(out[k] for k in self.procs) - res["postgres"]
        out["wall"] = wall
        return out


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (NaN if empty)."""
    if not sorted_values:
        return float("nan")
    i = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


#: Quantiles kept in the JSON for the CDF plots (raw samples are not kept).
CDF_Q = sorted({*(i / 100 for i in range(101)), 0.995, 0.998, 0.999, 0.9995})


def cdf(sorted_values: list[float]) -> list[list[float]]:
    return [[q, percentile(sorted_values, q)] for q in CDF_Q] if sorted_values else []


# --------------------------------------------------------------------------- one measurement


def measure(
    dsn: str,
    layer: str,
    clients: int,
    rate: float,
    writes: int,
    run: int,
    args: argparse.Namespace,
    pool: ClientPool,
    writer: Writer,
    redis_url: str | None,
    tmp: Path,
) -> dict[str, Any]:
    logdir = tmp / f"{layer}-{clients}-{run}"
    # ``bare``: no pgbinding on the path; the writer group_sends to plain Channels consumers
    # over channels_redis pub/sub (the stack's pglisten idles: nothing is written).
    stack_layer, path = ("pubsub", "/signal/") if layer == BARE else (layer, "/pgbinding/")
    with live.stack(dsn, stack_layer, logdir, redis_url) as st:
        conn_info = pool.connect(st.url, path, clients, args.per_process)
        try:
            # Warm up: starts the in-process listener, fills caches; not counted.
            pool.broadcast("mark")
            warm = writer.write(args.warmup, rate)
            got = pool.wait_frames(clients * len(warm), idle=10)
            if got["total"] < clients * len(warm):
                raise RuntimeError(
                    f"warm-up: {got['total']} of {clients * len(warm)} frames arrived "
                    f"({layer}, {clients} clients); see {logdir}"
                )
            time.sleep(0.3)
            waited, busy_before = common.wait_quiet(args.quiet_cores, args.quiet_wait)
            pool.broadcast("mark")
            procs = {"daphne": st.server.pid, "writer": writer.pid}
            if st.listener is not None:
                procs["pglisten"] = st.listener.pid
            rpid = common.redis_pid(redis_url) if stack_layer != "memory" else None
            if rpid:
                procs["redis"] = rpid
            for i, pid in enumerate(pool.pids()):
                procs[f"client{i}"] = pid
            with psycopg.connect(dsn, autocommit=True) as c:
                postmaster = common.postmaster_pid(c)
            window = CpuWindow(postmaster, procs)
            window.start()
            commits = writer.write(writes, rate)
            arrived = pool.wait_frames(clients * writes, idle=5)
            cpu = window.stop()
            per_socket: list[dict[int, int]] = []
            for part in pool.broadcast("collect"):
                per_socket.extend(part)
        finally:
            pool.close_sockets()
    deliveries: list[float] = []
    last: list[float] = []
    lost = 0
    events_incomplete = 0
    for value, t_commit in commits:
        worst = -math.inf
        missing = False
        for sock in per_socket:
            t = sock.get(value)
            if t is None:
                lost += 1
                missing = True
                continue
            ms = (t - t_commit) / 1e6
            deliveries.append(ms)
            worst = max(worst, ms)
        if missing:
            events_incomplete += 1
        else:
            last.append(worst)
    # Queueing check: if one write's fan-out takes longer than the write period, latency grows
    # through the run. Compare the median "last client" latency of the first and last quarter.
    by_order = list(last)
    q = max(1, len(by_order) // 4)
    drift = (
        common.median(by_order[-q:]) - common.median(by_order[:q])
        if len(by_order) >= 4
        else float("nan")
    )
    deliveries.sort()
    last.sort()
    client_cores = sum(v for k, v in cpu.items() if k.startswith("client"))
    achieved = (
        (len(commits) - 1) / ((commits[-1][1] - commits[0][1]) / 1e9)
        if len(commits) > 1
        else float("nan")
    )
    return {
        "layer": layer,
        "clients": clients,
        "run": run,
        "rate": rate,
        "achieved_rate": achieved,
        "writes": writes,
        "client_processes": len(pool.active) or math.ceil(clients / args.per_process),
        "connect_s": conn_info["seconds"],
        "quiet_wait_s": waited,
        "busy_before": busy_before,
        "frames": arrived["total"],
        "expected": clients * writes,
        "lost": lost,
        "events_incomplete": events_incomplete,
        "deliveries": len(deliveries),
        "min": deliveries[0] if deliveries else float("nan"),
        "p50": percentile(deliveries, 0.5),
        "p99": percentile(deliveries, 0.99),
        "p999": percentile(deliveries, 0.999),
        "max": deliveries[-1] if deliveries else float("nan"),
        "last_p50": percentile(last, 0.5),
        "last_p99": percentile(last, 0.99),
        "last_max": last[-1] if last else float("nan"),
        "drift_ms": drift,
        "daphne_us_per_frame": cpu["daphne"] / (achieved * clients) * 1e6 if achieved else 0.0,
        "cdf": cdf(deliveries),
        "last_cdf": cdf(last),
        "cpu": {**cpu, "clients": client_cores},
    }


# --------------------------------------------------------------------------- driver


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = module.Parser("latency", __doc__, quick="fewer writes, 1 run")
    p.add_list(
        "--layers",
        "layer_list",
        ",".join(LAYERS),
        "memory,redis,pubsub,bare (bare: Channels alone over pub/sub, no pgbinding)",
        choices=LAYERS,
    )
    p.add_list("--clients", "client_list", "1,100,1000", "client counts (1,100,1000)", item=int)
    p.add_list(
        "--rates",
        "rates",
        "50,20,2",
        "writes/s for each client count (50,20,2): low enough that the fan-out of one write is "
        "done before the next, so latency is not queueing behind earlier writes",
        item=float,
    )
    p.add_list(
        "--writes",
        "writes",
        "1000,400,100",
        "timed writes for each client count (1000,400,100; --quick 200,100,20)",
        item=int,
    )
    p.set_quick_defaults(writes="200,100,20")
    p.add_argument("--warmup", type=int, default=10, help="untimed writes first (10)")
    p.add_argument("--per-process", type=int, default=500, help="sockets per client process")
    p.add_quiet()
    args = p.parse(argv)
    if len(args.rates) != len(args.client_list) or len(args.writes) != len(args.client_list):
        p.error("--rates and --writes need one value per client count")
    args.rate_for = dict(zip(args.client_list, args.rates, strict=True))
    args.writes_for = dict(zip(args.client_list, args.writes, strict=True))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    nofile = live.raise_fd_limit()
    results: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    started = time.monotonic()
    with common.server(args.dsn) as dsn, contextlib.ExitStack() as stack:
        with psycopg.connect(dsn, autocommit=True) as conn:
            machine = common.announce_server(conn)
        live.migrate(dsn)
        prepare_table(dsn)
        redis_url = None
        if any(layer != "memory" for layer in args.layer_list):
            redis_url = stack.enter_context(live.redis())
        nproc = max(math.ceil(c / args.per_process) for c in args.client_list)
        pool = ClientPool(nproc)
        stack.callback(pool.close)
        writer = Writer(dsn)
        stack.callback(writer.close)
        bare_writer = None
        if BARE in args.layer_list:
            bare_writer = Writer(dsn, bare_redis=redis_url)
            stack.callback(bare_writer.close)
        print(
            f"== {WRITE_SQL} from one writer process; {nproc} client process(es) of at most "
            f"{args.per_process} sockets; open-files limit {nofile}; {args.runs} run(s); logs "
            f"in {tmp}",
            flush=True,
        )
        for run in range(args.runs):
            for clients in args.client_list:
                # Interleave the layers, rotating their order from run to run.
                k = run % len(args.layer_list)
                for layer in args.layer_list[k:] + args.layer_list[:k]:
                    r = measure(
                        dsn,
                        layer,
                        clients,
                        args.rate_for[clients],
                        args.writes_for[clients],
                        run,
                        args,
                        pool,
                        bare_writer if layer == BARE and bare_writer else writer,
                        redis_url,
                        tmp,
                    )
                    results.append(r)
                    c = r["cpu"]
                    print(
                        f"   run {run + 1} {layer:6} {clients:5} clients: p50 {r['p50']:7.2f} "
                        f"p99 {r['p99']:7.2f} p99.9 {r['p999']:7.2f} ms; last client p50 "
                        f"{r['last_p50']:7.2f} p99 {r['last_p99']:7.2f} ms; lost {r['lost']}; "
                        f"daphne {c['daphne']:.2f} clients {c['clients']:.2f} machine "
                        f"{c['machine']:.2f} cores",
                        flush=True,
                    )
    params = {
        "runs": args.runs,
        "layers": args.layer_list,
        "clients": args.client_list,
        "rates": args.rate_for,
        "writes": args.writes_for,
        "warmup": args.warmup,
        "per_process": args.per_process,
        "statement": WRITE_SQL,
        "minutes": (time.monotonic() - started) / 60,
    }
    module.finish(args, params, machine, results, report_text)


# --------------------------------------------------------------------------- report


def _f(x: float, spec: str = ".2f") -> str:
    return common.fmt(x, spec)


def summary(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (clients, layer): medians over the runs, ratios to ``memory``."""
    rows = []
    res = data["results"]
    params = data["params"]
    for clients in params["clients"]:
        base: dict[str, float] = {}
        for layer in params["layers"]:
            rs = [r for r in res if r["clients"] == clients and r["layer"] == layer]
            if not rs:
                continue

            def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
                return common.median([float(r[key]) for r in rs])

            def cpu(key: str, rs: list[dict[str, Any]] = rs) -> float:
                vals = [float(r["cpu"][key]) for r in rs if key in r["cpu"]]
                return common.median(vals) if vals else float("nan")

            row: dict[str, Any] = {
                "clients": clients,
                "layer": layer,
                "runs": len(rs),
                "rate": rs[0]["rate"],
                "achieved_rate": med("achieved_rate"),
                "writes": rs[0]["writes"],
                "lost": sum(r["lost"] for r in rs),
                "expected": sum(r["expected"] for r in rs),
                "connect_s": med("connect_s"),
                **{
                    k: med(k)
                    for k in (
                        *("p50", "p99", "p999", "max", "last_p50", "last_p99", "min"),
                        *("drift_ms", "daphne_us_per_frame"),
                    )
                },
                "p99_runs": [r["p99"] for r in rs],
                "last_p99_runs": [r["last_p99"] for r in rs],
                "cpu": {
                    k: cpu(k)
                    for k in (
                        "daphne",
                        "pglisten",
                        "redis",
                        "postgres",
                        "writer",
                        "clients",
                        "machine",
                        "other",
                    )
                },
                "cdf": rs[len(rs) // 2]["cdf"],
                "last_cdf": rs[len(rs) // 2]["last_cdf"],
            }
            if layer == "memory":
                base = {k: row[k] for k in ("p50", "p99", "last_p99")}
            for k in ("p50", "p99", "last_p99"):
                row[f"{k}_ratio"] = row[k] / base[k] if base.get(k) else float("nan")
            rows.append(row)
    return rows


def queueing(r: dict[str, Any]) -> bool:
    """Did latency grow through the run (the fan-out not keeping up with the write rate)?"""
    d = r["drift_ms"]
    return bool(d == d and d > max(5.0, 0.5 * r["last_p50"]))


def report_text(data: dict[str, Any]) -> str:
    rows = summary(data)
    p = data["params"]
    out = [
        f"== latency, commit acknowledged -> frame at the client, ms; medians of {p['runs']} "
        "run(s); x mem = ratio to the memory layer; 'last' = the slowest socket per write",
        f"{'clients':>7} {'layer':6} {'rate/s':>6} {'p50':>7} {'p99':>7} {'p99.9':>7} "
        f"{'max':>7} {'last50':>7} {'last99':>7} {'x mem p50':>9} {'x mem p99':>9} "
        f"{'lost':>9}  {'p99 per run'}",
    ]
    out.append("-" * len(out[-1]))
    for r in rows:
        out.append(
            f"{r['clients']:>7} {r['layer']:6} {r['achieved_rate']:6.1f} {_f(r['p50']):>7} "
            f"{_f(r['p99']):>7} {_f(r['p999']):>7} {_f(r['max']):>7} {_f(r['last_p50']):>7} "
            f"{_f(r['last_p99']):>7} {_f(r['p50_ratio']):>9} {_f(r['p99_ratio']):>9} "
            f"{r['lost']:>4}/{r['expected']:<4}  " + " ".join(_f(x) for x in r["p99_runs"])
        )
    out += [
        "",
        "== CPU during the timed writes, cores (of 2): medians; clients = all client processes",
        f"{'clients':>7} {'layer':6} {'daphne':>6} {'pglstn':>6} {'redis':>6} {'postgres':>8} "
        f"{'writer':>6} {'clients':>7} {'machine':>7} {'other':>6} {'connect s':>9} "
        f"{'daphne us/frame':>15} {'drift ms':>9}",
    ]
    out.append("-" * len(out[-1]))
    for r in rows:
        c = r["cpu"]
        out.append(
            f"{r['clients']:>7} {r['layer']:6} {_f(c['daphne']):>6} {_f(c['pglisten']):>6} "
            f"{_f(c['redis']):>6} {_f(c['postgres']):>8} {_f(c['writer']):>6} "
            f"{_f(c['clients']):>7} {_f(c['machine']):>7} {_f(c['other']):>6} "
            f"{r['connect_s']:9.1f} {_f(r['daphne_us_per_frame'], '.0f'):>15} "
            f"{_f(r['drift_ms'], '.1f'):>9}{' QUEUEING' if queueing(r) else ''}"
        )
    out.append("")
    for what, want, got, ok in targets(data):
        out.append(f"   target {what}: {want}; measured {got}: {'met' if ok else 'MISSED'}")
    return "\n".join(out)


def targets(data: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(what, target, measured, met) for the summary table of docs/benchmarks.md."""
    out = []
    for r in summary(data):
        if r["layer"] == BARE:
            continue  # a baseline, not pgbinding
        if r["clients"] == 1:
            out.append(
                (
                    f"latency, 1 client, {r['layer']} layer: p50 / p99",
                    f"<= {TARGET_ONE_P50:g} / <= {TARGET_ONE_P99:g} ms",
                    f"{_f(r['p50'])} / {_f(r['p99'])} ms",
                    r["p50"] <= TARGET_ONE_P50 and r["p99"] <= TARGET_ONE_P99 and not r["lost"],
                )
            )
        elif r["clients"] == 1000:
            out.append(
                (
                    f"latency, 1,000 clients, {r['layer']} layer: last client p99",
                    f"<= {TARGET_LAST_P99:g} ms",
                    f"{_f(r['last_p99'])} ms",
                    r["last_p99"] <= TARGET_LAST_P99 and not r["lost"],
                )
            )
    return out


def markdown(data: dict[str, Any]) -> str:
    rows = summary(data)
    p = data["params"]
    rate_of = {int(k): float(v) for k, v in p["rates"].items()}
    rates = ", ".join(f"{c:,} client(s): {rate_of[c]:g}/s" for c in p["clients"])
    lines = [
        "Time from a commit being acknowledged to the writer to a WebSocket client receiving the "
        "change's frame. A writer process runs `" + p["statement"] + "` (autocommit, durable "
        f"commits) at a fixed rate ({rates}) and takes `time.monotonic_ns()` when each commit "
        "returns; every client socket is connected to `/pgbinding/` (group `ticks`) and takes "
        "the time when the frame's bytes reach its process (a minimal asyncio WebSocket client; "
        "frames are decoded after the measurement). "
        f"{p['warmup']} untimed writes first; fresh daphne (and pglisten) per measurement; "
        f"layers interleaved within each run; medians of {p['runs']} run(s). "
        "*Last client* is the slowest socket's latency for each write. "
        "`bare` is the baseline without pgbinding: the writer process does one channels_redis "
        "pub/sub `group_send` per write (its time taken when the call returns) to plain "
        "Channels consumers (`/signal/`, an `AsyncJsonWebsocketConsumer` that `send_json`s the "
        "event) in the same daphne: what Channels alone costs to reach the same sockets.",
        "",
        "| clients | layer | p50 ms | p99 ms | p99.9 ms | max ms | last client p50 | "
        "last client p99 | p50 ÷ memory | p99 ÷ memory | lost | p99 per run |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']:,} | {r['layer']} | {_f(r['p50'])} | {_f(r['p99'])} | "
            f"{_f(r['p999'])} | {_f(r['max'])} | {_f(r['last_p50'])} | {_f(r['last_p99'])} | "
            f"{_f(r['p50_ratio'])} | {_f(r['p99_ratio'])} | {r['lost']} of {r['expected']:,} | "
            + ", ".join(_f(x) for x in r["p99_runs"])
            + " |"
        )
    lines += [
        "",
        "**Targets:** "
        + "; ".join(
            f"{what}: {want}, measured {got} — **{'met' if ok else 'missed'}**"
            for what, want, got, ok in targets(data)
        )
        + ".",
        "",
        "**Load generators kept apart.** The writer and the clients are their own OS processes "
        f"(at most {p['per_process']} sockets per client process), separate from daphne and "
        "pglisten; no CPU pinning (2 cores). CPU during the timed writes, in cores (median):",
        "",
        "| clients | layer | daphne | pglisten | Redis | Postgres | writer | clients | "
        "whole machine | other | daphne µs CPU per frame | drift ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r["cpu"]
        lines.append(
            f"| {r['clients']:,} | {r['layer']} | {_f(c['daphne'])} | {_f(c['pglisten'])} | "
            f"{_f(c['redis'])} | {_f(c['postgres'])} | {_f(c['writer'])} | {_f(c['clients'])} | "
            f"{_f(c['machine'])} | {_f(c['other'])} | {_f(r['daphne_us_per_frame'], '.0f')} | "
            f"{_f(r['drift_ms'], '.1f')}{' (queueing)' if queueing(r) else ''} |"
        )
    lines += [
        "",
        "With `memory` the listener runs inside daphne, so its CPU is in the daphne column. "
        "*other* is the rest of the machine (other people's work on the shared VM, the "
        "kernel's share not charged to a process). *daphne µs CPU per frame* is daphne's CPU "
        "divided by the frames it sent (with `memory` it includes the listener's share). "
        "*drift* is the median last-client latency of the last quarter of the writes minus that "
        "of the first quarter: near 0 when each write's fan-out finished before the next "
        "write; large when the fan-out did not keep up with the write rate and frames queued "
        "in daphne, so the figures include queueing (marked *queueing*).",
    ]
    queued = [r for r in rows if queueing(r)]
    if queued:
        lines += [
            "",
            "**Queueing:** "
            + ", ".join(f"{r['clients']:,} clients / {r['layer']}" for r in queued)
            + ": the server did not keep up with the write rate, so those latencies grew "
            "through the run and are not steady-state figures.",
        ]
    return "\n".join(lines)


def plots(data: dict[str, Any], outdir: Path) -> list[Path]:
    plt = module.pyplot()

    rows = summary(data)
    if not rows:
        return []
    counts = [c for c in data["params"]["clients"] if any(r["clients"] == c for r in rows)]
    fig, axes = plt.subplots(1, len(counts), figsize=(4.2 * len(counts), 3.6), squeeze=False)
    for ax, clients in zip(axes[0], counts, strict=True):
        for i, r in enumerate(x for x in rows if x["clients"] == clients):
            if r["cdf"]:
                ms = [v for _, v in r["cdf"]]
                ax.plot(ms, [q for q, _ in r["cdf"]], color=f"C{i}", label=r["layer"])
            if clients > 1 and r["last_cdf"]:
                ms = [v for _, v in r["last_cdf"]]
                ax.plot(
                    ms,
                    [q for q, _ in r["last_cdf"]],
                    color=f"C{i}",
                    linestyle="--",
                    label=f"{r['layer']}, last client",
                )
        ax.set_xscale("log")
        ax.set_xlabel("commit -> client, ms (log)")
        ax.set_title(f"{clients:,} client(s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("fraction of deliveries")
    fig.suptitle("Latency CDF (median run)", fontsize=10)
    path = module.save(fig, outdir / "latency_cdf.png")

    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels = [f"{r['clients']:,}\n{r['layer']}" for r in rows]
    xs = list(range(len(rows)))
    width = 0.27
    series: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
        ("p50", lambda r: r["p50"]),
        ("p99", lambda r: r["p99"]),
        ("last client p99", lambda r: r["last_p99"]),
    ]
    for k, (name, get) in enumerate(series):
        ax.bar([x + (k - 1) * width for x in xs], [get(r) for r in rows], width, label=name)
    ax.axhline(TARGET_ONE_P99, color="grey", linestyle=":", linewidth=1)
    ax.axhline(TARGET_LAST_P99, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title("Latency by client count and layer (targets dotted/dashed: 10 ms, 50 ms)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    path2 = module.save(fig, outdir / "latency_bars.png")
    return [path, path2]


if __name__ == "__main__":
    main()
