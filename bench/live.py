"""The live stack for the end-to-end benchmarks: the bench site (bench/site) served by daphne,
``manage.py pglisten`` when the layer is Redis, and a private Redis.

Every process is a separate OS process so the client side (WebSocket clients, writers) and the
server side do not share an interpreter; each one's CPU and RSS can be read through its pid.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from devservers import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]
#: redis: channels-redis core as pgbinding.layers (what channel_layers() configures);
#: redis-stock: channels-redis's own core layer class, for comparison.
LAYERS = ("memory", "redis", "redis-stock", "pubsub")
#: ASGI servers the stack can run the site under: daphne (Twisted + autobahn, Channels' own) or
#: uvicorn (uvloop, httptools, the websockets library). ``BENCH_SERVER`` picks the default.
SERVERS = ("daphne", "uvicorn")


def default_server() -> str:
    server = os.environ.get("BENCH_SERVER", "daphne")
    if server not in SERVERS:
        raise ValueError(f"BENCH_SERVER must be one of {SERVERS}, not {server!r}")
    return server


def server_command(server: str, port: int) -> list[str]:
    """The command line serving the bench site's ASGI application on 127.0.0.1:``port``."""
    app = "bench.site.asgi:application"
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app]
    if server == "uvicorn":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--ws",
            "websockets",
            "--lifespan",
            "auto",
            "--no-access-log",
            "--log-level",
            "warning",
            app,
        ]
    raise ValueError(f"server must be one of {SERVERS}, not {server!r}")


def site_env(dsn: str, layer: str = "memory", redis_url: str | None = None) -> dict[str, str]:
    """Environment for a process running the bench site against ``dsn``."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="bench.site.settings",
        BENCH_DATABASE_URL=dsn,
        BENCH_LAYER=layer,
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    if redis_url:
        env["BENCH_REDIS_URL"] = redis_url
    return env


def setup_django(dsn: str, layer: str = "memory", redis_url: str | None = None) -> None:
    """Configure Django in this process for the bench site (for writers using the ORM)."""
    os.environ.update(site_env(dsn, layer, redis_url))
    import django

    django.setup()


def migrate(dsn: str) -> None:
    """Create the bench site's tables and pgbinding's triggers in ``dsn``."""
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "-v", "0"],
        cwd=ROOT,
        env=site_env(dsn),
        check=True,
    )


@contextlib.contextmanager
def redis() -> Iterator[str]:
    """A private Redis server's URL, for the length of the block."""
    server = EmbeddedRedis()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def flush_redis(url: str) -> None:
    """Empty the benchmark's private Redis. channels_redis core keeps group members in Redis
    until ``group_expiry`` (a day): the sockets of a server stopped by the previous measurement
    would stay in group ``ticks`` and every later ``group_send`` would also write to them
    (seen: 1-client latency and pglisten CPU growing from run to run)."""
    import redis as redis_py

    client = redis_py.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Stack:
    """Running server processes of one configuration."""

    layer: str
    port: int
    logdir: Path
    server: subprocess.Popen[bytes]
    listener: subprocess.Popen[bytes] | None = None
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)
    name: str = "daphne"  # which ASGI server

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pids(self) -> dict[str, int]:
        """pid of each part: ``server`` (daphne, with the listener when the layer is memory)
        and ``listener`` (pglisten) when it runs apart."""
        out = {"server": self.server.pid}
        if self.listener is not None:
            out["listener"] = self.listener.pid
        return out

    def listener_log(self) -> str:
        name = "pglisten.log" if self.listener is not None else f"{self.name}.log"
        return (self.logdir / name).read_text(errors="replace")


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


@contextlib.contextmanager
def stack(
    dsn: str,
    layer: str,
    logdir: Path,
    redis_url: str | None = None,
    server: str | None = None,
) -> Iterator[Stack]:
    """The ASGI server (daphne unless ``server`` or ``BENCH_SERVER`` says uvicorn) serving the
    bench site, plus pglisten when ``layer`` is not ``memory``.

    With ``memory`` the listener runs inside the server (pgbinding.asgi.with_listener); it
    starts with the first connection: connect a client and let it see one change before
    measuring.
    """
    server = server or default_server()
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, not {layer!r}")
    if layer != "memory" and not redis_url:
        raise ValueError(f"layer {layer!r} needs a Redis URL")
    logdir.mkdir(parents=True, exist_ok=True)
    if redis_url:
        flush_redis(redis_url)
    env = site_env(dsn, layer, redis_url)
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        listener = None
        if layer != "memory":
            # pglisten writes nothing through the ORM: no peer receivers there (dcrf's
            # post_init receiver would otherwise run for every row it builds).
            listener = _start(
                [sys.executable, "-m", "django", "pglisten"],
                {**env, "BENCH_PEERS": "none"},
                logdir / "pglisten.log",
            )
            procs.append(listener)
        proc = _start(server_command(server, port), env, logdir / f"{server}.log")
        procs.append(proc)
        wait_for(lambda: port_open(port), f"{server} on port {port}")
        if listener is not None:
            wait_for(
                lambda: "Caught up" in (logdir / "pglisten.log").read_text(errors="replace"),
                "pglisten to catch up",
            )
        yield Stack(layer, port, logdir, proc, listener, name=server)
    finally:
        stop(procs)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_fd_limit(want: int = 65536) -> int:
    """Raise this process's open-files limit as far as allowed (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
