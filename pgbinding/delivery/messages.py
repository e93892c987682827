"""What a change means on the wire: the messages one binding makes of one logged change.

For each change and binding: the group events (``group_names`` of the row before and after:
``delete`` to the groups it left, ``update`` to those it stayed in, ``create`` to those it
joined), and the raw change for live subscriptions, sent to the change groups of the read
rule's delivery keys of both rows. Rows are read from the log alone (:mod:`pgbinding.rows`),
and every message holds plain values only (see :mod:`pgbinding.protocol`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import models

from .. import protocol, rows
from .changelog import Change

if TYPE_CHECKING:
    from ..bindings import Binding

Message = tuple[str, dict[str, Any]]
Values = dict[str, Any] | None
Instance = models.Model | None


@dataclass(slots=True)
class Built:
    """What one change means for one binding: group events, and raw changes for
    subscriptions (one per delivery key)."""

    events: list[Message] = field(default_factory=list)
    changes: list[Message] = field(default_factory=list)


def decode_values(
    binding: type[Binding], change: Change, connection: Any = None
) -> tuple[Values, Values]:
    """The old and new row of a change as {attname: value}. ``connection``:
    :func:`rows.db_connection`, taken once by callers that decode many."""
    model = binding.model
    table = model._meta.db_table
    if connection is None:
        connection = rows.db_connection()
    old_values = rows.row_values(model, change.old, table, connection) if change.old else None
    if not change.new:
        return old_values, None
    # An update's unchanged columns are loaded once (see rows.row_values).
    like = (change.old, old_values) if change.old and old_values is not None else None
    new_values = rows.row_values(model, change.new, table, connection, like)
    return old_values, new_values


def decode(
    binding: type[Binding], change: Change, connection: Any = None
) -> tuple[Values, Values, Instance, Instance]:
    """The old and new row of a change as {attname: value} and as model instances."""
    old_values, new_values = decode_values(binding, change, connection)
    model = binding.model
    old = rows.instance(model, old_values) if old_values is not None else None
    new = rows.instance(model, new_values) if new_values is not None else None
    return old_values, new_values, old, new


def row_messages(
    binding: type[Binding],
    old_values: Values,
    new_values: Values,
    old: Instance = None,
    new: Instance = None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The row messages (:meth:`Binding.row_message`) of a change's old and new row, from the
    values, when the binding's model and fields allow (:meth:`Binding.reads_values`): making
    two model instances per change only to read their fields back was a fifth of a replay's
    CPU for a small model. An update's new row reuses what its old row's message holds for
    the unchanged columns. Otherwise from the instances (``old`` and ``new`` if the caller
    has made them)."""
    if binding.reads_values():
        old_row = binding.row_message_from_values(old_values) if old_values is not None else None
        if new_values is None:
            return old_row, None
        like = (old_values, old_row) if old_values is not None and old_row is not None else None
        return old_row, binding.row_message_from_values(new_values, like)
    model = binding.model
    if old is None and old_values is not None:
        old = rows.instance(model, old_values)
    if new is None and new_values is not None:
        new = rows.instance(model, new_values)
    old_row = binding.row_message(old) if old is not None else None
    new_row = binding.row_message(new) if new is not None else None
    return old_row, new_row


def _change(
    binding: type[Binding], change: Change, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> dict[str, Any]:
    return protocol.change(binding.stream, change.id, change.op, old, new, change.position)


def change_message(
    binding: type[Binding], change: Change, connection: Any = None
) -> dict[str, Any] | None:
    """The raw change message subscriptions judge (None: nothing of it concerns them)."""
    if change.op == "T":
        return _change(binding, change, None, None)
    old_row, new_row = row_messages(binding, *decode_values(binding, change, connection))
    if old_row is not None and old_row == new_row:
        return None
    return _change(binding, change, old_row, new_row)


def build(binding: type[Binding], change: Change, connection: Any = None) -> Built:
    """Group events (by the group transitions: README, "Group transitions") and raw changes for
    subscriptions, for one change.

    An update that changes none of this binding's fields, nor what its read rule reads, is sent
    to nobody. Events of a binding whose rows each socket must judge carry both rows
    (``rows``), so the consumer decides per user.
    """
    built = Built()
    if change.op == "T":
        event = _event(binding, "reload", None, change)
        event["payload"]["reason"] = "truncate"
        built.events = [(g, event) for g in dict.fromkeys(binding.reload_groups())]
        built.changes = [(binding.change_group(), _change(binding, change, None, None))]
        return built
    old_values, new_values, old, new = decode(binding, change, connection)
    old_row, new_row = row_messages(binding, old_values, new_values, old, new)
    same = old_row is not None and old_row == new_row
    if not same:
        message = _change(binding, change, old_row, new_row)
        built.changes = [(g, message) for g in change_groups(binding, old_values, new_values)]
    built.events = _group_events(binding, change, old, new, old_row, new_row, same)
    return built


def _event(
    binding: type[Binding], action: str, row: dict[str, Any] | None, change: Change
) -> dict[str, Any]:
    return protocol.event(
        binding.stream, binding.model_label(), action, row, change.position, change.id
    )


def change_groups(binding: type[Binding], old: Values, new: Values) -> list[str]:
    """The change groups of the read rule's delivery keys of both rows (the stream's own
    group for a rule without keys)."""
    keys: set[str] = set()
    rule = binding.rule()
    for values in (old, new):
        if values is None:
            continue
        row_keys = rule.keys(values)
        if row_keys is None:
            return [binding.change_group()]
        keys |= row_keys
    return [binding.change_group(k) for k in sorted(keys)]


def _group_events(
    binding: type[Binding],
    change: Change,
    old: Instance,
    new: Instance,
    old_row: dict[str, Any] | None,
    new_row: dict[str, Any] | None,
    same: bool,
) -> list[Message]:
    old_groups = list(dict.fromkeys(binding.group_names(old))) if old is not None else []
    new_groups = list(dict.fromkeys(binding.group_names(new))) if new is not None else []
    judged = binding.checks_rows() and not binding.send_to_everyone
    both = {"old": old_row, "new": new_row} if judged else None
    out: list[Message] = []

    def event(action: str, row: dict[str, Any] | None) -> dict[str, Any]:
        message = _event(binding, action, row, change)
        if both is not None:
            message["rows"] = both
        return message

    # update first: a socket in several of these groups keeps the first event it gets for a
    # change, and one that saw the row before and after should see an update.
    kept = [g for g in new_groups if g in old_groups]
    if kept and new_row is not None and not same:
        message = event("update", new_row)
        out += [(g, message) for g in kept]
    gone = [g for g in old_groups if g not in new_groups]
    if gone and old_row is not None:
        message = event("delete", old_row)
        out += [(g, message) for g in gone]
    came = [g for g in new_groups if g not in old_groups]
    if came and new_row is not None:
        message = event("create", new_row)
        out += [(g, message) for g in came]
    return out
