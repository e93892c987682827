"""Building group sends off the event loop, with each kind of channel layer (no server needed:
building sends nothing)."""

import threading
from collections.abc import Callable
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from pgbinding.delivery.changelog import Change
from pgbinding.delivery.dispatch import MAX_PER_MESSAGE, Dispatcher, Message, coalesce, unpack
from tests.unit.test_bindings import row

LAYERS: dict[str, Callable[[], Any]] = {
    "memory": InMemoryChannelLayer,
    "redis": lambda: RedisChannelLayer(hosts=["redis://127.0.0.1:1"]),
    # Resolves attributes per running event loop: build() runs in a thread, where there is none.
    "pubsub": lambda: RedisPubSubChannelLayer(hosts=["redis://127.0.0.1:1"]),
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_build_runs_in_a_thread_with_every_layer(layer: str) -> None:
    dispatcher = Dispatcher(LAYERS[layer]())
    change = Change(7, "testapp_item", "I", "1", None, row(), position="7")
    result: dict[str, list[Message]] = {}
    thread = threading.Thread(target=lambda: result.update(out=dispatcher.build([change])))
    thread.start()
    thread.join(10)
    groups = [group for group, _ in result["out"]]
    assert "items" in groups and "pgbinding-changes.items" in groups


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_bad_group_names_are_refused_with_every_layer(
    layer: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.testapp.bindings import ItemBinding

    dispatcher = Dispatcher(LAYERS[layer]())
    assert dispatcher._valid_group(ItemBinding, "fine.group-1")
    assert not dispatcher._valid_group(ItemBinding, "not fine!")
    assert "bad group name" in caplog.text


def event(stream: str, position: int, action: str = "update") -> dict[str, Any]:
    return {
        "type": "pgbinding.event",
        "stream": stream,
        "payload": {"action": action, "position": position},
    }


def change(stream: str, position: int) -> dict[str, Any]:
    return {"type": "pgbinding.change", "stream": stream, "id": position, "position": str(position)}


def flatten(sent: list[Message]) -> dict[str, list[dict[str, Any]]]:
    """What each group receives, message by message, unpacked."""
    out: dict[str, list[dict[str, Any]]] = {}
    for group, message in sent:
        out.setdefault(group, []).extend(unpack(message))
    return out


def test_coalesce_merges_runs_to_one_group_and_batches_changes_per_stream() -> None:
    built: list[Message] = []
    for pos in range(1, 5):
        built += [("items", event("items", pos)), ("pgbinding-changes.items", change("items", pos))]
    built.append(("notes", event("notes", 5)))
    sent = coalesce(built)
    assert [(g, m["type"]) for g, m in sent] == [
        ("items", "pgbinding.events"),
        ("notes", "pgbinding.event"),
        ("pgbinding-changes.items", "pgbinding.changes"),
    ]
    assert flatten(sent) == flatten(built)


def test_coalesce_never_reorders_what_a_socket_in_several_groups_sees() -> None:
    # Change 1 only reaches group B, change 2 reaches A then B: a socket in A and B must get
    # B:1 before A:2, so nothing may be merged across the groups.
    built = [("b", event("s", 1)), ("a", event("s", 2)), ("b", event("s", 2)), ("b", event("s", 3))]
    sent = coalesce(built)
    assert [g for g, _ in sent] == ["b", "a", "b"]
    assert [m["payload"]["position"] for _, m in sent[:2]] == [1, 2]
    assert flatten(sent) == flatten(built)


def test_coalesce_caps_the_size_of_one_message() -> None:
    built = [("items", event("items", pos)) for pos in range(1, 251)]
    built += [("pgbinding-changes.items", change("items", pos)) for pos in range(1, 202)]
    sent = coalesce(built)
    sizes = [len(m.get("events") or m.get("changes") or [m]) for _, m in sent]
    assert sizes == [MAX_PER_MESSAGE, MAX_PER_MESSAGE, 50, MAX_PER_MESSAGE, MAX_PER_MESSAGE, 1]
    assert flatten(sent) == flatten(built)
