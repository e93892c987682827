"""Default deny holds while things fail: the production shape (pglisten with a standby,
channels-redis, daphne, real WebSocket clients signed in with a session cookie) with Redis
killed and restarted while another user's rows change, and resumes replaying what was missed.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.contrib.auth.models import User
from django.test import Client

from pgbinding.delivery.listener import conninfo_from_django
from tests.faults.conftest import Report, Stack, report_exits
from tests.support.capture import BACKENDS
from tests.support.processes import WsClient, wait_until
from tests.testapp.models import Item

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

ROWS_EACH = 6


def alice_and_bob(rows_each: int) -> tuple[User, User, dict[int, list[int]]]:
    """Users alice and bob, each owning ``rows_each`` items: (alice, bob, pks by user pk)."""
    alice = User.objects.create(username="alice")
    bob = User.objects.create(username="bob")
    owned = {
        user.pk: [
            Item.objects.create(name=f"{user.username}{n}", owner=user).pk for n in range(rows_each)
        ]
        for user in (alice, bob)
    }
    return alice, bob, owned


def session_cookie(user: User) -> dict[str, str]:
    client = Client()
    client.force_login(user)
    return {"Cookie": f"sessionid={client.cookies['sessionid'].value}"}


class ItemWriter:
    """One thread incrementing ``value`` of random items, one committed transaction each,
    recording every committed value per item."""

    def __init__(self, pks: list[int]) -> None:
        self.pks = pks
        self.committed: dict[int, list[int]] = {pk: [] for pk in pks}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="item-writer", daemon=True)

    def _run(self) -> None:
        rnd = random.Random(7)
        with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
            # The embedded server commits asynchronously: a value counts as committed only
            # once durable, since some tests restart Postgres (immediate) after the writes.
            conn.execute("SET synchronous_commit = on")
            while not self._stop.is_set():
                pk = rnd.choice(self.pks)
                row = conn.execute(
                    "UPDATE testapp_item SET value = value + 1 WHERE id = %s RETURNING value",
                    [pk],
                ).fetchone()
                assert row is not None
                self.committed[pk].append(int(row[0]))
                time.sleep(0.01)

    def start(self) -> ItemWriter:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


def seen_values(client: WsClient, stream: str) -> tuple[dict[Any, list[int]], set[Any]]:
    """(values of each row in arrival order, every pk any frame of ``stream`` named: events,
    replays and subscribe snapshots)."""
    values: dict[Any, list[int]] = {}
    pks: set[Any] = set()
    for frame in client.snapshot()[0]:
        if frame.data.get("stream") != stream:
            continue
        payload = frame.payload
        results = (payload.get("data") or {}).get("results") if "status" in payload else None
        for row in results or []:
            pks.add(row.get("pk"))
        if "pk" in payload and "status" not in payload:
            pks.add(payload["pk"])
            if payload.get("action") in ("create", "update"):
                values.setdefault(payload["pk"], []).append(payload["data"]["value"])
    return values, pks


@pytest.mark.parametrize("capture", BACKENDS)
def test_redis_killed_while_two_users_rows_change_leaks_nothing_and_loses_nothing(
    make_stack: Callable[..., Stack], capture: str
) -> None:
    """alice and bob each own ROWS_EACH items of stream ``myitems`` (read rule
    ``Owner("owner")``). alice subscribes (``/all/``, resuming with ``since`` whenever the server
    closes her socket) and has a group socket (``/mine/``, every socket joins the stream's
    group); bob subscribes; an anonymous socket asks for both. A writer changes random items of
    both users while Redis is SIGKILLed for 2.5 s and started again empty.

    Required: no row of one user ever reaches the other (event, replay or snapshot), the
    anonymous socket gets a 403 and no row at all, and each subscriber ends with every
    committed value of each of its rows, in commit order (a value seen again after a cut-off
    replay is allowed: applying an event twice is harmless)."""
    stack = make_stack("core", capture=capture)
    alice, bob, owned = alice_and_bob(ROWS_EACH)
    stack.pglisten("pglisten-1").wait_output("Caught up", timeout=30)
    stack.pglisten("pglisten-2")
    server = stack.daphne("daphne")
    server.wait_ready()
    subscribers = {
        user.pk: stack.client(
            server.url("/all/"), user.username, subscribe="myitems", headers=session_cookie(user)
        )
        for user in (alice, bob)
    }
    group = stack.client(server.url("/mine/"), "alice-group", headers=session_cookie(alice))
    nobody = stack.client(server.url("/mine/"), "anonymous", subscribe="myitems")
    for client in [*subscribers.values(), group]:
        client.wait_subscribed()
    wait_until(lambda: bool(nobody.snapshot()[0]), lambda: "the anonymous subscribe's reply")

    writer = ItemWriter(owned[alice.pk] + owned[bob.pk]).start()
    time.sleep(3)
    stack.redis.kill()
    time.sleep(2.5)
    stack.redis.start()
    time.sleep(5)
    writer.stop()

    def caught_up() -> bool:
        for user_pk, client in subscribers.items():
            values, _ = seen_values(client, "myitems")
            for pk in owned[user_pk]:
                final = writer.committed[pk][-1:] or [0]
                if max(values.get(pk, [0])) < final[0]:
                    return False
        return True

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not caught_up():
        time.sleep(0.2)
    time.sleep(1)  # anything that would leak late has had its chance

    report = Report("Redis killed while alice's and bob's rows change")
    report_exits(report, stack)
    for user_pk, client in subscribers.items():
        values, pks = seen_values(client, "myitems")
        other = {pk for uid, rows in owned.items() if uid != user_pk for pk in rows}
        if pks & other:
            report.problem(f"{client.name} received rows of another user: {sorted(pks & other)}")
        for pk in owned[user_pk]:
            got, want = values.get(pk, []), writer.committed[pk]
            if sorted(set(got)) != want or got != sorted(got):
                report.problem(f"{client.name}, row {pk}: got {got[:20]}, committed {want[:20]}")
        closes = [c.code for c in client.snapshot()[1] if c.closed is not None]
        report.figure(
            f"{client.name}: {sum(len(v) for v in values.values())} values, closes {closes}"
        )
    _, group_pks = seen_values(group, "myitems")
    if group_pks - set(owned[alice.pk]):
        report.problem(
            f"alice's group socket got bob's rows {sorted(group_pks - set(owned[alice.pk]))}"
        )
    if not group_pks:
        report.problem("alice's group socket got none of her rows")
    frames = nobody.snapshot()[0]
    replies = [f.payload.get("status") for f in frames if "status" in f.payload]
    if set(replies) != {403}:
        report.problem(f"the anonymous socket's replies: {replies[:10]}")
    rows = [f.payload for f in frames if "status" not in f.payload]
    if rows:
        report.problem(f"the anonymous socket received {len(rows)} event(s): {rows[:3]}")
    report.figure(
        f"{sum(len(v) for v in writer.committed.values())} changes committed; the anonymous "
        f"socket: {len(frames)} frame(s), all refusals"
    )
    report.check()
