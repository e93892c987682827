"""Hostile input: every bad frame gets a 4xx reply with a clear message, the socket stays open,
and the database is as it was. Specific cases first, then a property-based fuzz of frames
(hypothesis) as a signed-out user and as a user who owns some rows and not others."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import Live
from tests.routing import websocket_urls
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)


def frame(stream: str, **payload: Any) -> str:
    return json.dumps({"stream": stream, "payload": {"request_id": "x", **payload}})


HOSTILE = [
    ("[" * 5000 + "]" * 5000, 400, "nested too deeply"),
    ('{"a":' * 40 + "1" + "}" * 40, 400, "nested too deeply"),
    (
        '{"stream": "items", "payload": {"action": "list", "request_id": "x",'
        ' "filter": {"value__gt": Infinity}}}',
        400,
        "Infinity is not valid JSON",
    ),
    (
        '{"stream": "items", "payload": {"action": "list", "request_id": "x",'
        ' "filter": {"value__gt": 1e400}}}',
        400,
        "too large",
    ),
    (frame("items", action="subscribe", since="10:1-99999999999999999999"), 400, "since"),
    (frame("items", action="subscribe", since="9" * 30), 400, "since"),
    (
        '{"stream": "items", "payload": {"action": "list", "request_id": "\\ud800"}}',
        400,
        "surrogate",
    ),
    (frame("items", action="list", filter={"name": "\udfff"}), 400, "surrogate"),
    (frame("items", action="list", filter={"owner__contains": "1"}), 400, "text fields only"),
    (frame("items", action="list", ordering="--value"), 400, "ordering"),
    (frame("items", action="list", ordering=["value", "-"]), 400, "ordering"),
    (frame("items", action="update", pk="ITEM", data={"name": {"a": 1}}), 400, "single value"),
    (frame("items", action="update", pk="ITEM", data={"name": ["a"]}), 400, "single value"),
    (frame("items", action="update", pk="ITEM", data={"value": 10**30}), 400, "value"),
    (frame("items", action="retrieve", pk=10**30), 404, "No item"),
    (frame("items", action="list", page=10**30), 400, "page"),
]


@pytest.mark.parametrize(("text", "status", "message"), HOSTILE)
async def test_hostile_frames_get_4xx_and_change_nothing(
    live: Live, text: str, status: int, message: str
) -> None:
    staff = await sync_to_async(User.objects.create)(username="staff", is_staff=True)
    item = await sync_to_async(Item.objects.create)(name="a", value=1)
    socket = await live.connect("/all/", user=staff)
    reply = await socket.raw(text.replace('"ITEM"', str(item.pk)))
    assert reply["status"] == status, reply
    assert message in json.dumps(reply["errors"], ensure_ascii=False), reply
    fresh = await sync_to_async(Item.objects.get)(pk=item.pk)
    assert (fresh.name, fresh.value) == ("a", 1)
    assert (await socket.request("items", "list"))["status"] == 200


async def test_a_wide_since_range_is_answered_at_once(live: Live) -> None:
    """A token with a huge gap range used to make the server expand it id by id (tens of
    seconds, or never); it is checked against the log and answered with a resync."""
    staff = await sync_to_async(User.objects.create)(username="staff", is_staff=True)
    socket = await live.connect("/all/", user=staff)
    other = await live.connect("/all/", user=staff)
    for since in ("9000000000000000000:1-20000000", "9223372036854775807:1-9223372036854775806"):
        reply = await socket.request("items", "subscribe", since=since)
        assert reply["status"] == 200 and reply["data"]["resync"] is True
        await socket.request("items", "unsubscribe", subscription=reply["data"]["subscription"])
        assert (await other.request("items", "list"))["status"] == 200


# -- fuzz ----------------------------------------------------------------------------------

STREAMS = ["items", "myitems", "itemvalues", "counters", "users", "nope", ""]
ACTIONS = ["create", "update", "delete", "retrieve", "list", "subscribe", "unsubscribe", "x"]
FIELDS = ["name", "value", "status", "owner", "price", "due", "extra", "secret", "id", "pk"]
OPS = ["", "__lt", "__gte", "__in", "__contains", "__isnull", "__regex", "__x__y"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
filters_ = st.dictionaries(
    st.builds(lambda f, op: f + op, st.sampled_from(FIELDS), st.sampled_from(OPS)), values
)
payloads = st.fixed_dictionaries(
    {"action": st.sampled_from(ACTIONS)},
    optional={
        "request_id": st.one_of(st.text(max_size=12), st.integers(), values),
        "pk": values,
        "data": st.one_of(st.dictionaries(st.sampled_from(FIELDS), values), values),
        "filter": st.one_of(filters_, values),
        "ordering": st.one_of(st.sampled_from(FIELDS), st.lists(st.text(max_size=8)), values),
        "page": values,
        "page_size": values,
        "since": st.one_of(st.text(max_size=30), st.integers(), values),
        "subscription": values,
    },
)
frames = st.one_of(
    st.builds(
        lambda stream, payload: json.dumps({"stream": stream, "payload": payload}),
        st.sampled_from(STREAMS),
        payloads,
    ),
    st.builds(json.dumps, values),
    st.text(min_size=1, max_size=60),  # (an empty frame is not a text frame)
)


@pytest.fixture
def world(transactional_db: None) -> dict[str, User | AnonymousUser]:
    alice = User.objects.create(username="alice")
    bob = User.objects.create(username="bob")
    Item.objects.create(name="bob's", value=1, owner=bob, secret="s")
    Item.objects.create(name="nobody's", value=2, secret="s")
    Item.objects.create(name="alice's", value=3, owner=alice, secret="s")
    return {"alice": alice, "anonymous": AnonymousUser()}


def protected_rows(alice: User) -> list[tuple[Any, ...] | int]:
    """Everything alice may not write: other users' and ownerless rows, and every row's
    fields outside the binding she may write through (myitems: name, value, status)."""
    others = Item.objects.exclude(owner=alice).order_by("pk")
    mine = Item.objects.filter(owner=alice).order_by("pk")
    return [
        *others.values_list("pk", "name", "value", "status", "owner", "price", "secret"),
        *mine.values_list("pk", "owner", "price", "secret", "extra"),
        User.objects.count(),
    ]


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(frames, min_size=1, max_size=6), who=st.sampled_from(["alice", "anonymous"]))
def test_fuzzed_frames_never_500_never_leak_never_write_what_was_refused(
    world: dict[str, User | AnonymousUser], batch: list[str], who: str
) -> None:
    alice = cast(User, world["alice"])  # "anonymous" is the only AnonymousUser
    before = protected_rows(alice)

    async def run() -> list[dict[str, Any]]:
        communicator = WebsocketCommunicator(URLRouter(websocket_urls), "/all/")
        communicator.scope["user"] = world[who]
        connected, _ = await communicator.connect()
        assert connected
        out = []
        try:
            for text in batch:
                await communicator.send_to(text_data=text)
                while not await communicator.receive_nothing(0.05):
                    message = await communicator.receive_output(timeout=5)
                    assert message["type"] == "websocket.send", (text, message)
                    out.append(json.loads(message["text"]))
        finally:
            await communicator.disconnect()
        return out

    replies = async_to_sync(run)()
    for reply in replies:
        payload = reply["payload"]
        assert payload.get("status", 200) < 500, (batch, reply)
        assert "Traceback" not in json.dumps(reply)
        for row in (
            payload.get("data", {}).get("results", [])
            if isinstance(payload.get("data"), dict)
            else []
        ):
            # Nobody but alice's own rows on myitems; anonymous gets no rows at all.
            assert who == "alice" and reply["stream"] == "myitems", reply
            assert row["data"]["owner"] == alice.pk
    assert protected_rows(alice) == before, batch
