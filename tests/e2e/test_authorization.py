"""Outbound default deny, judged on the logged rows, against users who must not see a row:
group events, live subscriptions and replays alike; and the declarations that would leak."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User

from pgbinding import WebsocketBinding
from pgbinding.exceptions import BindingConfigError
from pgbinding.registry import registry
from tests.e2e.conftest import Live
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def make_user(name: str, staff: bool = False) -> User:
    return User.objects.create(username=name, is_staff=staff)


@sync_to_async
def make_item(**kwargs: Any) -> Item:
    return Item.objects.create(**kwargs)


@sync_to_async
def update(pk: int, **values: Any) -> None:
    Item.objects.filter(pk=pk).update(**values)


@sync_to_async
def delete(pk: int) -> None:
    Item.objects.filter(pk=pk).delete()


def actions(frames: list[dict[str, Any]], stream: str | None = None) -> list[tuple[str, Any]]:
    return [
        (f["payload"]["action"], f["payload"].get("pk"))
        for f in frames
        if "status" not in f["payload"] and (stream is None or f["stream"] == stream)
    ]


async def test_group_events_are_default_deny(live: Live) -> None:
    """The README's shape: a staff-only binding whose consumer joins its group on connect. A
    signed-out socket (403 on every action) receives none of its rows; staff does; a binding
    that opts in with send_to_everyone reaches everyone."""
    staff = await make_user("staff", staff=True)
    nobody = await live.connect("/binding/")
    member = await live.connect("/binding/", user=await make_user("member"))
    admin = await live.connect("/binding/", user=staff)
    assert (await nobody.request("items", "list"))["status"] == 403
    item = await make_item(name="secret plans", value=1)
    await update(item.pk, value=2)
    assert actions(await nobody.events()) == []
    assert actions(await member.events()) == []
    assert actions(await admin.events(), "items") == [("create", item.pk), ("update", item.pk)]
    public = await live.connect("/values/")
    await update(item.pk, value=3)
    frames = await public.events()
    assert [(f["stream"], f["payload"]["data"]) for f in frames] == [("itemvalues", {"value": 3})]


async def test_group_events_follow_the_read_rule_on_the_logged_rows(live: Live) -> None:
    """Every socket of /mine/ joins the same group; each gets only its own rows, and a row
    handed from bob to alice is a delete for bob and a create for alice."""
    alice, bob = await make_user("alice"), await make_user("bob")
    a = await live.connect("/mine/", user=alice)
    b = await live.connect("/mine/", user=bob)
    anon = await live.connect("/mine/")
    item = await make_item(name="bob's", owner=bob)
    await update(item.pk, name="bob's private")
    await update(item.pk, owner=alice)
    await update(item.pk, name="alice's now")
    assert actions(await b.events()) == [
        ("create", item.pk),
        ("update", item.pk),
        ("delete", item.pk),
    ]
    frames = await a.events()
    assert actions(frames) == [("create", item.pk), ("update", item.pk)]
    assert [f["payload"]["data"]["name"] for f in frames] == ["bob's private", "alice's now"]
    assert await anon.events() == []


async def test_live_subscription_judges_the_row_as_it_was_logged(live: Live) -> None:
    """Written while bob owned it, read after alice got it: alice never sees bob's text."""
    alice, bob = await make_user("alice"), await make_user("bob")
    socket = await live.connect("/all/", user=alice)
    reply = await socket.request("myitems", "subscribe")
    assert reply["status"] == 200 and reply["data"]["results"] == []
    item = await make_item(name="draft", owner=bob)
    await live.settle()
    async with live.listener_down():
        await update(item.pk, name="bob's private notes")
        await update(item.pk, owner=alice, name="for alice")
    frames = await socket.events()
    assert [(f["payload"]["action"], f["payload"]["data"]["name"]) for f in frames] == [
        ("create", "for alice")
    ]


async def test_replay_judges_each_logged_change_for_the_user(live: Live) -> None:
    """Alice resumes after missing: bob writing a row, giving it to her, and deleting another
    of his rows. She is replayed the row from the moment it became hers, never bob's earlier
    text, and no delete carrying the pk of bob's row."""
    alice, bob = await make_user("alice"), await make_user("bob")
    bobs = await make_item(name="bob keeps", owner=bob)
    await live.settle()
    socket = await live.connect("/all/", user=alice)
    reply = await socket.request("myitems", "subscribe")
    position = reply["data"]["position"]
    await socket.c.disconnect()
    live.sockets.remove(socket.c)
    doc = await make_item(name="bob's first draft", owner=bob)
    await update(doc.pk, name="bob's second draft")
    await update(doc.pk, owner=alice)
    await delete(bobs.pk)
    await live.settle()
    again = await live.connect("/all/", user=alice)
    reply = await again.request("myitems", "subscribe", since=position)
    frames = await again.events()  # the replay came before the reply: kept in pending
    replayed = [f["payload"] for f in frames if f["payload"].get("subscription") == "r1"]
    assert [(p["action"], p["pk"], p["data"]["name"]) for p in replayed] == [
        ("create", doc.pk, "bob's second draft")
    ]
    assert reply["data"]["replayed"] == 1


async def test_subscribing_to_rows_of_another_user_shows_nothing(live: Live) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    bobs = await make_item(name="bob's", owner=bob)
    socket = await live.connect("/all/", user=alice)
    reply = await socket.request("myitems", "subscribe", pk=bobs.pk)
    assert reply["status"] == 200 and reply["data"]["results"] == []
    for filter_ in ({"name": "bob's"}, {"name__contains": "b"}, {"value__gte": 0}):
        reply = await socket.request("myitems", "list", filter=filter_, ordering="-name")
        assert reply["data"]["results"] == [], filter_
    assert (await socket.request("myitems", "retrieve", pk=bobs.pk))["status"] == 404
    reply = await socket.request("myitems", "update", pk=bobs.pk, data={"name": "mine"})
    assert reply["status"] == 404
    await update(bobs.pk, value=7)
    assert actions(await socket.events()) == []


async def test_owner_is_not_writable_by_clients(live: Live) -> None:
    """The README's pattern: the server sets the owner; a client cannot give its row away or
    take one."""
    alice, bob = await make_user("alice"), await make_user("bob")
    socket = await live.connect("/all/", user=alice)
    reply = await socket.request("myitems", "create", data={"name": "mine", "owner": bob.pk})
    assert reply["status"] == 400 and "owner" in reply["errors"]
    reply = await socket.request("myitems", "create", data={"name": "mine"})
    pk = reply["data"]["pk"]
    reply = await socket.request("myitems", "update", pk=pk, data={"owner": bob.pk})
    assert reply["status"] == 400 and reply["errors"] == {"owner": ["This field is read-only."]}
    owner = await sync_to_async(lambda: Item.objects.get(pk=pk).owner_id)()
    assert owner == alice.pk


async def test_connection_groups_get_the_routes_kwargs(live: Live) -> None:
    staff = await make_user("staff", staff=True)
    socket = await live.connect("/status/done/", user=staff)
    item = await make_item(name="x", status="open")
    await update(item.pk, status="done")
    assert actions(await socket.events()) == [("create", item.pk)]


def _declare(**attrs: Any) -> type[WebsocketBinding]:
    declared = type("Declared", (WebsocketBinding,), {"__module__": __name__, **attrs})
    return cast(type[WebsocketBinding], declared)  # type() is typed as returning a bare type


@pytest.fixture
def restore_registry() -> Iterator[None]:
    saved = registry.all()
    yield
    registry._bindings = saved


def test_a_user_models_password_is_never_bound(restore_registry: None) -> None:
    everything = _declare(model=User, stream="u1", fields=["__all__"])
    assert "password" not in {f.name for f in everything.serialized_fields()}
    excluded = _declare(model=User, stream="u2", exclude=["email"])
    assert "password" not in {f.name for f in excluded.serialized_fields()}
    with pytest.raises(BindingConfigError, match="password hash is never sent"):
        _declare(model=User, stream="u3", fields=["username", "password"])


@pytest.mark.parametrize(
    ("hook", "instead"),
    [
        ("serialize", "fields / exclude"),
        ("serialize_data", "fields / exclude"),
        ("create", "form_class, serializer_class, or pre_save"),
        ("update", "form_class, serializer_class, or pre_save"),
        ("delete", "has_object_permission"),
    ],
)
def test_channels_1x_hooks_pgbinding_would_ignore_are_refused(
    restore_registry: None, hook: str, instead: str
) -> None:
    with pytest.raises(BindingConfigError) as info:
        _declare(model=Item, stream="hooked", fields=["name"], **{hook: lambda self, *a: None})
    assert f"defines {hook}()" in str(info.value) and instead in str(info.value)
    assert "Declared" in str(info.value)


def test_a_get_queryset_without_a_read_rule_is_refused(restore_registry: None) -> None:
    with pytest.raises(BindingConfigError, match="cannot evaluate on the logged row"):
        _declare(
            model=Item,
            stream="scoped",
            fields=["name"],
            get_queryset=lambda self, user: Item.objects.filter(owner=user),
        )
