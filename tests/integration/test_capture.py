"""Every write path reaches the groups, only after commit, with the right group transitions,
under both capture backends (triggers, and logical decoding: tests/support/capture.py)."""

from __future__ import annotations

import datetime
import decimal
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any, cast

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction

from devservers import postgres_bin_dir
from tests.conftest import ListenerHarness, log_max_id
from tests.support.capture import BACKENDS, capture_backend
from tests.testapp.models import Counter, Item

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=BACKENDS)
def listener(request: pytest.FixtureRequest, raw_conninfo: str) -> Iterator[ListenerHarness]:
    with capture_backend(request.param, raw_conninfo):
        harness = ListenerHarness(capture=request.param).start()
        try:
            yield harness
        finally:
            harness.close()


def test_save_create_update_delete(listener: ListenerHarness) -> None:
    items = listener.collect("items")
    values = listener.collect("itemvalues")
    item = Item.objects.create(name="a", value=1)
    listener.sync()
    assert items.actions("items") == [("create", item.pk)]
    assert values.actions("itemvalues") == [("create", item.pk)]
    create = items.payloads()[0]
    assert create["model"] == "testapp.item"
    assert create["data"]["name"] == "a"
    assert "secret" not in create["data"]
    assert isinstance(create["position"], str) and create["position"].split(":")[0].isdigit()

    item.name = "b"
    item.save()
    item.delete()
    listener.sync()
    assert [a for a, _ in items.actions("items")] == ["create", "update", "delete"]
    assert items.payloads()[1]["data"]["name"] == "b"
    # itemvalues only binds "value", which did not change: no update for it.
    assert [a for a, _ in values.actions("itemvalues")] == ["create", "delete"]


def test_queryset_update_and_delete(listener: ListenerHarness) -> None:
    Item.objects.bulk_create([Item(name=f"i{n}", value=n) for n in range(20)])
    listener.sync()
    items = listener.collect("items")
    updated = Item.objects.filter(value__lt=10).update(value=100)
    listener.sync()
    assert updated == 10
    assert [a for a, _ in items.actions()] == ["update"] * 10
    assert {p["data"]["value"] for p in items.payloads()} == {100}
    items.clear()
    Item.objects.all().delete()
    listener.sync()
    assert [a for a, _ in items.actions()] == ["delete"] * 20


def test_bulk_create_and_bulk_update(listener: ListenerHarness) -> None:
    items = listener.collect("items")
    created = Item.objects.bulk_create([Item(name=f"b{n}") for n in range(50)])
    listener.sync()
    assert sorted(pk for _, pk in items.actions()) == sorted(i.pk for i in created)
    items.clear()
    for obj in created:
        obj.value = 7
    Item.objects.bulk_update(created, ["value"])
    listener.sync()
    assert [a for a, _ in items.actions()] == ["update"] * 50


def test_raw_sql_through_django_cursor(listener: ListenerHarness) -> None:
    items = listener.collect("items")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_item (name, value, status, price, uid, extra, body, secret)"
            " VALUES ('raw', 5, 'open', 0, gen_random_uuid(), '{}', '', '')"
        )
    listener.sync()
    assert [a for a, _ in items.actions()] == ["create"]
    assert items.payloads()[0]["data"]["name"] == "raw"


def test_write_from_a_program_that_never_imports_django(
    listener: ListenerHarness, raw_conninfo: str
) -> None:
    """psql, the real client binary, writes; the listener delivers."""
    items = listener.collect("items")
    item = Item.objects.create(name="outside", value=1)
    listener.sync()
    items.clear()
    psql = postgres_bin_dir() / "psql"
    subprocess.run(
        [
            str(psql),
            raw_conninfo,
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            f"item={item.pk}",
        ],
        input="UPDATE testapp_item SET value = value + 1 WHERE id = :item;\n",
        check=True,
        capture_output=True,
        text=True,
    )
    listener.sync()
    assert items.actions() == [("update", item.pk)]
    assert items.payloads()[0]["data"]["value"] == 2


def test_rolled_back_transaction_is_never_delivered(listener: ListenerHarness) -> None:
    items = listener.collect("items")
    with pytest.raises(RuntimeError), transaction.atomic():
        Item.objects.create(name="ghost")
        raise RuntimeError("roll back")
    kept = Item.objects.create(name="kept")
    listener.sync()
    assert items.actions() == [("create", kept.pk)]


def test_nothing_before_commit(listener: ListenerHarness, raw_conninfo: str) -> None:
    items = listener.collect("items")
    with psycopg.connect(raw_conninfo) as conn:
        conn.execute(
            "INSERT INTO testapp_item (name, value, status, price, uid, extra, body, secret)"
            " VALUES ('pending', 1, 'open', 0, gen_random_uuid(), '{}', '', '')"
        )
        listener.sync()  # the uncommitted row is a gap the listener waits on, not a change
        listener.call(__import__("asyncio").sleep(0.3))
        assert items.actions() == []
        conn.commit()
    listener.sync()
    assert [a for a, _ in items.actions()] == ["create"]


def test_rolled_back_savepoint_sends_only_what_survived(listener: ListenerHarness) -> None:
    items = listener.collect("items")
    with transaction.atomic():
        kept = Item.objects.create(name="kept")
        try:
            with transaction.atomic():
                Item.objects.create(name="dropped")
                raise ValueError
        except ValueError:
            pass
    listener.sync()
    assert items.actions() == [("create", kept.pk)]


def test_row_larger_than_notify_limit_is_delivered_whole(listener: ListenerHarness) -> None:
    items = listener.collect("items")
    body = "x" * 100_000
    item = Item.objects.create(name="big", body=body)
    listener.sync()
    assert items.actions() == [("create", item.pk)]
    assert items.payloads()[0]["data"]["body"] == body


def test_group_transitions(listener: ListenerHarness) -> None:
    alice = User.objects.create(username="alice")
    bob = User.objects.create(username="bob")
    item = Item.objects.create(name="t", status="open", owner=alice)
    listener.sync()
    everyone = listener.collect("items")
    open_ = listener.collect("items-status-open")
    closed = listener.collect("items-status-closed")
    mine = listener.collect(f"items-owner-{alice.pk}")
    bobs = listener.collect(f"items-owner-{bob.pk}")

    Item.objects.filter(pk=item.pk).update(status="closed", owner=bob)
    listener.sync()
    assert everyone.actions() == [("update", item.pk)]
    assert open_.actions() == [("delete", item.pk)]
    assert closed.actions() == [("create", item.pk)]
    assert mine.actions() == [("delete", item.pk)]
    assert bobs.actions() == [("create", item.pk)]
    # A move-out carries the row as it was, a move-in as it is now.
    assert open_.payloads()[0]["data"]["status"] == "open"
    assert closed.payloads()[0]["data"]["status"] == "closed"


def test_update_touching_no_bound_field_sends_nothing(listener: ListenerHarness) -> None:
    item = Item.objects.create(name="quiet")
    listener.sync()
    items = listener.collect("items", "itemvalues")
    Item.objects.filter(pk=item.pk).update(secret="hidden")
    Item.objects.filter(pk=item.pk).update(name="quiet")  # no change at all
    listener.sync()
    assert items.messages == []


def test_values_serialized_as_django_serializes_them(listener: ListenerHarness) -> None:
    items = listener.collect("items")
    due = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
    uid = uuid.uuid4()
    user = User.objects.create(username="owner")
    item = Item.objects.create(
        name="types",
        value=3,
        price=decimal.Decimal("1234.5678"),
        due=due,
        day=datetime.date(2026, 2, 3),
        uid=uid,
        extra={"a": [1, 2.5, None]},
        owner=user,
    )
    listener.sync()
    data = items.payloads()[0]["data"]
    assert data["price"] == "1234.5678"
    assert data["due"] == "2026-01-02T03:04:05.678Z"
    assert data["day"] == "2026-02-03"
    assert data["uid"] == str(uid)
    assert data["extra"] == {"a": [1, 2.5, None]}
    assert data["owner"] == user.pk
    assert items.payloads()[0]["pk"] == item.pk


def test_two_updates_of_one_row_arrive_in_commit_order(listener: ListenerHarness) -> None:
    item = Item.objects.create(name="o", value=0)
    listener.sync()
    values = listener.collect("itemvalues")
    for n in range(1, 51):
        Item.objects.filter(pk=item.pk).update(value=n)
    listener.sync()
    assert [p["data"]["value"] for p in values.payloads()] == list(range(1, 51))


def test_truncate_tells_groups_to_reload(listener: ListenerHarness) -> None:
    Item.objects.create(name="t", status="open")
    listener.sync()
    everyone = listener.collect("items")
    open_ = listener.collect("items-status-open")
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE testapp_item")
    listener.sync()
    assert [p["action"] for p in everyone.payloads()] == ["reload"]
    # items-status-open was sent to before, so it is told too.
    assert [p["action"] for p in open_.payloads()] == ["reload"]
    assert everyone.payloads()[0]["reason"] == "truncate"


def test_binding_of_a_model_from_an_app_we_do_not_own(listener: ListenerHarness) -> None:
    users = listener.collect("pgbinding.users")
    user = User.objects.create(username="carol", is_staff=True)
    listener.sync()
    assert users.actions() == [("create", user.pk)]
    assert users.payloads()[0]["data"] == {"username": "carol", "is_staff": True}


def test_counter_binding_with_exclude(listener: ListenerHarness) -> None:
    counters = listener.collect("counters")
    c = Counter.objects.create(key="k", n=1)
    listener.sync()
    assert counters.payloads()[0]["data"] == {"id": c.pk, "key": "k", "n": 1}


def test_logical_capture_writes_the_log_itself(listener: ListenerHarness) -> None:
    """Under the logical backend no trigger is left on the bound tables: the listener's pump
    wrote every row of the log (the same shape as the trigger's)."""
    # The log outlives each test (Django's flush leaves unmanaged tables alone) and an earlier
    # test may have reset the sequences: look only at what this test logged.
    before = log_max_id()
    item = Item.objects.create(name="pumped", value=1)
    listener.sync()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'testapp_item'::regclass"
            " AND tgname LIKE 'pgbinding%%'"
        )
        triggers = cast(tuple[Any, ...], cursor.fetchone())[0]  # count(*): one row
        cursor.execute(
            "SELECT op, pk, new ->> 'name' FROM pgbinding_change"
            " WHERE table_name = 'testapp_item' AND pk = %s AND id > %s",
            [str(item.pk), before],
        )
        logged = cursor.fetchall()
    pump = listener.listener.pump
    if pump is None:
        assert triggers == 4
    else:
        assert triggers == 0 and pump.written == 1
    assert logged == [("I", str(item.pk), "pumped")]
