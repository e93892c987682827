"""One socket's long database work (a replay) does not hold up the other sockets' requests.

Channels' ``database_sync_to_async`` runs every call of a process on one thread; a resuming
``subscribe`` that replays 10,000 changes kept every other socket's ``list`` waiting for the
whole replay (bench/replay.py: 12 ms became 1.4 s). Here the replay is held inside its
database call until another socket's ``list`` has been answered: on one shared thread that
``list`` could never run.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User

from pgbinding.websocket import subscriptions
from tests.e2e.conftest import Live
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_replay_in_progress_does_not_hold_up_another_sockets_list(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    staff = await sync_to_async(User.objects.create)(username="staff", is_staff=True)
    item = await sync_to_async(Item.objects.create)(name="a", value=0)
    await live.settle()
    first = await live.connect("/all/", user=staff)
    position = (await first.request("items", "subscribe"))["data"]["position"]
    for value in range(1, 6):
        await sync_to_async(Item.objects.filter(pk=item.pk).update)(value=value)
    await live.settle()

    replay_started = threading.Event()
    other_answered = threading.Event()
    real_snapshot = subscriptions.snapshot

    def held_snapshot(*args: Any, **kwargs: Any) -> Any:
        replay_started.set()
        # Finish the replay only once the other socket was served (or give up after 10 s:
        # then the other socket's request below has timed out and the test fails).
        other_answered.wait(10)
        return real_snapshot(*args, **kwargs)

    monkeypatch.setattr(subscriptions, "snapshot", held_snapshot)
    resuming = await live.connect("/all/", user=staff)
    await resuming.send(
        {
            "stream": "items",
            "payload": {"action": "subscribe", "request_id": "s", "since": position},
        }
    )
    assert await asyncio.to_thread(replay_started.wait, 10), "the replay did not start"

    other = await live.connect("/all/", user=staff)
    try:
        reply = await other.request("items", "list")
    finally:
        other_answered.set()
    assert reply["status"] == 200
    assert [row["data"]["value"] for row in reply["data"]["results"]] == [5]

    frames = [f["payload"] for f in await resuming.events()]
    replayed = [p["data"]["value"] for p in frames if p.get("subscription") == "s"]
    assert replayed == [1, 2, 3, 4, 5]


async def test_database_work_leaves_no_connection_open(live: Live) -> None:
    """Each call on the database threads closes its connection (CONN_MAX_AGE = 0 here)."""
    import psycopg

    from pgbinding.delivery.listener import conninfo_from_django

    def others() -> dict[int, str]:
        """Sessions other than the listener's and this one: pid -> last query."""
        with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND application_name NOT LIKE 'pgbinding%'"
            ).fetchall()
        return {int(pid): str(query) for pid, query in rows}

    staff = await sync_to_async(User.objects.create)(username="staff", is_staff=True)
    await sync_to_async(Item.objects.create)(name="a", value=0)
    before = await asyncio.to_thread(others)  # the test's own connection
    socket = await live.connect("/all/", user=staff)
    for _ in range(3):
        assert (await socket.request("items", "list"))["status"] == 200
    assert (await socket.request("items", "subscribe"))["status"] == 200

    after = await asyncio.to_thread(others)
    assert {pid: query for pid, query in after.items() if pid not in before} == {}
