"""The WebSocket API end to end: consumer, inbound actions, reads, subscriptions, resume."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from pytest_django.fixtures import Settings as SettingsFixture

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
def get_item(pk: int) -> Item:
    return Item.objects.get(pk=pk)


@sync_to_async
def update_items(pks: Iterable[int], **values: Any) -> int:
    return Item.objects.filter(pk__in=pks).update(**values)


async def test_one_clients_update_reaches_the_other(live: Live) -> None:
    staff = await make_user("staff", staff=True)
    other = await make_user("other-staff", staff=True)
    item = await make_item(name="a", value=1)
    await live.settle()
    writer = await live.connect(user=staff)
    reader = await live.connect(user=other)
    reply = await writer.request("items", "update", pk=item.pk, data={"value": 5})
    assert reply["status"] == 200 and reply["data"]["data"]["value"] == 5
    frames = await reader.events()
    assert [(f["stream"], f["payload"]["action"], f["payload"]["pk"]) for f in frames] == [
        ("items", "update", item.pk)
    ]
    assert frames[0]["payload"]["data"]["value"] == 5


async def test_permission_denied_is_an_error_and_the_row_is_unchanged(live: Live) -> None:
    user = await make_user("nobody")
    item = await make_item(name="a", value=1)
    socket = await live.connect(user=user)
    reply = await socket.request("items", "update", pk=item.pk, data={"value": 99})
    assert reply["status"] == 403 and "permission" in reply["errors"]["__all__"][0]
    assert (await get_item(item.pk)).value == 1
    reply = await socket.request("items", "delete", pk=item.pk)
    assert reply["status"] == 403
    reply = await socket.request("items", "create", data={"name": "x"})
    assert reply["status"] == 403


async def test_create_and_delete_with_replies(live: Live) -> None:
    staff = await make_user("staff", staff=True)
    socket = await live.connect(user=staff)
    reply = await socket.request("items", "create", data={"name": "new", "value": 3})
    assert reply["status"] == 201
    pk = reply["data"]["pk"]
    assert (await get_item(pk)).name == "new"
    reply = await socket.request("items", "delete", pk=pk)
    assert reply == {"action": "delete", "request_id": "r2", "status": 200, "data": {"pk": pk}}
    actions = [f["payload"]["action"] for f in await socket.events()]
    assert actions == ["create", "delete"]


async def test_filtered_subscription_sees_move_in_and_move_out(live: Live) -> None:
    staff = await make_user("staff", staff=True)
    a = await make_item(name="a", status="open")
    b = await make_item(name="b", status="done")
    await live.settle()
    socket = await live.connect("/all/", user=staff)
    reply = await socket.request("items", "subscribe", filter={"status": "open"})
    assert reply["status"] == 200
    assert [r["pk"] for r in reply["data"]["results"]] == [a.pk]
    sub = reply["data"]["subscription"]
    await update_items([b.pk], status="open")  # moves in
    await update_items([a.pk], status="done")  # moves out
    await update_items([a.pk], value=7)  # outside the filter: nothing
    await update_items([b.pk], value=8)  # inside: update
    frames = [f["payload"] for f in await socket.events()]
    assert [(p["action"], p["pk"], p["subscription"]) for p in frames] == [
        ("create", b.pk, sub),
        ("delete", a.pk, sub),
        ("update", b.pk, sub),
    ]
    assert frames[2]["data"]["value"] == 8


async def test_user_never_receives_a_row_they_cannot_retrieve(live: Live) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    socket = await live.connect("/all/", user=alice)
    reply = await socket.request("myitems", "subscribe")
    assert reply["status"] == 200 and reply["data"]["results"] == []
    await make_item(name="bobs", owner=bob)
    mine = await make_item(name="mine", owner=alice)
    frames = [f["payload"] for f in await socket.events()]
    await update_items([mine.pk], owner=bob)  # leaves alice's view
    frames += [f["payload"] for f in await socket.events()]
    # (Visibility is checked when the event is delivered: had the owner changed before the
    # listener got to the create, alice would have seen neither event, never bob's row.)
    assert [(p["action"], p["pk"]) for p in frames] == [("create", mine.pk), ("delete", mine.pk)]
    assert all(p["data"]["name"] == "mine" for p in frames)
    reply = await socket.request("myitems", "retrieve", pk=mine.pk)
    assert reply["status"] == 404


async def test_resume_after_disconnect_gets_exactly_the_missed_changes(live: Live) -> None:
    staff = await make_user("staff", staff=True)
    a = await make_item(name="a", value=0)
    await live.settle()
    socket = await live.connect("/all/", user=staff)
    reply = await socket.request("items", "subscribe")
    position = reply["data"]["position"]
    await update_items([a.pk], value=1)
    frames = [f["payload"] for f in await socket.events()]
    assert [p["data"]["value"] for p in frames] == [1]
    position = frames[-1]["position"]
    await socket.c.disconnect()
    live.sockets.remove(socket.c)

    await update_items([a.pk], value=2)
    b = await make_item(name="b")
    await live.settle()
    again = await live.connect("/all/", user=staff)
    await again.send(
        {
            "stream": "items",
            "payload": {"action": "subscribe", "request_id": "s", "since": position},
        }
    )
    frames = [f["payload"] for f in await again.events()]
    replayed = [(p["action"], p["pk"]) for p in frames if p.get("subscription") == "s"]
    assert replayed == [("update", a.pk), ("create", b.pk)]
    reply = next(p for p in frames if p.get("request_id") == "s")
    assert reply["data"]["replayed"] == 2 and "results" not in reply["data"]
    # Later changes arrive once, live.
    await update_items([b.pk], value=3)
    frames = [f["payload"] for f in await again.events()]
    assert [(p["action"], p["pk"]) for p in frames] == [("update", b.pk)]


async def test_resume_from_a_pruned_position_is_told_to_resync(live: Live) -> None:
    from django.db import connection

    staff = await make_user("staff", staff=True)
    await make_item(name="a")

    @sync_to_async
    def prune_everything() -> None:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE pgbinding_state SET pruned_through = 1000000")

    @sync_to_async
    def unprune() -> None:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE pgbinding_state SET pruned_through = 0")

    await prune_everything()
    try:
        socket = await live.connect("/all/", user=staff)
        reply = await socket.request("items", "subscribe", since="5")
        assert reply["status"] == 200 and reply["data"]["resync"] is True
        assert [r["data"]["name"] for r in reply["data"]["results"]] == ["a"]
    finally:
        await unprune()


async def test_list_paginates_orders_and_filters(live: Live) -> None:
    staff = await make_user("staff", staff=True)
    for n in range(12):
        await make_item(name=f"i{n:02}", value=n, status="open" if n % 2 else "done")
    socket = await live.connect(user=staff)
    reply = await socket.request(
        "items",
        "list",
        filter={"status": "open", "value__gte": 3},
        ordering="-value",
        page_size=2,
        page=2,
    )
    assert reply["status"] == 200
    assert reply["data"]["count"] == 5
    assert [r["data"]["value"] for r in reply["data"]["results"]] == [7, 5]
    reply = await socket.request(
        "items", "list", filter={"name__contains": "1", "value__in": [1, 10, 11]}
    )
    assert sorted(r["data"]["value"] for r in reply["data"]["results"]) == [1, 10, 11]
    reply = await socket.request("items", "list", filter={"due__isnull": True}, page_size=100)
    assert reply["data"]["count"] == 12
    first = reply["data"]["results"][0]
    reply = await socket.request("items", "retrieve", pk=first["pk"])
    assert reply["data"] == first


async def test_channels_1x_frames_work_unchanged(live: Live) -> None:
    """The frames of the Channels 1.x data binding docs: no request_id, no reply on success,
    and the outbound event shape {"stream", "payload": {"action", "pk", "model", "data"}}."""
    staff = await make_user("staff", staff=True)
    socket = await live.connect(user=staff)
    await socket.send(
        {"stream": "itemvalues", "payload": {"action": "create", "data": {"value": 1}}}
    )
    frames = await socket.events()
    # ItemValueBinding has no has_permission: default deny, so an error comes back.
    assert frames[0]["payload"]["status"] == 403
    await socket.send(
        {"stream": "items", "payload": {"action": "create", "data": {"name": "one", "value": 1}}}
    )
    frames = await socket.events()
    assert len(frames) == 1
    event = frames[0]
    assert event["stream"] == "items"
    payload = event["payload"]
    assert payload["action"] == "create" and payload["model"] == "testapp.item"
    assert payload["data"]["name"] == "one" and isinstance(payload["pk"], int)
    await socket.send(
        {
            "stream": "items",
            "payload": {"action": "update", "pk": payload["pk"], "data": {"value": 2}},
        }
    )
    await socket.send({"stream": "items", "payload": {"action": "delete", "pk": payload["pk"]}})
    assert [f["payload"]["action"] for f in await socket.events()] == ["update", "delete"]


BAD_FRAMES = [
    ("{not json", 400, "Malformed JSON"),
    ("[1, 2]", 400, "must be a JSON object"),
    (json.dumps({"payload": {}}), 400, "'stream'"),
    (json.dumps({"stream": "items"}), 400, "'payload'"),
    (json.dumps({"stream": "nope", "payload": {"action": "list"}}), 404, "Unknown stream 'nope'"),
    (json.dumps({"stream": "items", "payload": {"action": "explode"}}), 400, "Unknown action"),
    (
        json.dumps({"stream": "items", "payload": {"action": "list", "request_id": [1]}}),
        400,
        "request_id",
    ),
]


@pytest.mark.parametrize(("text", "status", "message"), BAD_FRAMES)
async def test_bad_frames_get_clear_errors_and_the_socket_stays_open(
    live: Live, text: str, status: int, message: str
) -> None:
    staff = await make_user("staff", staff=True)
    socket = await live.connect(user=staff)
    reply = await socket.raw(text)
    assert reply["status"] == status
    assert message in reply["errors"]["__all__"][0]
    assert "Traceback" not in json.dumps(reply)
    assert (await socket.request("items", "list"))["status"] == 200


BAD_REQUESTS = [
    ("update", {"pk": [1], "data": {}}, 400, "pk"),
    ("update", {"pk": "abc", "data": {}}, 400, "pk"),
    ("update", {"pk": "ITEM", "data": "value=1"}, 400, "data"),
    ("update", {"pk": "ITEM", "data": {"secret": "x"}}, 400, "secret"),
    ("update", {"pk": "ITEM", "data": {"id": 5}}, 400, "id"),
    ("update", {"pk": "ITEM", "data": {"value": "not a number"}}, 400, "value"),
    ("update", {"pk": 999999, "data": {"value": 1}}, 404, "__all__"),
    ("list", {"filter": {"secret": "x"}}, 400, "secret"),
    ("list", {"filter": {"value__regex": "x"}}, 400, "value__regex"),
    ("list", {"filter": {"value__in": "1,2"}}, 400, "value__in"),
    ("list", {"filter": "status=open"}, 400, "filter"),
    ("list", {"page_size": 10_000}, 400, "page_size"),
    ("list", {"ordering": ["secret"]}, 400, "ordering"),
    ("subscribe", {"since": "yesterday"}, 400, "since"),
]


@pytest.mark.parametrize(("action", "payload", "status", "key"), BAD_REQUESTS)
async def test_bad_requests_leave_the_database_unchanged(
    live: Live, action: str, payload: dict[str, Any], status: int, key: str
) -> None:
    staff = await make_user("staff", staff=True)
    item = await make_item(name="a", value=1, secret="s")
    payload = {k: (item.pk if v == "ITEM" else v) for k, v in payload.items()}
    socket = await live.connect("/all/", user=staff)
    reply = await socket.request("items", action, **payload)
    assert reply["status"] == status, reply
    assert key in reply["errors"]
    assert reply["action"] == action and reply["request_id"] == "r1"
    fresh = await get_item(item.pk)
    assert (fresh.name, fresh.value, fresh.secret) == ("a", 1, "s")
    assert (await socket.request("items", "list"))["status"] == 200


async def test_oversized_frames_get_413_or_close_4009(
    live: Live, settings: SettingsFixture
) -> None:
    settings.PGBINDING = {**settings.PGBINDING, "MAX_FRAME_BYTES": 1000, "CLOSE_FRAME_BYTES": 5000}
    staff = await make_user("staff", staff=True)
    socket = await live.connect(user=staff)
    big = json.dumps({"stream": "items", "payload": {"action": "list", "pad": "x" * 2000}})
    reply = await socket.raw(big)
    assert reply["status"] == 413
    assert (await socket.request("items", "list"))["status"] == 200
    await socket.c.send_to(text_data="x" * 6000)
    closed = await socket.c.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4009}


async def test_a_flood_of_requests_is_rate_limited(live: Live, settings: SettingsFixture) -> None:
    settings.PGBINDING = {**settings.PGBINDING, "RATE_LIMIT": 1.0, "RATE_BURST": 5.0}
    staff = await make_user("staff", staff=True)
    socket = await live.connect(user=staff)
    statuses = []
    for n in range(8):
        await socket.send({"stream": "items", "payload": {"action": "list", "request_id": n}})
    for _ in range(8):
        statuses.append((await socket.c.receive_json_from(timeout=10))["payload"]["status"])
    assert statuses.count(200) == 5 and statuses.count(429) == 3


async def test_a_socket_in_several_groups_gets_each_change_once(live: Live) -> None:
    """ItemsDemultiplexer joins "items"; subscribe to the stream too: one create each way,
    but never two of the same from overlapping groups."""
    staff = await make_user("staff", staff=True)
    socket = await live.connect(user=staff)
    await socket.c.send_json_to({"stream": "items", "payload": {"action": "list"}})
    await socket.c.receive_json_from(timeout=10)
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    name = next(iter(layer.groups["items"]))
    await layer.group_add("items-status-open", name)  # now in two groups the row is sent to
    item = await make_item(name="twice?", status="open")
    frames = [f["payload"] for f in await socket.events()]
    assert [(p["action"], p["pk"]) for p in frames] == [("create", item.pk)]


async def test_object_permission_is_checked_on_the_stored_row(live: Live) -> None:
    """Sending owner=<me> in an update must not pass an owner check: the row as stored is
    what update and delete are checked against."""
    from pgbinding.registry import registry
    from pgbinding.rules import AllRows
    from pgbinding.websocket import actions
    from tests.testapp.bindings import OwnedItemBinding

    class SeesAll(OwnedItemBinding):
        stream = "seesall"
        read_only_fields = []
        read_rule = AllRows()

    try:
        alice = await make_user("alice")
        bob = await make_user("bob")
        bobs = await make_item(name="bobs", owner=bob)
        binding = SeesAll(user=alice)
        for action, payload in [
            ("update", {"pk": bobs.pk, "data": {"name": "x", "owner": alice.pk}}),
            ("delete", {"pk": bobs.pk}),
        ]:
            with pytest.raises(actions.ActionError) as info:
                await sync_to_async(getattr(actions, action))(binding, payload)
            assert info.value.status == 403
        fresh = await get_item(bobs.pk)
        assert (fresh.name, fresh.owner_id) == ("bobs", bob.pk)
    finally:
        registry.unregister(SeesAll)


async def test_pre_save_sets_server_side_fields(live: Live) -> None:
    alice = await make_user("alice")
    socket = await live.connect("/all/", user=alice)
    reply = await socket.request("myitems", "create", data={"name": "auto-owned"})
    assert reply["status"] == 201, reply
    assert reply["data"]["data"]["owner"] == alice.pk


async def test_resumed_subscription_never_sees_rows_of_others(live: Live) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    bobs = await make_item(name="bobs", owner=bob)
    await live.settle()
    socket = await live.connect("/all/", user=alice)
    reply = await socket.request("myitems", "subscribe")
    position = reply["data"]["position"]
    await socket.c.disconnect()
    live.sockets.remove(socket.c)
    await update_items([bobs.pk], value=5)
    mine = await make_item(name="mine", owner=alice)
    await live.settle()
    again = await live.connect("/all/", user=alice)
    reply = await again.request("myitems", "subscribe", since=position)
    frames = [f["payload"] for f in await again.events()] + again.pending
    assert reply["data"]["replayed"] == 1
    await update_items([bobs.pk], value=6)
    frames += [f["payload"] for f in await again.events()]
    assert all(p.get("pk") != bobs.pk for p in frames), frames
    assert mine.pk


async def test_json_numbers_and_naive_datetime_filters(live: Live) -> None:
    """Floats inside a JSON field reach clients as numbers (not Decimal, which would break
    the socket), and a naive datetime filter means the same in the snapshot and live."""
    import datetime

    staff = await make_user("staff", staff=True)
    due = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    item = await make_item(name="j", extra={"x": 1.5, "n": [1, 2.25]}, due=due)
    await live.settle()
    socket = await live.connect("/all/", user=staff)
    reply = await socket.request("items", "subscribe", filter={"due__lt": "2031-01-01T00:00:00"})
    assert [r["pk"] for r in reply["data"]["results"]] == [item.pk]
    await update_items([item.pk], value=9)
    frames = [f["payload"] for f in await socket.events()]
    assert [(p["action"], p["data"]["extra"]) for p in frames] == [
        ("update", {"x": 1.5, "n": [1, 2.25]})
    ]


async def test_drf_serializer_validates_and_unknown_fields_can_be_ignored(live: Live) -> None:
    user = await make_user("writer")
    socket = await live.connect("/all/", user=user)
    reply = await socket.request("serialized", "create", data={"name": "s", "value": -1})
    assert reply["status"] == 400 and reply["errors"] == {"value": ["must not be negative"]}
    reply = await socket.request(
        "serialized", "create", data={"name": "s", "value": 2, "not_a_field": 1}
    )
    assert reply["status"] == 201 and reply["data"]["data"] == {"name": "s", "value": 2}
    pk = reply["data"]["pk"]
    reply = await socket.request("serialized", "update", pk=pk, data={"value": 5})
    assert reply["status"] == 200 and reply["data"]["data"] == {"name": "s", "value": 5}
    assert (await get_item(pk)).value == 5


async def test_subscribe_to_one_row(live: Live) -> None:
    staff = await make_user("staff", staff=True)
    a = await make_item(name="a")
    b = await make_item(name="b")
    await live.settle()
    socket = await live.connect("/all/", user=staff)
    reply = await socket.request("items", "subscribe", pk=a.pk)
    assert [r["pk"] for r in reply["data"]["results"]] == [a.pk]
    await update_items([a.pk, b.pk], value=4)
    frames = [f["payload"] for f in await socket.events()]
    assert [(p["action"], p["pk"]) for p in frames] == [("update", a.pk)]
    reply = await socket.request("items", "unsubscribe", subscription=reply["data"]["subscription"])
    assert reply["status"] == 200
    await update_items([a.pk], value=5)
    assert await socket.events() == []


async def test_no_change_between_snapshot_and_subscription_is_lost_or_doubled(
    live: Live, raw_conninfo: str
) -> None:
    """Writers increment rows while a client subscribes: the snapshot value of each row, then
    its events, must count up by exactly one (a lost change skips a number, a doubled one
    repeats it), ending at the row's final value."""
    import threading

    import psycopg

    staff = await make_user("staff", staff=True)
    items = [await make_item(name=f"r{n}", value=0) for n in range(4)]
    await live.settle()
    stop = threading.Event()

    def write() -> None:
        with psycopg.connect(raw_conninfo, autocommit=True) as conn:
            while not stop.is_set():
                for item in items:
                    conn.execute(
                        "UPDATE testapp_item SET value = value + 1 WHERE id = %s", [item.pk]
                    )

    writer = threading.Thread(target=write)
    writer.start()
    try:
        import asyncio

        await asyncio.sleep(0.3)
        socket = await live.connect("/all/", user=staff)
        reply = await socket.request("items", "subscribe")
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        writer.join()
    frames = [f["payload"] for f in await socket.events()]
    for item in items:
        [row] = [r for r in reply["data"]["results"] if r["pk"] == item.pk]
        values = [row["data"]["value"]] + [
            p["data"]["value"] for p in frames if p["pk"] == item.pk and p["action"] == "update"
        ]
        assert values == list(range(values[0], values[0] + len(values))), values
        assert values[-1] == (await get_item(item.pk)).value
        assert len(values) > 1, "writes should have happened after the snapshot"


async def test_one_statement_of_many_rows_arrives_whole_and_in_order(live: Live) -> None:
    """The listener sends a batch's events to one group as a few big channel-layer messages
    (dispatch.coalesce); every socket still gets one frame per row, in log order."""
    staff = await make_user("staff", staff=True)
    pks = {(await make_item(name=f"i{n}", value=0)).pk for n in range(250)}
    await live.settle()
    grouped = await live.connect("/values/")
    subscriber = await live.connect("/all/", user=staff)
    reply = await subscriber.request("items", "subscribe", page_size=500)
    assert reply["status"] == 200 and len(reply["data"]["results"]) == 250
    await update_items(list(pks), value=1)

    def check(frames: list[dict[str, Any]], stream: str) -> None:
        payloads = [f["payload"] for f in frames]
        assert all(f["stream"] == stream for f in frames)
        assert [p["action"] for p in payloads] == ["update"] * 250
        assert {p["pk"] for p in payloads} == pks
        positions = [int(str(p["position"]).partition(":")[0]) for p in payloads]
        assert positions == sorted(positions) and len(set(positions)) == 250

    check(await grouped.events(), "itemvalues")
    check(await subscriber.events(), "items")


async def test_a_long_replay_gives_the_event_loop_back_between_frames(live: Live) -> None:
    """A replay sends its frames a few at a time, letting the server's other tasks (other
    sockets' requests, other replays) run in between: with one loop per server process, a
    10,000-change replay sent in one go held every other socket of that process for its
    whole duration."""
    import asyncio

    count = 600
    staff = await make_user("staff", staff=True)
    await make_item(name="first")
    await live.settle()
    socket = await live.connect("/all/", user=staff)
    position = (await socket.request("items", "subscribe"))["data"]["position"]
    await socket.c.disconnect()
    live.sockets.remove(socket.c)
    await sync_to_async(Item.objects.bulk_create)([Item(name=f"r{n}") for n in range(count)])
    await live.settle()

    again = await live.connect("/all/", user=staff)
    queue = again.c.output_queue
    seen: list[int] = []
    arrived = asyncio.Event()

    async def another_task() -> None:
        while queue.qsize() < count + 1:  # the replayed events, then the reply
            seen.append(queue.qsize())
            await asyncio.sleep(0)
        arrived.set()

    other = asyncio.create_task(another_task())
    subscribe = {"action": "subscribe", "request_id": "s", "since": position}
    await again.send({"stream": "items", "payload": subscribe})
    await asyncio.wait_for(arrived.wait(), 30)
    await other
    frames = [json.loads(m["text"]) for m in [queue.get_nowait() for _ in range(queue.qsize())]]
    assert frames[-1]["payload"]["data"]["replayed"] == count
    assert any(0 < n < count for n in seen), "no other task ran while the replay was sent"
