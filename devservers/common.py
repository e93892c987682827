"""What both private servers share: their error, free TCP ports, waiting for processes."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from pathlib import Path

import psutil


class EmbeddedServerError(RuntimeError):
    """A private server could not be started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on *host* that is free right now (the kernel picks it).

    The port is released before this returns, so another process may take it before the
    caller binds it; the servers retry with a new port when that happens.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now.

    Like Postgres and Redis, the probe sets ``SO_REUSEADDR``: connections of a previous server
    in ``TIME_WAIT`` do not make the port unusable, only a listening socket does.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def tail(path: Path, offset: int = 0, lines: int = 40) -> str:
    """The last *lines* lines of *path* from byte *offset* on (for error messages)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace").rstrip()
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) if text else f"({path} is empty)"


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def exists(process: psutil.Process) -> bool:
    """The process runs; a zombie does not count (some containers' init never reaps one)."""
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def wait_gone(processes: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to *timeout* seconds for *processes* to exit; return those still running.

    Not ``psutil.wait_procs()``: for a process that is not our child it waits for the pid to
    disappear, which a zombie's never does.
    """
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if exists(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if exists(p)]
    return alive
