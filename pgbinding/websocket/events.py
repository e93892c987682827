"""What a socket makes of the listener's messages: each group event judged for its user, each
raw change for its subscriptions, and repeats of one change dropped.

Repeats happen: a socket in several groups a change went to gets a copy from each, and a
listener that took over after a crash re-sends what was sent since the last saved position.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..positions import Cursor
from . import subscriptions

if TYPE_CHECKING:
    from ..bindings import Binding
    from .subscriptions import Subscription

#: How many changes a socket remembers in full to drop repeats (older ones: by cursor). The
#: listener sends in log order and a change's messages for its several groups one after the
#: other, so a repeat arrives within a change or two of the first copy; 32 leaves room for
#: layers that reorder a little, at ~4 KB per socket (256 cost ~44 KB, close to the whole
#: per-socket budget in bench/memory).
RECENT = 32
_ACTION_BITS = {"update": 1, "create": 2, "delete": 4, "reload": 8}
_ANY = 16


class RepeatFilter:
    """Which changes a socket has sent on, per stream (group events) or subscription
    (``"sub:<id>"``), in bounded memory."""

    def __init__(self) -> None:
        #: Changes seen lately, per (space, log id): the actions sent (bits); oldest first.
        self.recent: dict[tuple[str, int], int] = {}
        #: Per space, the furthest listener cursor received: what it covers and is not in
        #: ``recent`` is a repeat (a listener re-sending after a crash).
        self.high: dict[str, Cursor] = {}

    def first_time(self, space: str, change_id: int, token: str, action: str) -> bool:
        """Drop repeats of one change (the socket is in several groups it went to, or a
        listener re-sends after a crash): after an update, nothing more; otherwise each action
        once. Bounded memory: the last RECENT changes in full, older ones by cursor."""
        key = (space, change_id)
        bit = _ACTION_BITS.get(action, _ANY)
        sent = self.recent.get(key)
        if sent is not None:
            if sent & (_ACTION_BITS["update"] | bit):
                return False
            self.recent[key] = sent | bit
            return True
        high = self.high.get(space)
        if high is not None and high.covers(change_id):
            return False
        self.recent[key] = bit
        while len(self.recent) > RECENT:
            del self.recent[next(iter(self.recent))]
        cursor = Cursor.decode(token)
        if high is None or cursor.position >= high.position:
            self.high[space] = cursor
        return True


def judge_all(
    todo: list[tuple[Binding, dict[str, Any]]],
) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    return [(event, judge(binding, event)) for binding, event in todo]


def judge(binding: Binding, event: dict[str, Any]) -> dict[str, Any] | None:
    """The payload this socket's user should get of a group event, or None.

    The listener chose the action by group transition; the user's view of the row before and
    after the change decides what remains of it: seen before and after, the event as sent;
    only before, a ``delete``; only after, a ``create``; neither, nothing.
    """
    payload: dict[str, Any] = event["payload"]
    pair = event.get("rows")
    if pair is None:
        return payload
    action = payload["action"]
    if action == "reload":
        return payload
    old_ok = action in ("update", "delete") and binding.sees(pair.get("old"))
    new_ok = action in ("update", "create") and binding.sees(pair.get("new"))
    if action == "update":
        if old_ok and new_ok:
            return payload
        if old_ok:
            old = pair["old"]
            return {**payload, "action": "delete", "pk": old["pk"], "data": old["data"]}
        return {**payload, "action": "create"} if new_ok else None
    if action == "create":
        return payload if new_ok else None
    return payload if old_ok else None


def evaluate_all(
    todo: list[tuple[Subscription, dict[str, Any]]],
) -> list[tuple[str, dict[str, Any]]]:
    return [
        (sub.stream, out) for sub, change in todo for out in subscriptions.evaluate(sub, change)
    ]
