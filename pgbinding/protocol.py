"""The wire between pgbinding's parts: channel-layer message types, the event a client gets,
replies, and WebSocket close codes.

Channel-layer messages (listener -> consumers) hold only plain values (str, int, float, bool,
None, and lists and dicts of them), so every channel layer can carry them:

* ``pgbinding.event`` (handler ``pgbinding_event``): one event for a group, ``payload`` as the
  client gets it, ``id`` the change's log id, and, when each socket must judge the row for its
  user, ``rows`` (the old and new row, see :func:`row_message`);
* ``pgbinding.events``: several events for one group, in order (``events``);
* ``pgbinding.change`` / ``pgbinding.changes``: raw changes of one stream for subscriptions
  (``id``, ``op``, ``old``, ``new``, ``position``).
"""

from __future__ import annotations

from typing import Any

#: One event for a group (``pgbinding_event``).
EVENT_TYPE = "pgbinding.event"
#: Several events for one group, in order (``pgbinding_events``).
EVENTS_TYPE = "pgbinding.events"
#: A raw change of a stream, for subscriptions (``pgbinding_change``).
CHANGE_TYPE = "pgbinding.change"
#: Several raw changes of one stream, in commit order (``pgbinding_changes``).
CHANGES_TYPE = "pgbinding.changes"
#: Every message type the listener sends.
LISTENER_TYPES = frozenset({EVENT_TYPE, EVENTS_TYPE, CHANGE_TYPE, CHANGES_TYPE})

#: WebSocket close codes pgbinding uses. Applications may only send 1000 and 3000-4999 (autobahn,
#: under daphne, refuses anything else: the close would never leave), so the codes mirror the
#: RFC 6455 ones they mean in the 4000 range.
WS_4008_TOO_SLOW = 4008  # the client reads too slowly: MAX_OUTBOUND_BYTES passed; resume
WS_4009_MESSAGE_TOO_BIG = 4009  # a frame over CLOSE_FRAME_BYTES (as 1009)
WS_4012_SERVICE_RESTART = 4012  # the channel layer lost messages for this socket: resume (as 1012)


def event(
    stream: str,
    model: str,
    action: str,
    row: dict[str, Any] | None,
    position: str,
    change_id: int | None = None,
) -> dict[str, Any]:
    """A ``pgbinding.event`` message: ``row`` is a row message (``pk``, ``data``)."""
    payload: dict[str, Any] = {"action": action, "model": model}
    if row is not None:
        payload["pk"] = row["pk"]
        payload["data"] = row["data"]
    payload["position"] = position
    message: dict[str, Any] = {"type": EVENT_TYPE, "stream": stream, "payload": payload}
    if change_id is not None:
        message["id"] = change_id  # the log id, for consumers dropping repeats
    return message


def change(
    stream: str,
    change_id: int,
    op: str,
    old: dict[str, Any] | None,
    new: dict[str, Any] | None,
    position: str,
) -> dict[str, Any]:
    """A ``pgbinding.change`` message for subscriptions."""
    return {
        "type": CHANGE_TYPE,
        "stream": stream,
        "id": change_id,
        "op": op,
        "old": old,
        "new": new,
        "position": position,
    }


def unpack(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The single ``pgbinding.event`` / ``pgbinding.change`` messages inside a channel-layer
    message, in order: for consumers of your own that read pgbinding's groups."""
    if message.get("type") == EVENTS_TYPE:
        return list(message["events"])
    if message.get("type") == CHANGES_TYPE:
        return list(message["changes"])
    return [message]


def reply(
    stream: Any,
    action: Any,
    request_id: Any,
    status: int,
    data: Any = None,
    errors: Any = None,
) -> dict[str, Any]:
    """The frame of a reply to one request."""
    payload: dict[str, Any] = {"action": action, "request_id": request_id, "status": status}
    if errors is not None:
        payload["errors"] = errors
    else:
        payload["data"] = data
    return {"stream": stream, "payload": payload}
