"""Long replays are built in a worker process (:mod:`pgbinding.processes`), with the same
frames as on a database thread.

On a database thread, a 10,000-change replay holds the server process's GIL for about half a
second, and every other socket of the process waits behind it (bench/replay.py: their ``list``
p99 went from 12 to 123 ms). In a worker process it uses another core. What the tests here
check is that the work goes there, that what it sends is exactly what the thread would have
sent (for a user judged by a read rule and an object permission, with a filter), and that a
worker that dies costs a replay nothing. The effect on the other sockets is measured by
bench/replay.py, not timed here.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User

from pgbinding import processes
from pgbinding.positions import Cursor
from pgbinding.websocket import subscriptions
from tests.e2e.conftest import Live
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)

CHANGES = 30


@pytest.fixture
def small_long_replays(settings: Any) -> Any:
    """Replays of 10 changes or more count as long; the workers stop after the test."""
    settings.PGBINDING = {**settings.PGBINDING, "REPLAY_IN_PROCESS_FROM": 10}
    yield settings
    processes.shutdown()


async def worker_pid(within: float = 60) -> int:
    """Start the workers if needed and wait until one has Django set up; its pid."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        pid = await asyncio.to_thread(processes.run, os.getpid)
        if pid is not None:
            assert pid != os.getpid()
            return pid
        assert loop.time() < deadline, "no replay worker process started"
        await asyncio.sleep(0.1)


async def changes(live: Live) -> tuple[User, str]:
    """Users alice and bob; a position, then CHANGES changes after it: their items, owners
    handed over, values moving in and out of the filter ``value__gte=5``, a delete.
    (alice, the position)."""
    alice = await sync_to_async(User.objects.create)(username="alice")
    bob = await sync_to_async(User.objects.create)(username="bob")
    items = [
        await sync_to_async(Item.objects.create)(name=f"i{n}", value=n, owner=alice)
        for n in range(4)
    ]
    await live.settle()
    watcher = await live.connect("/all/", user=await sync_to_async(staff)())
    position: str = (await watcher.request("items", "subscribe"))["data"]["position"]
    done = 0
    while done < CHANGES - 1:
        item = items[done % len(items)]
        owner = bob if done % 3 == 0 else alice
        await sync_to_async(Item.objects.filter(pk=item.pk).update)(
            value=(done * 7) % 10, owner=owner
        )
        done += 1
    await sync_to_async(Item.objects.filter(pk=items[0].pk).delete)()
    await live.settle()
    return alice, position


def staff() -> User:
    return User.objects.get_or_create(username="staff", defaults={"is_staff": True})[0]


def counted() -> float:
    from pgbinding import metrics

    if not metrics.available():
        pytest.skip("prometheus_client is not installed")
    import prometheus_client

    value = prometheus_client.REGISTRY.get_sample_value("pgbinding_replays_built_in_process_total")
    return value or 0.0


async def resume(live: Live, user: User, position: str) -> list[dict[str, Any]]:
    socket = await live.connect("/all/", user=user)
    await socket.send(
        {
            "stream": "myitems",
            "payload": {
                "action": "subscribe",
                "request_id": "s",
                "since": position,
                "filter": {"value__gte": 5},
            },
        }
    )
    frames = []
    while True:
        frame = await socket.c.receive_json_from(timeout=30)
        frames.append(frame)
        if frame["payload"].get("request_id") == "s":
            assert frame["payload"]["status"] == 200, frame
            return frames


async def test_a_long_replay_is_built_in_a_worker_with_the_frames_a_thread_builds(
    live: Live, small_long_replays: Any
) -> None:
    alice, position = await changes(live)

    small_long_replays.PGBINDING = {**small_long_replays.PGBINDING, "REPLAY_PROCESSES": 0}
    in_thread = await resume(live, alice, position)
    small_long_replays.PGBINDING = {**small_long_replays.PGBINDING, "REPLAY_PROCESSES": 1}
    pid = await worker_pid()
    before = counted()
    in_worker = await resume(live, alice, position)
    assert counted() == before + 1, "the replay was not built in the worker process"
    assert await worker_pid() == pid

    events = [f["payload"] for f in in_thread[:-1]]
    assert events, "alice was replayed nothing: the test's changes do not exercise the rule"
    assert {e["action"] for e in events} >= {"create", "update", "delete"}
    assert all(e["subscription"] == "s" for e in events)
    assert in_worker[:-1] == in_thread[:-1]
    assert in_worker[-1]["payload"]["data"]["replayed"] == len(events)
    # Rows while bob owned them never reach alice, whichever process judged them.
    assert {e["data"]["owner"] for e in events if e["action"] != "delete"} == {alice.pk}


async def test_a_replay_worker_that_died_costs_no_replay(
    live: Live, small_long_replays: Any
) -> None:
    alice, position = await changes(live)
    expected = await resume(live, alice, position)  # starts the workers; built in a thread
    pid = await worker_pid()

    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    # Built in a thread, or in the worker that replaced the killed one.
    assert await resume(live, alice, position) == expected
    replacement = await worker_pid()
    assert replacement != pid
    before = counted()
    assert await resume(live, alice, position) == expected
    assert counted() == before + 1


async def test_short_replays_and_bindings_that_do_not_pickle_stay_in_the_server_process(
    live: Live, small_long_replays: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, position = await changes(live)
    await worker_pid()
    expected = await resume(live, alice, position)

    before = counted()
    small_long_replays.PGBINDING = {**small_long_replays.PGBINDING, "REPLAY_IN_PROCESS_FROM": 1000}
    await worker_pid()
    assert await resume(live, alice, position) == expected
    assert counted() == before

    small_long_replays.PGBINDING = {**small_long_replays.PGBINDING, "REPLAY_IN_PROCESS_FROM": 10}
    await worker_pid()
    # A scope entry that cannot be pickled is left behind; a user that cannot be is not sent
    # at all: the replay is built here.
    real = subscriptions._portable

    def unpicklable(sub: subscriptions.Subscription) -> subscriptions.Subscription:
        portable = real(sub)
        portable.binding.user = lambda: None
        return portable

    monkeypatch.setattr(subscriptions, "_portable", unpicklable)
    assert await resume(live, alice, position) == expected
    assert counted() == before


def die() -> int:
    """A job that kills its worker while the server waits for the answer."""
    os.kill(os.getpid(), signal.SIGKILL)
    return 0  # (never reached)


async def test_a_worker_that_dies_during_a_job_is_reaped_and_replaced_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server sees the pipe close and its watch sees the exit, at about the same time:
    the job falls back (None), the dead worker is reaped and exactly one worker replaces it."""
    import logging

    import psutil

    caplog.set_level(logging.INFO, logger="pgbinding.processes")
    try:
        pid = await worker_pid()
        assert await asyncio.to_thread(processes.run, die) is None
        replacement = await worker_pid()
        assert replacement != pid
        assert not psutil.pid_exists(pid), "the dead worker was left a zombie"
        await asyncio.sleep(0.5)  # a second replacement, if one were started, is ready by now
        assert processes.worker_pids() == [replacement]
        assert caplog.text.count(" ready") == 2, caplog.text
    finally:
        processes.shutdown()


def test_the_worker_copy_keeps_the_scope_entries_that_pickle() -> None:
    import pickle

    from tests.testapp.bindings import OwnedItemBinding

    binding = OwnedItemBinding(user=None, scope={"path": "/all/", "lock": os.getpid, "f": print})
    binding.scope["local"] = lambda: None
    sub = subscriptions.Subscription("s", "myitems", binding, [], None, Cursor(0))
    portable = subscriptions._portable(sub)
    assert set(portable.binding.scope) == {"path", "lock", "f"}
    assert "local" in sub.binding.scope  # the socket's own binding is left as it was
    assert pickle.loads(pickle.dumps(portable)).binding.scope["path"] == "/all/"


def test_a_worker_that_cannot_start_leaves_replays_in_the_server_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker whose Django setup fails is reported, replays stay in the server process, and
    another is tried RETRY_START later (here at once)."""
    import logging
    import time

    processes.shutdown()
    monkeypatch.setattr(processes, "_settings_module", lambda: "no_such_settings_module")
    monkeypatch.setattr(processes, "RETRY_START", 0.0)
    caplog.set_level(logging.WARNING, logger="pgbinding.processes")
    try:
        assert processes.run(os.getpid) is None  # starts one
        deadline = time.monotonic() + 30
        while "failed to start" not in caplog.text:
            assert time.monotonic() < deadline, "the failed start was not reported"
            time.sleep(0.05)
        assert "no_such_settings_module" in caplog.text
        deadline = time.monotonic() + 30
        while caplog.text.count("failed to start") < 2:  # each long replay may try again
            assert processes.run(os.getpid) is None
            assert time.monotonic() < deadline, "no second try"
            time.sleep(0.05)
        assert processes.worker_pids() == []
    finally:
        processes.shutdown()
