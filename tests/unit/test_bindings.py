"""Group transitions and serialization, from rows as the trigger logs them (no database)."""

from datetime import datetime
from typing import Any, cast

from pgbinding.bindings import Binding
from pgbinding.delivery import messages
from pgbinding.delivery.changelog import Change
from pgbinding.delivery.messages import Message
from pgbinding.registry import registry
from tests.testapp.bindings import ItemBinding, ItemValueBinding
from tests.testapp.models import Item


def row(**values: Any) -> dict[str, Any]:
    base = {
        "id": 1,
        "name": "a",
        "value": 1,
        "status": "open",
        "owner_id": None,
        "price": "1.5000",
        "due": None,
        "day": None,
        "uid": "7d2f8f0e-1f7c-4a8e-8f4e-3a1e0f5d2b11",
        "extra": {},
        "body": "",
        "secret": "s",
    }
    return {**base, **values}


def events(binding: type[Binding], change: Change) -> list[Message]:
    """The group events of one change."""
    return messages.build(binding, change).events


def groups_by_action(messages: list[Message]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for group, message in messages:
        out.setdefault(message["payload"]["action"], []).append(group)
    return out


def test_insert_creates_in_every_group() -> None:
    msgs = events(ItemBinding, Change(7, "testapp_item", "I", "1", None, row(), position="7"))
    assert groups_by_action(msgs) == {"create": ["items", "items-status-open"]}
    payload = msgs[0][1]["payload"]
    assert payload["pk"] == 1 and payload["position"] == "7" and payload["model"] == "testapp.item"
    assert "secret" not in payload["data"]
    assert msgs[0][1]["type"] == "pgbinding.event" and msgs[0][1]["stream"] == "items"


def test_moving_between_groups_deletes_updates_and_creates() -> None:
    old, new = row(status="open", owner_id=3), row(status="done", owner_id=4)
    msgs = events(ItemBinding, Change(8, "testapp_item", "U", "1", old, new))
    assert groups_by_action(msgs) == {
        "delete": ["items-status-open", "items-owner-3"],
        "update": ["items"],
        "create": ["items-status-done", "items-owner-4"],
    }


def test_update_of_unbound_fields_sends_nothing() -> None:
    old, new = row(secret="a"), row(secret="b")
    change = Change(9, "testapp_item", "U", "1", old, new)
    assert events(ItemBinding, change) == []
    old, new = row(name="a"), row(name="b")
    change = Change(10, "testapp_item", "U", "1", old, new)
    assert events(ItemValueBinding, change) == []
    assert groups_by_action(events(ItemBinding, change)) == {
        "update": ["items", "items-status-open"]
    }


def test_delete_sends_the_row_as_it_was() -> None:
    msgs = events(ItemBinding, Change(11, "testapp_item", "D", "1", row(), None))
    assert groups_by_action(msgs) == {"delete": ["items", "items-status-open"]}
    assert msgs[0][1]["payload"]["data"]["name"] == "a"


def test_truncate_sends_reload_to_declared_groups() -> None:
    msgs = events(ItemBinding, Change(12, "testapp_item", "T", None, None, None))
    assert [(g, m["payload"]["action"]) for g, m in msgs] == [("pgbinding.items", "reload")]


def test_values_are_rebuilt_with_django_types() -> None:
    instance = cast(
        Item,
        ItemBinding.instance_from_row(
            row(due="2026-01-02T03:04:05.123456+01:00", day="2026-02-03", extra={"k": [1]})
        ),
    )
    # As the ORM reads a timestamptz: the same instant, in the connection's time zone (UTC).
    assert cast(datetime, instance.due).isoformat() == "2026-01-02T02:04:05.123456+00:00"
    assert str(instance.day) == "2026-02-03"
    assert instance.extra == {"k": [1]}
    data = ItemBinding.serialize(instance)
    assert data["due"] == "2026-01-02T02:04:05.123Z"
    assert data["price"] == "1.5000"
    assert data["uid"] == "7d2f8f0e-1f7c-4a8e-8f4e-3a1e0f5d2b11"


def test_row_messages_come_from_instances_when_the_model_has_init_receivers() -> None:
    """Row messages are built from the decoded values only where an instance would give them
    back unchanged; a post_init receiver (which may change what the instance holds) makes them
    come from instances again."""
    from django.db.models.signals import post_init

    change = Change(13, "testapp_item", "U", "1", row(name="a"), row(name="b"))
    assert ItemBinding.reads_values()
    message = messages.change_message(ItemBinding, change)
    assert message is not None and message["new"]["data"]["name"] == "b"

    def rename(sender: type[Item], instance: Item, **kwargs: Any) -> None:
        instance.name = instance.name.upper()

    post_init.connect(rename, sender=Item)
    try:
        assert not ItemBinding.reads_values()
        message = messages.change_message(ItemBinding, change)
        assert message is not None and message["new"]["data"]["name"] == "B"
    finally:
        post_init.disconnect(rename, sender=Item)
    assert ItemBinding.reads_values()


def test_row_messages_come_from_instances_when_the_binding_serializes_its_own_way() -> None:
    """A binding that overrides row_message (or serialize_pk) is served through instances, so
    its own serialization is what subscribers get."""

    class Shouting(ItemBinding):
        stream = "items-shouting"

        @classmethod
        def row_message(cls, instance: Any) -> dict[str, Any]:
            message = super().row_message(instance)
            message["data"]["name"] = str(message["data"]["name"]).upper()
            return message

    try:
        assert ItemBinding.reads_values() and not Shouting.reads_values()
        change = Change(14, "testapp_item", "U", "1", row(name="a"), row(name="b"))
        message = messages.change_message(Shouting, change)
        assert message is not None and message["new"]["data"]["name"] == "B"
    finally:
        registry.unregister(Shouting)


def test_an_update_loads_only_columns_logged_differently() -> None:
    """The new row of an update takes the old row's value of a column logged with the same
    text (strictly: 1, 1.0 and true differ, and so do 1.0 and 1.00)."""
    from decimal import Decimal

    from pgbinding.rows import same_logged

    assert (
        same_logged("a", "a") and same_logged(1, 1) and same_logged(Decimal("1.0"), Decimal("1.0"))
    )
    assert not same_logged(1, Decimal("1")) and not same_logged(1, True)
    assert not same_logged(Decimal("1.0"), Decimal("1.00")) and not same_logged([1], [1])
    old, new = (
        row(due="2026-01-02T03:04:05+00:00", value=1),
        row(due="2026-01-02T03:04:05+00:00", value=2),
    )
    old_values, new_values = messages.decode_values(
        ItemBinding, Change(14, "testapp_item", "U", "1", old, new)
    )
    assert old_values is not None and new_values is not None
    assert new_values["due"] is old_values["due"] and new_values["value"] == 2
    assert new_values["extra"] is not old_values["extra"]  # a dict: each row its own
