"""Shared fixtures: a listener running on its own event loop, and collectors of group events."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from channels.layers import InMemoryChannelLayer
from django.db import connection

from pgbinding.listener import Listener, conninfo_from_django


class Collector:
    """A real channel in the listener's channel layer, added to some groups, recording events."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.messages.append(message)

    def payloads(self, stream: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                m["payload"] for m in self.messages if stream is None or m["stream"] == stream
            ]

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
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._receivers: list[asyncio.Task[None]] = []
        self.error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.listener.run())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
        finally:
            for task in self._receivers:
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))

    def start(self, wait_active: bool = True) -> ListenerHarness:
        self.thread.start()
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
        self.loop.call_soon_threadsafe(self.listener.stop)
        self.thread.join(20)
        assert not self.thread.is_alive(), "listener did not stop within 20 s"
        self.loop.close()


@pytest.fixture
def listener(transactional_db: None) -> Iterator[ListenerHarness]:
    harness = ListenerHarness().start()
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture
def make_listener(transactional_db: None) -> Iterator[Callable[..., ListenerHarness]]:
    made: list[ListenerHarness] = []

    def make(start: bool = True, **options: Any) -> ListenerHarness:
        harness = ListenerHarness(**options)
        made.append(harness)
        return harness.start() if start else harness

    yield make
    for harness in made:
        if harness.thread.is_alive():
            harness.stop()


@pytest.fixture
def raw_conninfo(transactional_db: None) -> str:
    """A libpq connection string to the test database, for writers that bypass Django."""
    connection.ensure_connection()
    return conninfo_from_django()
