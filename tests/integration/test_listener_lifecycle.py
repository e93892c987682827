"""The listener as an operator runs it: restarts, crashes, takeovers, Postgres going away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from django.db import connection

from pgbinding.delivery import changelog
from pgbinding.delivery.listener import conninfo_from_django
from tests import servers
from tests.conftest import ListenerHarness, RedisCollector, log_max_id, subprocess_env, wait_for
from tests.testapp.models import Counter, Item

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


class Pglisten:
    """``manage.py pglisten`` in its own process, its output kept in a file."""

    def __init__(self, env: dict[str, str], tmp_path: Path, name: str) -> None:
        self.out = tmp_path / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "django", "pglisten"],
            cwd=ROOT,
            env=env,
            stdout=self.out.open("w"),
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.out.read_text()

    def wait_output(self, text: str, timeout: float = 20) -> None:
        wait_for(
            lambda: text in self.output(),
            f"{text!r} in pglisten output:\n" + self.output(),
            timeout,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.redis
def test_sigkill_and_takeover_lose_nothing(redis_url: str, tmp_path: Path) -> None:
    """Two pglisten processes; the active one is SIGKILLed while writes continue; the standby
    takes over within seconds; the killed one comes back as standby. Every committed change
    reaches the group; a change is sent twice only if it was in flight at the kill."""
    env = subprocess_env(redis_url)
    collector = RedisCollector(redis_url, "counters")
    first = Pglisten(env, tmp_path, "first")
    first.wait_output("Caught up")
    second = Pglisten(env, tmp_path, "second")
    second.wait_output("standing by")
    start_id = log_max_id()

    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                conn.execute("INSERT INTO testapp_counter (key, n) VALUES (%s, %s)", [f"w{n}", n])
                written.append(n)
                time.sleep(0.002)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(1.0)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        killed_at = time.monotonic()
        second.wait_output("took over", timeout=15)
        takeover = time.monotonic() - killed_at
        time.sleep(0.5)
        again = Pglisten(env, tmp_path, "again")
        again.wait_output("standing by")
        time.sleep(1.0)
    finally:
        stop.set()
        writer.join()
    end_id = log_max_id()
    try:
        wait_for(
            lambda: len({p["position"] for p in collector.collector.payloads()}) >= len(written),
            "every change to reach the collector",
            timeout=30,
        )
        time.sleep(0.3)
    finally:
        collector.stop()
        second.stop()
        again.stop()

    payloads = collector.collector.payloads("counters")
    positions = [p["position"] for p in payloads]
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        logged = cast(  # count(*): always one row
            tuple[Any, ...],
            conn.execute(
                "SELECT count(*) FROM pgbinding_change WHERE table_name = 'testapp_counter'"
                " AND id > %s AND id <= %s",
                [start_id, end_id],
            ).fetchone(),
        )[0]
    assert logged == len(written)
    keys = {p["data"]["key"] for p in payloads}
    assert keys == {f"w{n}" for n in written}, "a committed change was lost across the kill"
    duplicates = len(positions) - len(set(positions))
    assert duplicates <= 500, "only the batch in flight at the kill may be sent again"
    assert takeover < 10
    assert Counter.objects.count() == len(written)


@pytest.mark.redis
def test_sigterm_stops_cleanly_and_saves_position(redis_url: str, tmp_path: Path) -> None:
    env = subprocess_env(redis_url)
    proc = Pglisten(env, tmp_path, "term")
    proc.wait_output("Caught up")
    Item.objects.create(name="before-stop")
    target = log_max_id()
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        wait_for(
            lambda: (
                cast(  # the listener's row exists once it has started
                    tuple[Any, ...],
                    conn.execute(
                        "SELECT position FROM pgbinding_listener WHERE name = 'default'"
                    ).fetchone(),
                )[0]
                >= target
            ),
            "the listener to save its position",
        )
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(10) == 0
    out = proc.output()
    assert "Received SIGTERM" in out
    assert f"stopped at position {target}" in out
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        state = conn.execute("SELECT sleeping FROM pgbinding_state").fetchone()
        sleeping = cast(tuple[Any, ...], state)[0]  # pgbinding_state: always one row
    assert sleeping is False, "a stopped listener should not make writers NOTIFY"


def test_restart_resumes_from_saved_position(make_listener: Callable[..., ListenerHarness]) -> None:
    first = make_listener()
    Item.objects.create(name="one")
    first.sync()
    first.stop()
    Item.objects.create(name="while-down-1")
    Item.objects.create(name="while-down-2")
    second = make_listener(start=False)
    items = second.collect("items")
    second.start()
    second.sync()
    assert [p["data"]["name"] for p in items.payloads()] == ["while-down-1", "while-down-2"]


def test_postgres_restart_under_the_listener(
    make_listener: Callable[..., ListenerHarness], caplog: pytest.LogCaptureFixture
) -> None:
    server = servers.postgres_server()
    if server is None:
        pytest.skip("needs the embedded Postgres (PGBINDING_TEST_DATABASE_URL is set)")
    harness = make_listener()
    items = harness.collect("items")
    server.restart()
    connection.close()  # Django's own connection died with the server
    Item.objects.create(name="after-restart")
    harness.sync(timeout=40)
    assert [p["data"]["name"] for p in items.payloads()] == ["after-restart"]
    assert "reconnecting" in caplog.text


def test_prune_removes_only_old_delivered_entries_without_blocking_writers(
    listener: ListenerHarness,
) -> None:
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        # Listener names left by earlier tests (the table outlives each test) would hold the
        # prune back at their positions: this test is about one listener.
        conn.execute("DELETE FROM pgbinding_listener WHERE name <> %s", [listener.listener.name])
    for n in range(5):
        Item.objects.create(name=f"p{n}")
    listener.sync()
    delivered = listener.listener.saved_position
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        conn.execute("UPDATE pgbinding_change SET created_at = now() - interval '2 days'")
        with psycopg.connect(conninfo_from_django()) as writer:
            # A writer mid-transaction: its log row is uncommitted while the prune runs.
            writer.execute(
                "INSERT INTO testapp_item (name, value, status, price, uid, extra,"
                " body, secret) VALUES ('w', 1, 'open', 0, gen_random_uuid(), '{}',"
                " '', '')"
            )
            conn.execute("SET statement_timeout = '5s'")
            removed = listener.call(_prune(retention=24 * 3600.0))
            writer.commit()
        remaining = [r[0] for r in conn.execute("SELECT id FROM pgbinding_change ORDER BY id")]
    assert removed >= 5
    assert all(i > delivered for i in remaining)
    assert remaining, "the writer's change, not yet delivered, must stay"


async def _prune(retention: float) -> int:
    async with await psycopg.AsyncConnection.connect(
        conninfo_from_django(), autocommit=True
    ) as conn:
        return await changelog.prune(conn, retention)


def test_lag_and_catch_up_are_logged(
    make_listener: Callable[..., ListenerHarness], caplog: pytest.LogCaptureFixture
) -> None:
    Item.objects.bulk_create([Item(name=f"l{n}") for n in range(30)])
    harness = make_listener(lag_log_interval=0.0, batch_size=10)
    harness.sync()
    text = caplog.text
    assert "resuming at position" in text
    assert "behind" in text
    assert "Caught up at position" in text


def test_environment_of_children_points_at_the_test_database() -> None:
    assert "test_" in subprocess_env()["PGBINDING_TEST_DATABASE_URL"]
    assert os.environ.get("DJANGO_SETTINGS_MODULE") == "tests.settings"
