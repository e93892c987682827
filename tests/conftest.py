"""Shared fixtures: a listener running on its own event loop, and collectors of group events."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import psycopg
import pytest
from channels.layers import InMemoryChannelLayer
from django.db import connection

from pgbinding.delivery.listener import Listener, conninfo_from_django
from pgbinding.dispatch import unpack


class Collector:
    """A real channel in the listener's channel layer, added to some groups, recording events."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.messages.extend(unpack(message))

    def payloads(self, stream: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [m["payload"] for m in self.messages if stream is None or m["stream"] == stream]

    def ids(self, stream: str | None = None) -> list[int]:
        """The log id of each event (every group event carries one)."""
        with self._lock:
            return [m["id"] for m in self.messages if stream is None or m["stream"] == stream]

    def actions(self, stream: str | None = None) -> list[tuple[str, Any]]:
        return [(p["action"], p.get("pk")) for p in self.payloads(stream)]

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()


class ListenerHarness:
    """Runs :class:`Listener` in a thread with its own loop and a real in-memory channel layer."""

    def __init__(self, **options: Any) -> None:
        self.layer = InMemoryChannelLayer(capacity=1_000_000, expiry=600)
        self.options = options
        self.loop = asyncio.new_event_loop()
        self.listener = Listener.from_settings(channel_layer=self.layer, **options)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._receivers: list[asyncio.Task[None]] = []
        self.run_future: Any = None

    @property
    def error(self) -> BaseException | None:
        if self.run_future is not None and self.run_future.done():
            return self.run_future.exception() or RuntimeError("listener returned early")
        return None

    def start(self, wait_active: bool = True) -> ListenerHarness:
        self.run_future = asyncio.run_coroutine_threadsafe(self.listener.run(), self.loop)
        if wait_active:
            self.wait(lambda: self.listener.active.is_set(), "listener to become active")
            self.sync()
        return self

    def call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def collect(self, *groups: str) -> Collector:
        collector = Collector()

        async def setup() -> None:
            channel = await self.layer.new_channel()
            for group in groups:
                await self.layer.group_add(group, channel)

            async def receive() -> None:
                while True:
                    collector.add(await self.layer.receive(channel))

            self._receivers.append(asyncio.ensure_future(receive()))

        self.call(setup())
        return collector

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.error is not None:
                raise AssertionError(f"listener crashed: {self.error!r}") from self.error
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.01)

    def sync(self, timeout: float = 20) -> None:
        """Wait until every change committed so far has been delivered to the channel layer."""
        with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
            pump = self.listener.pump  # logical capture: first into the log
            if pump is not None:
                lsn = cast(  # a function call: always one row
                    tuple[Any, ...],
                    conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'").fetchone(),
                )
                # Decoding reads flushed WAL only (the test server commits asynchronously):
                # flush it with a durable commit of a transaction that has an id.
                with conn.transaction():
                    conn.execute("SET LOCAL synchronous_commit = on")
                    conn.execute("SELECT pg_current_xact_id()")
                self.wait(lambda: pump.decoded_upto >= int(lsn[0]), "the pump", timeout)
            row = conn.execute("SELECT coalesce(max(id), 0) FROM pgbinding_change").fetchone()
        target = int(row[0]) if row else 0
        log, listener = self.listener.log, self.listener
        self.wait(
            lambda: listener.saved_position >= target and not log.gaps and listener.idle.is_set(),
            f"listener to reach position {target} (at {log.position}, gaps {log.gaps})",
            timeout,
        )
        self.call(asyncio.sleep(0.02))  # let the receivers drain their channels

    def stop(self) -> None:
        if self.run_future is not None:
            self.loop.call_soon_threadsafe(self.listener.stop)
            self.run_future.result(20)
            self.run_future = None

    def close(self) -> None:
        self.stop()

        async def cancel_receivers() -> None:
            for task in self._receivers:
                task.cancel()

        self.call(cancel_receivers())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def listener(transactional_db: None) -> Iterator[ListenerHarness]:
    harness = ListenerHarness().start()
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def make_listener(transactional_db: None) -> Iterator[Callable[..., ListenerHarness]]:
    made: list[ListenerHarness] = []

    def make(start: bool = True, **options: Any) -> ListenerHarness:
        harness = ListenerHarness(**options)
        made.append(harness)
        return harness.start() if start else harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def raw_conninfo(transactional_db: None) -> str:
    """A libpq connection string to the test database, for writers that bypass Django."""
    connection.ensure_connection()
    return conninfo_from_django()


class RedisCollector:
    """A channel on a real channels-redis layer (pgbinding's, as ``channel_layers()``
    configures), in its own thread and loop, recording events."""

    def __init__(self, redis_url: str, *groups: str) -> None:
        from pgbinding.layers import RedisChannelLayer

        self.collector = Collector()
        self.loop = asyncio.new_event_loop()
        self.layer = RedisChannelLayer(
            hosts=[{"address": redis_url, "socket_timeout": None}], capacity=100_000, expiry=600
        )
        self.groups = groups
        self._ready = threading.Event()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(10), "redis collector did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            # Closed here, in its own thread: left to the garbage collector, channels-redis's
            # close hook (it flushes the loop's pools) ran inside a later test's running loop
            # and failed there ("Cannot run the event loop while another loop is running").
            self.loop.close()

    async def _main(self) -> None:
        channel = await self.layer.new_channel()
        for group in self.groups:
            await self.layer.group_add(group, channel)
        self._ready.set()
        while not self._stop:
            try:
                message = await asyncio.wait_for(self.layer.receive(channel), 0.2)
            except TimeoutError:
                continue
            self.collector.add(message)
        await self.layer.flush()

    def stop(self) -> None:
        self._stop = True
        self.thread.join(10)


def subprocess_env(redis_url: str | None = None) -> dict[str, str]:
    """Environment for a child process (pglisten, daphne) using this test's database."""
    import os

    settings_dict = connection.settings_dict
    url = (
        f"postgresql://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}"
        f"/{settings_dict['NAME']}"
    )
    env = {**os.environ, "PGBINDING_TEST_DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    if redis_url:
        env["PGBINDING_TEST_CHANNEL_LAYER_REDIS"] = redis_url
    return env


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def log_max_id() -> int:
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM pgbinding_change").fetchone()
    return int(row[0]) if row else 0
