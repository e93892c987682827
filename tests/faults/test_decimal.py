"""A live subscription over channels_redis on a model with a DecimalField: the listener must be
able to send the raw changes subscriptions need (the reported bug: msgpack cannot pack a
Decimal, pglisten exits 1 on the first such change and every restart crashes on it again)."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from pgbinding.delivery.listener import conninfo_from_django
from tests.faults.conftest import Commit, Report, Stack, judge, received, report_exits, windows_of
from tests.support.processes import wait_until
from tests.testapp.models import Item

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

START_PRICE = Decimal("9.5")
STEP = Decimal("0.25")


def _pk(payload: dict[str, Any]) -> Any:
    return payload.get("pk")


def _value(payload: dict[str, Any]) -> Any:
    return (payload.get("data") or {}).get("value")


def test_decimal_row_change_with_a_live_subscription(make_stack: Callable[..., Stack]) -> None:
    """Stream ``items`` (``testapp.Item``: ``price`` is a DecimalField; the stream is staff-only,
    so the sockets carry a staff user's session cookie). A subscriber on ``/all/`` holds a live
    subscription to ``items`` and a group socket on ``/binding/`` is in group ``items``; then 3
    items are updated 10 times each (``value`` + 1, ``price`` + 0.25) with raw SQL.

    Required: pglisten does not exit (a supervisor restarts it if none is left, to show whether
    a restart gets past the change; every exit is reported); the subscriber gets exactly the
    committed sequence of ``value`` of every item, and every event's ``price`` is the committed
    price as a string at the column's scale ("9.7500"); the group socket no change twice, out of
    order or lost while connected."""
    stack = make_stack()
    staff = get_user_model().objects.create_user("staff", password="x", is_staff=True)
    browser = Client()
    browser.force_login(staff)
    cookie = {"Cookie": f"sessionid={browser.cookies['sessionid'].value}"}
    items = [Item.objects.create(name=f"dec{i}", price=START_PRICE) for i in range(3)]
    servers = [stack.daphne("daphne-group"), stack.daphne("daphne-sub")]
    stack.pglisten("pglisten-1").wait_output("Caught up", timeout=30)
    for server in servers:
        server.wait_ready()
    group = stack.client(servers[0].url("/binding/"), "group", headers=cookie)
    subscriber = stack.client(
        servers[1].url("/all/"), "subscriber", subscribe="items", headers=cookie
    )
    group.wait_subscribed()
    subscriber.wait_subscribed()
    stack.supervise()

    committed: dict[Any, list[Commit]] = {item.pk: [] for item in items}
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        for _ in range(10):
            for item in items:
                row = conn.execute(
                    "UPDATE testapp_item SET value = value + 1, price = price + %s WHERE id = %s"
                    " RETURNING value",
                    [STEP, item.pk],
                ).fetchone()
                assert row is not None
                committed[item.pk].append(Commit(item.pk, int(row[0]), time.monotonic()))
            time.sleep(0.05)
    last = {pk: commits[-1].n for pk, commits in committed.items()}

    def complete() -> bool:
        got = received(subscriber, "items", _pk, _value).per_key
        return all(n in [m for m, _, _ in got.get(pk, [])] for pk, n in last.items())

    try:
        wait_until(complete, "the subscriber to get every change", timeout=10)
        time.sleep(0.5)
    except AssertionError:
        pass

    report = Report("Decimal field changes with a live subscription (channels_redis core)")
    report_exits(report, stack)
    sub = received(subscriber, "items", _pk, _value)
    grp = received(group, "items", _pk, _value)
    for problem in judge(sub, committed, exact=True):
        report.problem(problem)
    for problem in judge(grp, committed, exact=False, windows=windows_of(group)):
        report.problem(problem)
    frames, _ = subscriber.snapshot()
    wrong_price = []
    for frame in frames:
        data = frame.payload.get("data")
        if frame.payload.get("subscription") and isinstance(data, dict) and "price" in data:
            expected = f"{START_PRICE + STEP * data['value']:.4f}"
            if data["price"] != expected:
                wrong_price.append((data["value"], data["price"], expected))
    if wrong_price:
        report.problem(
            f"subscriber: price not as committed (value, got, expected): {wrong_price[:5]}"
        )
    report.figure(
        f"committed {sum(map(len, committed.values()))} changes; subscriber {sub.events} events, "
        f"group {grp.events} events; pglisten processes started {len(stack.listeners)} "
        f"(the supervisor restarted {len(stack.restarts)})"
    )
    report.check()
