"""pgbinding works on one database, ``PGBINDING["DATABASE"]``, whatever the routers say: a
subscription's snapshot reads its rows in the same repeatable-read transaction that fixes its
position, and an inbound write is made atomic on the connection that saves it."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from pytest_django.fixtures import Settings as SettingsFixture

from tests.e2e.conftest import Live
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])


class ReadsFromReplica:
    """A read-replica router: the ORM reads through 'replica', writes to 'default'."""

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return "replica"

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return "default"

    def allow_relation(self, *args: Any, **hints: Any) -> bool:
        return True


@pytest.fixture
def replica_router(settings: SettingsFixture) -> None:
    settings.DATABASE_ROUTERS = [ReadsFromReplica()]


@sync_to_async
def setup_rows() -> tuple[User, Item]:
    staff = User.objects.db_manager("default").create(username="staff", is_staff=True)
    User.objects.db_manager("replica").create(pk=staff.pk, username="staff", is_staff=True)
    item = Item.objects.using("default").create(name="primary", value=1)
    # The replica lags: it has an older copy of the row, and a row the primary deleted.
    Item.objects.using("replica").create(pk=item.pk, name="stale", value=0)
    Item.objects.using("replica").create(pk=item.pk + 1000, name="deleted on primary", value=0)
    return staff, item


async def test_snapshot_list_and_writes_use_pgbindings_database(
    live: Live, replica_router: None
) -> None:
    staff, item = await setup_rows()
    await live.settle()
    socket = await live.connect("/all/", user=staff)
    reply = await socket.request("items", "subscribe")
    assert [(r["pk"], r["data"]["name"]) for r in reply["data"]["results"]] == [
        (item.pk, "primary")
    ]
    reply = await socket.request("items", "list")
    assert [r["data"]["name"] for r in reply["data"]["results"]] == ["primary"]
    reply = await socket.request("items", "update", pk=item.pk, data={"value": 5})
    assert reply["status"] == 200 and reply["data"]["data"]["value"] == 5
    stored = await sync_to_async(lambda: Item.objects.using("default").get(pk=item.pk).value)()
    assert stored == 5
    frames = [f["payload"] for f in await socket.events()]
    assert [(p["action"], p["data"]["value"]) for p in frames] == [("update", 5)]
    reply = await socket.request("items", "create", data={"name": "new"})
    assert reply["status"] == 201
    created = await sync_to_async(
        lambda: Item.objects.using("default").filter(name="new").exists()
    )()
    assert created
