"""Changes to messages to group sends: the step between the listener and the channel layer."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from channels.layers import BaseChannelLayer

from .. import rows
from ..protocol import CHANGE_TYPE, CHANGES_TYPE, EVENT_TYPE, EVENTS_TYPE, unpack
from ..registry import Registry, registry
from . import messages
from .changelog import Change
from .messages import Message

if TYPE_CHECKING:
    from ..bindings import Binding

logger = logging.getLogger("pgbinding.dispatch")

__all__ = [
    "CHANGES_TYPE",
    "CHANGE_TYPE",
    "EVENTS_TYPE",
    "EVENT_TYPE",
    "Dispatcher",
    "Message",
    "coalesce",
    "unpack",
]

#: Most events or changes put in one channel-layer message.
MAX_PER_MESSAGE = 100
#: Most groups per binding the listener remembers having sent to (TRUNCATE tells them all to
#: reload); the oldest are forgotten first.
MAX_SENT_GROUPS = 10_000


class Dispatcher:
    """Turns captured changes into channel-layer group sends, through the bindings."""

    def __init__(self, channel_layer: Any, bindings: Registry = registry) -> None:
        self.channel_layer = channel_layer
        self.bindings = bindings
        #: Groups each binding has sent to lately; TRUNCATE tells them all to reload.
        self.sent_groups: dict[type[Binding], OrderedDict[str, None]] = {}
        self._tables: dict[str, list[type[Binding]]] = {}
        self._tables_version = -1
        # Group names are checked in build(), off the event loop. channels_redis's pub/sub layer
        # resolves attributes per running loop (there is none in a thread), so take the check
        # from the layer's class, or Channels' own rule when the class has none.
        own = hasattr(type(channel_layer), "require_valid_group_name")
        self._group_checker: Any = channel_layer if own else BaseChannelLayer()

    def by_table(self) -> dict[str, list[type[Binding]]]:
        if self._tables_version != self.bindings.version:
            self._tables = self.bindings.by_table()
            self._tables_version = self.bindings.version
        return self._tables

    async def prepare(self, conn: Any, changes: list[Change]) -> None:
        """Read the column types of the bound tables in ``changes`` (once per table), so
        :meth:`build` can load logged values as the ORM loads columns."""
        tables = self.by_table()
        await rows.load_types(conn, {c.table for c in changes if c.table in tables})

    def build(self, changes: list[Change]) -> list[Message]:
        """All (group, message) pairs for ``changes``, in order. Runs binding code: call it from
        a thread (``sync_to_async``), as ``group_names`` may use the ORM."""
        by_table = self.by_table()
        out: list[Message] = []
        connection = rows.db_connection() if changes else None
        for change in changes:
            for binding in by_table.get(change.table, ()):
                try:
                    built = messages.build(binding, change, connection)
                except Exception:
                    logger.exception(
                        "Binding %s failed on change #%d (%s on %s, pk %s); its group events "
                        "and subscription changes for it were skipped",
                        binding.label(),
                        change.id,
                        change.op,
                        change.table,
                        change.pk,
                    )
                    continue
                events = built.events
                sent = self.sent_groups.setdefault(binding, OrderedDict())
                if change.op == "T" and events:
                    known = {g for g, _ in events}
                    extra = [g for g in sent if g not in known]
                    events = events + [(g, events[0][1]) for g in extra]
                for group, message in events:
                    if not self._valid_group(binding, group):
                        continue
                    sent[group] = None
                    sent.move_to_end(group)
                    out.append((group, message))
                while len(sent) > MAX_SENT_GROUPS:
                    sent.popitem(last=False)
                # Subscribers filter the raw change themselves (per filter, per user).
                out += built.changes
        return out

    def _valid_group(self, binding: type[Binding], group: Any) -> bool:
        try:
            self._group_checker.require_valid_group_name(group)
        except TypeError as exc:
            logger.error("Binding %s returned a bad group name: %s", binding.label(), exc)
            return False
        return True


def coalesce(messages: list[Message]) -> list[Message]:
    """Fewer, bigger group sends for one batch, without changing what any socket sees in what
    order.

    Each group send is a round trip or several (channels_redis), and was most of the listener's
    time under load. So:

    * events (from ``group_names``) that go to the same group one after another become one
      ``pgbinding.events`` message; a run is never merged across a send to another group, so a
      socket in several groups still receives them in the order they were built;
    * raw changes for subscriptions (change groups per stream and delivery key) become one
      ``pgbinding.changes`` message per group, sent after the events. Subscriptions are per
      stream and in commit order within it; group events and subscription events are separate
      sequences to a client.

    A run of one is sent as it was built (``pgbinding.event`` / ``pgbinding.change``).
    """
    out: list[Message] = []
    runs: list[tuple[str, list[dict[str, Any]]]] = []
    changes: dict[str, list[dict[str, Any]]] = {}
    for group, message in messages:
        if message.get("type") == CHANGE_TYPE:
            changes.setdefault(group, []).append(message)
        elif runs and runs[-1][0] == group and len(runs[-1][1]) < MAX_PER_MESSAGE:
            runs[-1][1].append(message)
        else:
            runs.append((group, [message]))
    for group, run in runs:
        out.append((group, run[0] if len(run) == 1 else {"type": EVENTS_TYPE, "events": run}))
    for group, items in changes.items():
        for start in range(0, len(items), MAX_PER_MESSAGE):
            chunk = items[start : start + MAX_PER_MESSAGE]
            if len(chunk) == 1:
                out.append((group, chunk[0]))
            else:
                out.append((group, {"type": CHANGES_TYPE, "changes": chunk}))
    return out
