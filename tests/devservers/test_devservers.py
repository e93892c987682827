"""The private servers of :mod:`devservers` (plain pytest, no Django needed).

Run on their own with ``pytest -p no:django tests/devservers``.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devservers import (
    PG_SYSTEM_USER,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    free_port,
)
from tests.support.processes import RedisServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A private directory outside pytest's ``basetemp``.

    When running as root the servers run as another user, which needs to traverse the
    parents of its data directory; a concurrent pytest session resets its
    ``/tmp/pytest-of-<user>`` to mode 0700 at any time, so keep out of it.
    """
    path = Path(tempfile.mkdtemp(prefix="pgbinding-devservers-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pg(workdir: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(workdir / "pgdata")
    try:
        yield server.start()
    finally:
        server.stop()


def _query(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536


def test_postgres_lifecycle(pg: EmbeddedPostgres) -> None:
    assert pg.is_running()
    assert pg.dsn() == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    assert (pg.datadir / "PG_VERSION").read_text().strip() == "18"
    assert _query(pg.dsn(), "SHOW fsync") == "off"
    assert _query(pg.dsn(), "SHOW max_connections") == "200"
    if os.geteuid() == 0:  # Postgres refuses to run as root: the wheel's system user runs it
        assert pwd.getpwuid((pg.datadir / "PG_VERSION").stat().st_uid).pw_name == PG_SYSTEM_USER
    state = json.loads((pg.datadir / pg.STATE_FILE).read_text())
    assert state["port"] == pg.port

    # LISTEN/NOTIFY round trip between two connections.
    with (
        psycopg.connect(pg.dsn(), autocommit=True) as listener,
        psycopg.connect(pg.dsn(), autocommit=True) as notifier,
    ):
        listener.execute("LISTEN pgbinding_test")
        notifier.execute("SELECT pg_notify('pgbinding_test', 'hello')")
        received = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
        assert received == [("pgbinding_test", "hello")]

    # PL/pgSQL works (the language ships in the embedded build).
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (n int)")
        conn.execute("DO $$ BEGIN FOR i IN 1..5 LOOP INSERT INTO t VALUES (i); END LOOP; END $$")
        assert conn.execute("SELECT sum(n) FROM t").fetchone() == (15,)

    # Restart: same port, data kept, new connections work.
    port = pg.port
    pg.restart()
    assert pg.port == port
    assert _query(pg.dsn(), "SELECT count(*) FROM t") == 5

    # Crash: SIGKILL the postmaster, start again, crash recovery keeps committed data.
    # The server runs with synchronous_commit=off, so a commit is only guaranteed to survive
    # a crash once the WAL writer has flushed it (~200 ms); ask for a synchronous commit.
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (100)")
        conn.execute("CHECKPOINT")  # the next row then survives through WAL replay only
        conn.execute("SET synchronous_commit = on")
        conn.execute("INSERT INTO t VALUES (1000)")
        victim = psycopg.connect(pg.dsn(), autocommit=True)
        pg.kill()
        assert not pg.is_running()
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        victim.close()
    pg.kill()  # killing a dead server is a no-op
    pg.start()
    assert pg.port == port
    assert _query(pg.dsn(), "SELECT sum(n) FROM t") == 1115
    log = pg.log_file.read_text()
    assert "not properly shut down; automatic recovery in progress" in log

    pg.stop()
    assert not pg.is_running()
    pg.stop()  # idempotent
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.dsn(), connect_timeout=2)


def test_postgres_create_database_and_tools(pg: EmbeddedPostgres) -> None:
    dsn = pg.create_database("pgbinding demo")
    assert dsn.endswith("/pgbinding%20demo")
    assert pg.create_database("pgbinding demo") == dsn  # idempotent
    assert _query(dsn, "SELECT current_database()") == "pgbinding demo"
    for program in ("initdb", "pg_ctl", "postgres", "psql", "pgbench"):
        assert os.access(pg.bin(program), os.X_OK)
    with pytest.raises(FileNotFoundError):
        pg.bin("no-such-program")


def test_postgres_second_start_reuses_data_and_running_server(workdir: Path) -> None:
    datadir = workdir / "pgdata"
    with EmbeddedPostgres(datadir) as first:
        port = first.port
        with psycopg.connect(first.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x text)")
            conn.execute("INSERT INTO kept VALUES ('still here')")
        # A second start (as a second demo run would) adopts the running server and its port.
        second = EmbeddedPostgres(datadir, port=free_port()).start()
        assert second.port == port
        assert second.is_running()
    assert not first.is_running()  # no other process uses it (see the test below for those)

    # Warm start on the existing data directory: no initdb, data and (free) port kept.
    started = time.monotonic()
    with EmbeddedPostgres(datadir) as third:
        warm = time.monotonic() - started
        assert _query(third.dsn(), "SELECT x FROM kept") == "still here"
        assert third.port == port
    assert warm < 10


def test_postgres_explicit_port_and_failure_message(workdir: Path) -> None:
    port = free_port()
    with EmbeddedPostgres(workdir / "a", port=port) as pg:
        assert pg.port == port
        assert _query(pg.dsn(), "SELECT 1") == 1
        # The port is taken: the error says so and quotes the server log.
        with pytest.raises(EmbeddedServerError) as excinfo:
            EmbeddedPostgres(workdir / "b", port=port).start()
    message = str(excinfo.value)
    assert "last lines of" in message
    assert "could not" in message  # "could not bind IPv4 address ...", "could not create ..."


ADOPT = """
import sys, time
from devservers import EmbeddedPostgres
pg = EmbeddedPostgres(sys.argv[1]).start()
print(pg.port, flush=True)
if sys.argv[2] == "hold":
    sys.stdin.readline()  # until the test says so
    pg.stop()
elif sys.argv[2] == "crash":
    import os
    os._exit(0)  # dies without letting go
else:
    pg.stop()
"""


def _adopt(datadir: Path, how: str) -> subprocess.Popen[str]:
    """Another process that adopts the server on *datadir* (``python -c ADOPT``)."""
    return subprocess.Popen(
        [sys.executable, "-c", ADOPT, str(datadir), how],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_postgres_stop_stops_only_what_nobody_else_uses(workdir: Path) -> None:
    """The wheel's reference count: a process that adopted the server and lets go of it
    leaves it running for the one that started it, and the other way round; a process that
    died without letting go does not keep it running."""
    datadir = workdir / "pgdata"
    with EmbeddedPostgres(datadir) as pg:
        other = _adopt(datadir, "release")
        assert other.stdout is not None
        assert int(other.stdout.readline()) == pg.port
        assert other.wait(30) == 0
        assert pg.is_running()
        assert _query(pg.dsn(), "SELECT 1") == 1

        holder = _adopt(datadir, "hold")
        assert holder.stdout is not None and holder.stdin is not None
        assert int(holder.stdout.readline()) == pg.port
        assert pg.other_users() == [holder.pid]
    try:
        # The starter let go first: the server stays up for the holder.
        assert pg.is_running()
        assert _query(pg.dsn(), "SELECT 1") == 1
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        assert holder.wait(30) == 0
    assert not pg.is_running()  # the last one let go

    # A process that died holding the server is not counted when the last live one lets go.
    with EmbeddedPostgres(datadir) as pg:
        crashed = _adopt(datadir, "crash")
        assert crashed.wait(30) == 0
    assert not pg.is_running()


def test_redis() -> None:
    redis = pytest.importorskip("redis")
    with EmbeddedRedis() as server:
        assert server.is_running()
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
            client.set("pgbinding", "works")
            assert client.get("pgbinding") == b"works"
        finally:
            client.close()
        assert server.log_file is not None and server.log_file.exists()
        redis_dir = server.directory  # temporary, removed on stop
        assert redis_dir is not None and redis_dir.is_dir()
    assert not server.is_running()
    assert not redis_dir.exists()
    server.stop()  # idempotent


def test_redis_crash_and_restart_on_the_same_port(workdir: Path) -> None:
    """Crash and restart: same URL, empty data (nothing is persisted). The Redis that tests
    kill is ``tests.support.processes.RedisServer``, on the binary devservers finds."""
    redis = pytest.importorskip("redis")
    server = RedisServer(workdir).start()
    try:
        client = redis.Redis.from_url(server.url)
        try:
            client.set("pgbinding", "works")
        finally:
            client.close()
        url = server.url
        server.kill()
        assert not server.running
        server.start()
        assert server.url == url
        client = redis.Redis.from_url(server.url)
        try:
            assert client.get("pgbinding") is None
        finally:
            client.close()
    finally:
        server.stop()
    assert not server.running
    server.stop()  # idempotent
