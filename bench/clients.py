"""WebSocket client processes for bench/fanout and bench/replay: signed-in sockets (the
``sessionid`` cookie in the handshake, as a browser sends it), subscriptions, request loops
with reply latency, and a timed resume.

It builds on the asyncio WebSocket client of bench/latency.py (on wsproto; timestamps taken at
``data_received``, JSON decoded after the measurement): each socket keeps the raw frames of
the events it receives with their arrival time (``time.monotonic_ns()``, system-wide, so it
compares with a writer's commit times); replies are matched to the request waiting for them
and not kept. Each client process is driven over a pipe by the benchmark, one command at a
time (``ClientProcess.call``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import signal
import time
from typing import Any

from . import live
from .latency import WsConnection


class Connection(WsConnection):
    """A WebSocket connection with a ``Cookie`` header in its handshake, which keeps only the
    frames that are not replies, and the arrival time of the last reply."""

    def __init__(self, host: str, port: int, path: str, cookie: str | None) -> None:
        headers = [("Cookie", cookie)] if cookie else []
        super().__init__(host, port, path, keep=True, extra_headers=headers)
        self.reply_ns = 0

    def _text(self, now: int, payload: str) -> None:
        self.count += 1
        if self.waiter is not None and not self.waiter.done() and '"status"' in payload:
            self.reply_ns = now
            self.waiter.set_result(payload)
        else:
            self.frames.append((now, payload))


class Worker:
    """The client process's side: holds the sockets and runs the driver's commands."""

    def __init__(self) -> None:
        self.conns: list[Connection] = []
        self.tags: list[Any] = []  # per socket: what the driver said it is (a user id)
        self.probes: list[asyncio.Task[list[tuple[int, int, int]]]] = []
        self.probing = False

    async def connect(
        self, host: str, port: int, path: str, cookies: list[tuple[Any, str | None]], conc: int
    ) -> dict[str, Any]:
        """One socket per (tag, cookie); ``conc`` handshakes in flight at most."""
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(conc)
        errors: list[str] = []
        t0 = time.monotonic()

        async def one(tag: Any, cookie: str | None) -> None:
            async with sem:
                for attempt in range(5):
                    try:
                        _, proto = await loop.create_connection(
                            lambda: Connection(host, port, path, cookie), host, port
                        )
                        await asyncio.wait_for(proto.ready, 60)
                        self.conns.append(proto)
                        self.tags.append(tag)
                        return
                    except (OSError, TimeoutError, ConnectionError) as exc:
                        if attempt == 4:
                            errors.append(repr(exc))
                        await asyncio.sleep(0.2 * (attempt + 1))

        await asyncio.gather(*(one(tag, cookie) for tag, cookie in cookies))
        return {"connected": len(self.conns), "seconds": time.monotonic() - t0, "errors": errors}

    async def subscribe(
        self, stream: str, conc: int, owner_field: str | None = None
    ) -> dict[str, Any]:
        """Every socket subscribes to ``stream`` (no filter). With ``owner_field``, the rows of
        each snapshot are checked against the socket's tag: a row of another owner counts as
        ``foreign``."""
        sem = asyncio.Semaphore(conc)
        statuses: dict[str, int] = {}
        rows = foreign = 0
        first_error: list[str] = []
        t0 = time.monotonic()

        async def one(conn: Connection, tag: Any) -> None:
            nonlocal rows, foreign
            async with sem:
                frame = {"stream": stream, "payload": {"action": "subscribe", "request_id": "s"}}
                try:
                    async with asyncio.timeout(300):
                        reply = await conn.request(frame)
                    payload = reply.get("payload") or {}
                    status = str(payload.get("status"))
                    if status != "200" and not first_error:
                        first_error.append(json.dumps(reply)[:500])
                    results = (payload.get("data") or {}).get("results") or []
                    rows += len(results)
                    if owner_field is not None:
                        foreign += sum(1 for r in results if r["data"].get(owner_field) != tag)
                except (ConnectionError, TimeoutError) as exc:
                    status = type(exc).__name__
                    if not first_error:
                        first_error.append(repr(exc))
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(one(c, t) for c, t in zip(self.conns, self.tags, strict=True)))
        return {
            "statuses": statuses,
            "seconds": time.monotonic() - t0,
            "rows": rows,
            "foreign": foreign,
            "first_error": first_error[0] if first_error else None,
        }

    async def request(self, index: int, frame: dict[str, Any]) -> dict[str, Any]:
        """Send ``frame`` on socket ``index``; its reply, with send and arrival times and the
        number of other frames (events) received in between."""
        conn = self.conns[index]
        before = len(conn.frames)
        sent = time.monotonic_ns()
        reply = await asyncio.wait_for(conn.request(frame), 300)
        return {
            "reply": reply,
            "sent_ns": sent,
            "reply_ns": conn.reply_ns,
            "frames_before": len(conn.frames) - before,
            "last_frame_ns": conn.frames[-1][0] if len(conn.frames) > before else None,
        }

    def probe_start(self, frame: dict[str, Any], rate: float) -> None:
        """Every socket sends ``frame`` in a loop, at most ``rate`` a second each (the next one
        after the reply, or at the next slot), timing each reply."""
        self.probing = True
        self.probes = [
            asyncio.get_running_loop().create_task(self._probe(c, frame, rate, i / len(self.conns)))
            for i, c in enumerate(self.conns)
        ]

    async def _probe(
        self, conn: Connection, frame: dict[str, Any], rate: float, phase: float
    ) -> list[tuple[int, int, int]]:
        samples: list[tuple[int, int, int]] = []
        period = 1e9 / rate
        start = time.monotonic_ns() + int(phase * period)
        k = 0
        while self.probing:
            delay = start + int(k * period) - time.monotonic_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            if not self.probing:
                break
            k += 1
            sent = time.monotonic_ns()
            try:
                reply = await asyncio.wait_for(conn.request(frame), 30)
                status = int((reply.get("payload") or {}).get("status") or 0)
            except (ConnectionError, TimeoutError):
                status = -1
            samples.append((sent, conn.reply_ns if status != -1 else time.monotonic_ns(), status))
            conn.frames.clear()
        return samples

    async def probe_stop(self) -> list[tuple[int, int, int]]:
        self.probing = False
        out: list[tuple[int, int, int]] = []
        for task in self.probes:
            out += await task
        self.probes = []
        return out

    def counts(self) -> dict[str, Any]:
        counts = [len(c.frames) for c in self.conns]
        return {
            "total": sum(counts),
            "min": min(counts) if counts else 0,
            "open": sum(c.open for c in self.conns),
        }

    def events(self, fields: tuple[str, ...]) -> list[dict[str, Any]]:
        """Per socket: its tag and its subscription events as [pk, fields..., arrival ns], and
        how many other frames it got (a frame that is neither is a failure to look at)."""
        out = []
        for conn, tag in zip(self.conns, self.tags, strict=True):
            got: list[list[Any]] = []
            other = 0
            for t, raw in conn.frames:
                payload = json.loads(raw).get("payload") or {}
                if "subscription" in payload and "status" not in payload:
                    data = payload.get("data") or {}
                    got.append([payload.get("pk"), *(data.get(f) for f in fields), t])
                else:
                    other += 1
            out.append({"tag": tag, "events": got, "other": other})
        return out

    async def close(self, conc: int = 50) -> int:
        # Paced: thousands of simultaneous disconnects exhaust channels_redis's connection
        # pool in daphne (see bench/latency.py).
        sem = asyncio.Semaphore(conc)

        async def one(conn: Connection) -> None:
            async with sem:
                await conn.close()

        await asyncio.gather(*(one(c) for c in self.conns))
        n = len(self.conns)
        self.conns, self.tags = [], []
        return n


async def _loop(pipe: Any) -> None:
    worker = Worker()
    pipe.send(("ready", os.getpid()))
    while True:
        cmd, *args = await asyncio.to_thread(pipe.recv)
        try:
            if cmd == "stop":
                await worker.close()
                return
            if cmd == "connect":
                result: Any = await worker.connect(*args)
            elif cmd == "subscribe":
                result = await worker.subscribe(*args)
            elif cmd == "request":
                result = await worker.request(*args)
            elif cmd == "probe_start":
                worker.probe_start(*args)
                result = None
            elif cmd == "probe_stop":
                result = await worker.probe_stop()
            elif cmd == "counts":
                result = worker.counts()
            elif cmd == "events":
                result = worker.events(*args)
            elif cmd == "close":
                result = await worker.close()
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception as exc:  # reported to the driver, which raises it
            pipe.send(("error", f"{cmd}: {type(exc).__name__}: {exc}"))
            continue
        pipe.send(("ok", result))


def _main(pipe: Any, nofile: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    live.raise_fd_limit(nofile)
    asyncio.run(_loop(pipe))


class ClientProcess:
    """One client OS process (spawn) holding some of the sockets."""

    def __init__(self, nofile: int = 65536) -> None:
        ctx = mp.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_main, args=(child, nofile), daemon=True)
        self.proc.start()
        if not self.pipe.poll(60):
            raise TimeoutError("a client process did not start")
        self.pid = int(self.pipe.recv()[1])

    def send(self, *cmd: Any) -> None:
        self.pipe.send(cmd)

    def result(self, timeout: float = 600) -> Any:
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for a client process")
        status, value = self.pipe.recv()
        if status != "ok":
            raise RuntimeError(f"client process: {value}")
        return value

    def call(self, *cmd: Any, timeout: float = 600) -> Any:
        self.send(*cmd)
        return self.result(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.pipe.send(("stop",))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


class Pool:
    """Several client processes used together: each command goes to all of them at once."""

    def __init__(self, processes: int) -> None:
        self.procs = [ClientProcess() for _ in range(processes)]

    def broadcast(self, *cmd: Any, timeout: float = 600) -> list[Any]:
        for p in self.procs:
            p.send(*cmd)
        return [p.result(timeout) for p in self.procs]

    def connect(
        self, url: str, path: str, cookies: list[tuple[Any, str | None]], conc: int = 50
    ) -> dict[str, Any]:
        """Spread the sockets (one per (tag, cookie)) evenly over the processes."""
        host, port = url.split("//", 1)[1].split(":")
        k = len(self.procs)
        t0 = time.monotonic()
        for i, p in enumerate(self.procs):
            p.send("connect", host, int(port), path, cookies[i::k], max(1, conc // k))
        res = [p.result(600) for p in self.procs]
        out = {
            "connected": sum(r["connected"] for r in res),
            "seconds": time.monotonic() - t0,
            "errors": [e for r in res for e in r["errors"]][:5],
        }
        if out["connected"] != len(cookies):
            raise RuntimeError(
                f"only {out['connected']} of {len(cookies)} sockets connected: {out}"
            )
        return out

    def total(self) -> int:
        return sum(r["total"] for r in self.broadcast("counts"))

    def wait_frames(self, total: int, idle: float = 5.0, limit: float = 300) -> int:
        """Poll until ``total`` frames have arrived in all, or none came for ``idle`` s."""
        last, since, start = -1, time.monotonic(), time.monotonic()
        while True:
            got = self.total()
            if got >= total:
                return got
            now = time.monotonic()
            if got != last:
                last, since = got, now
            elif now - since > idle or now - start > limit:
                return got
            time.sleep(0.05)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        for p in self.procs:
            p.close()
