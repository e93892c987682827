"""The demultiplexing WebSocket consumer: frames ``{"stream": ..., "payload": {...}}`` in and out.

Route it like any Channels consumer (``path("binding/", Demultiplexer.as_asgi())``), behind
``AuthMiddlewareStack``. It joins ``connection_groups()`` and forwards their events, runs inbound
actions on the binding of a frame's stream, and keeps live subscriptions: for each, it reads a
snapshot, then turns the raw changes of its stream into create/update/delete as rows enter,
change in and leave the subscription's filter, for rows the user may see.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth.models import AnonymousUser
from django.db import models

from . import actions, filters
from .bindings import EVENT_TYPE, Binding, instance_from_row
from .conf import pgbinding_settings
from .dispatch import CHANGE_TYPE, CHANGES_TYPE, EVENTS_TYPE
from .log import Cursor
from .registry import registry

logger = logging.getLogger("pgbinding.consumers")

#: How many changes a socket remembers in full to drop repeats (older ones: by cursor). The
#: listener sends in log order and a change's messages for its several groups one after the
#: other, so a repeat arrives within a change or two of the first copy; 32 leaves room for
#: layers that reorder a little, at ~4 KB per socket (256 cost ~44 KB, close to the whole
#: per-socket budget in bench/memory).
RECENT = 32
_ACTION_BITS = {"update": 1, "create": 2, "delete": 4, "reload": 8}
_ANY = 16
#: Channel-layer messages from the listener: handled without Channels' per-message thread trip
#: to close old database connections (see Demultiplexer.dispatch).
_LISTENER_TYPES = frozenset({EVENT_TYPE, EVENTS_TYPE, CHANGE_TYPE, CHANGES_TYPE})

#: WebSocket close code for a frame too big to read (RFC 6455).
WS_1009_MESSAGE_TOO_BIG = 1009
REQUEST_ID_MAX = 100


@dataclass
class Subscription:
    id: str
    stream: str
    binding: Binding
    where: list[filters.Condition]
    pk: Any
    cursor: Cursor
    #: pks of the rows the client holds (None after a resume: not known, so judged by filter).
    members: set[Any] | None = field(default_factory=set)


class _Bucket:
    """Token bucket: ``rate`` requests a second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class BadFrame(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        stream: Any = None,
        action: Any = None,
        request_id: Any = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.stream, self.action, self.request_id = stream, action, request_id


class Demultiplexer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Serves bindings by stream name. Set ``consumers`` to serve some; leave it None for all
    registered bindings. Override ``connection_groups`` for groups every socket joins."""

    #: {stream: Binding} (Channels 1.x: ``{"intval": IntegerValueBinding.consumer}``).
    consumers: ClassVar[dict[str, type[Binding]] | None] = None

    def connection_groups(self, **kwargs: Any) -> list[str]:
        """Groups this socket joins on connect; their events are forwarded as they come."""
        return []

    # -- connection ----------------------------------------------------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs close_old_connections in a thread before every handler: a thread trip
        # per event, a fifth of the server's CPU when fanning out to 1,000 sockets (py-spy,
        # docs/benchmarks.md). Events from the listener do not touch the database, and the
        # subscription code that does goes through database_sync_to_async, which closes old
        # connections itself.
        if message.get("type") in _LISTENER_TYPES:
            await getattr(self, get_handler_name(message))(message)
            return
        await super().dispatch(message)

    async def connect(self) -> None:
        self.user = self.scope.get("user") or AnonymousUser()
        table = (
            self.consumers if self.consumers is not None else {b.stream: b for b in registry.all()}
        )
        self.bindings: dict[str, Binding] = {
            stream: cls(user=self.user, scope=self.scope) for stream, cls in table.items()
        }
        self.subscriptions: dict[str, Subscription] = {}
        self.joined: set[str] = set()
        #: Changes seen lately, per (stream or "sub:<id>", log id): the actions sent (bits).
        self.recent: dict[tuple[str, int], int] = {}  # insertion order: oldest first
        #: Per stream or subscription, the furthest listener cursor received: what it covers
        #: and is not in ``recent`` is a repeat (a listener re-sending after a crash).
        self.high: dict[str, Cursor] = {}
        self.bucket = _Bucket(
            float(pgbinding_settings.RATE_LIMIT), float(pgbinding_settings.RATE_BURST)
        )
        for group in self.connection_groups():
            await self._join(group)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in list(getattr(self, "joined", ())):
            await self.channel_layer.group_discard(group, self.channel_name)
        self.joined = set()

    async def _join(self, group: str) -> None:
        if group not in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
            self.joined.add(group)

    # -- inbound -------------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > int(pgbinding_settings.CLOSE_FRAME_BYTES):
            logger.info("Closing a socket that sent a %d-byte frame", size)
            await self.close(code=WS_1009_MESSAGE_TOO_BIG)
            return
        try:
            if text_data is None:
                raise BadFrame(400, "Binary frames are not supported; send JSON text.")
            if size > int(pgbinding_settings.MAX_FRAME_BYTES):
                raise BadFrame(
                    413,
                    f"Frame of {size} bytes is over the limit of "
                    f"{pgbinding_settings.MAX_FRAME_BYTES} bytes.",
                )
            if not self.bucket.take():
                raise BadFrame(429, "Too many requests on this socket; slow down.")
            try:
                frame = json.loads(text_data)
            except ValueError as exc:
                raise BadFrame(400, f"Malformed JSON: {exc}") from None
            await self.handle_frame(frame)
        except BadFrame as bad:
            await self._reply(
                bad.stream,
                bad.action,
                bad.request_id,
                bad.status,
                errors={"__all__": [bad.message]},
            )

    async def handle_frame(self, frame: Any) -> None:
        if not isinstance(frame, dict):
            raise BadFrame(400, "A frame must be a JSON object with 'stream' and 'payload'.")
        stream, payload = frame.get("stream"), frame.get("payload")
        if not isinstance(stream, str):
            raise BadFrame(400, "Missing or invalid 'stream': expected a string.")
        if not isinstance(payload, dict):
            raise BadFrame(400, "Missing or invalid 'payload': expected an object.", stream)
        action, request_id = payload.get("action"), payload.get("request_id")
        if request_id is not None and (
            isinstance(request_id, bool)
            or not isinstance(request_id, str | int)
            or len(str(request_id)) > REQUEST_ID_MAX
        ):
            raise BadFrame(
                400,
                f"'request_id' must be a string or an integer of at most {REQUEST_ID_MAX} "
                "characters.",
                stream,
                action,
            )
        binding = self.bindings.get(stream)
        if binding is None:
            known = ", ".join(sorted(self.bindings)) or "none"
            raise BadFrame(
                404, f"Unknown stream {stream!r}; streams: {known}.", stream, action, request_id
            )
        if action not in actions.ACTIONS:
            raise BadFrame(
                400,
                f"Unknown action {action!r}; actions: {', '.join(actions.ACTIONS)}.",
                stream,
                action if isinstance(action, str) else None,
                request_id,
            )
        try:
            if action == "subscribe":
                status, data = await self.subscribe(binding, stream, payload)
            elif action == "unsubscribe":
                status, data = await self.unsubscribe(payload)
            else:
                run = getattr(actions, "list_" if action == "list" else action)
                status, data = await database_sync_to_async(run)(binding, payload)
        except actions.ActionError as exc:
            await self._reply(stream, action, request_id, exc.status, errors=exc.errors)
            return
        except Exception:
            logger.exception("Action %r on stream %r failed", action, stream)
            await self._reply(
                stream,
                action,
                request_id,
                500,
                errors={"__all__": ["Internal error; the server log has details."]},
            )
            return
        # Channels 1.x frames (no request_id) got no reply on success; keep that.
        if request_id is not None or action in ("retrieve", "list", "subscribe"):
            await self._reply(stream, action, request_id, status, data=data)

    async def _reply(
        self,
        stream: Any,
        action: Any,
        request_id: Any,
        status: int,
        data: Any = None,
        errors: Any = None,
    ) -> None:
        payload: dict[str, Any] = {"action": action, "request_id": request_id, "status": status}
        if errors is not None:
            payload["errors"] = errors
        else:
            payload["data"] = data
        await self.send_json({"stream": stream, "payload": payload})

    # -- subscriptions -------------------------------------------------------------------------

    async def subscribe(
        self, binding: Binding, stream: str, payload: dict[str, Any]
    ) -> tuple[int, Any]:
        sub_id = payload.get("request_id")
        if sub_id is None:
            raise actions.ActionError(
                400, {"request_id": ["subscribe needs a request_id; it names the subscription."]}
            )
        sub_id = str(sub_id)
        if sub_id in self.subscriptions:
            raise actions.ActionError(400, {"request_id": [f"subscription {sub_id!r} exists"]})
        if len(self.subscriptions) >= int(pgbinding_settings.MAX_SUBSCRIPTIONS):
            raise actions.ActionError(429, "Too many subscriptions on this socket.")
        since = None
        if payload.get("since") is not None:
            try:
                since = Cursor.decode(payload["since"])
            except ValueError as exc:
                raise actions.ActionError(400, {"since": [str(exc)]}) from None
        pk = payload.get("pk")

        def prepare() -> tuple[list[filters.Condition], Any]:
            where = actions.conditions(binding, payload)
            clean = actions.clean_pk(binding, pk) if pk is not None else None
            if not binding.has_permission(binding.user, "subscribe", clean):
                raise actions.ActionError(
                    403, "You do not have permission to subscribe to this stream."
                )
            return where, clean

        where, clean_pk = await database_sync_to_async(prepare)()
        # Join first: every change committed after the snapshot below reaches us.
        await self._join(binding.change_group())
        snap = await database_sync_to_async(actions.snapshot)(binding, where, clean_pk, since)
        sub = Subscription(sub_id, stream, binding, where, clean_pk, snap.cursor)
        self.subscriptions[sub_id] = sub
        if since is not None and not snap.resync:
            # Resuming: the changes missed, then the reply with the new position. While
            # replaying, which rows the client holds is not known: an old row counts as held if
            # it matched the filter and the user could see it.
            sub.members = None
            sent = 0
            for change_id, op, old, new in snap.replay:
                message = {
                    "id": change_id,
                    "op": op,
                    "old": old,
                    "new": new,
                    "position": since.encode(),
                }
                for out in await database_sync_to_async(_evaluate)(sub, message):
                    await self.send_json({"stream": stream, "payload": out})
                    sent += 1
            sub.members = snap.members
            return 200, {
                "subscription": sub_id,
                "replayed": sent,
                "position": snap.cursor.encode(),
            }
        sub.members = snap.members
        return 200, {
            "subscription": sub_id,
            "results": snap.rows,
            "position": snap.cursor.encode(),
            "resync": snap.resync,
        }

    async def unsubscribe(self, payload: dict[str, Any]) -> tuple[int, Any]:
        sub_id = payload.get("subscription", payload.get("request_id"))
        sub = self.subscriptions.pop(str(sub_id), None) if sub_id is not None else None
        if sub is None:
            raise actions.ActionError(404, {"subscription": [f"no subscription {sub_id!r}"]})
        if not any(s.stream == sub.stream for s in self.subscriptions.values()):
            group = sub.binding.change_group()
            await self.channel_layer.group_discard(group, self.channel_name)
            self.joined.discard(group)
        return 200, {"subscription": sub.id}

    # -- outbound ------------------------------------------------------------------------------

    def _first_time(self, space: str, change_id: int, token: str, action: str) -> bool:
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

    async def pgbinding_event(self, message: dict[str, Any]) -> None:
        """An event for a group this socket is in (from ``group_names``)."""
        payload = message["payload"]
        token = str(payload.get("position"))
        change_id = message.get("id")
        if change_id is None:  # from an older listener: the cursor's position will do
            change_id = Cursor.decode(token).position
        if not self._first_time(message["stream"], int(change_id), token, payload["action"]):
            return
        await self.send_json({"stream": message["stream"], "payload": payload})

    async def pgbinding_events(self, message: dict[str, Any]) -> None:
        """Several events for one group, in order (the listener coalesces a batch's sends)."""
        for event in message["events"]:
            await self.pgbinding_event(event)

    async def pgbinding_change(self, message: dict[str, Any]) -> None:
        """A raw change of a stream this socket has subscriptions on."""
        await self.pgbinding_changes({"changes": [message]})

    async def pgbinding_changes(self, message: dict[str, Any]) -> None:
        """Raw changes of one stream, in commit order, for this socket's subscriptions."""
        todo: list[tuple[Subscription, dict[str, Any]]] = []
        for change in message["changes"]:
            for sub in [s for s in self.subscriptions.values() if s.stream == change["stream"]]:
                if change["op"] != "T" and sub.cursor.covers(change["id"]):
                    continue  # already in the subscription's snapshot or replay
                if not self._first_time("sub:" + sub.id, change["id"], change["position"], "any"):
                    continue
                todo.append((sub, change))
        if not todo:
            return
        # One trip to a thread for the whole message: evaluation may query (visibility).
        frames = await database_sync_to_async(_evaluate_all)(todo)
        for stream, payload in frames:
            await self.send_json({"stream": stream, "payload": payload})


def _evaluate_all(
    todo: list[tuple[Subscription, dict[str, Any]]],
) -> list[tuple[str, dict[str, Any]]]:
    return [(sub.stream, out) for sub, change in todo for out in _evaluate(sub, change)]


def _evaluate(sub: Subscription, message: dict[str, Any]) -> list[dict[str, Any]]:
    """What subscription ``sub`` should see of one raw change: create when a row enters its
    view, update while it stays, delete when it leaves."""
    binding = sub.binding
    base = {"model": binding.model_label(), "position": message["position"], "subscription": sub.id}
    if message["op"] == "T":
        if sub.members is not None:
            sub.members.clear()
        return [{"action": "reload", "reason": "truncate", **base}]
    old = instance_from_row(binding.model, message["old"]) if message["old"] else None
    new = instance_from_row(binding.model, message["new"]) if message["new"] else None
    old_pk = binding.serialize_pk(old) if old is not None else None
    new_pk = binding.serialize_pk(new) if new is not None else None
    old_in = old is not None and _was_in(sub, old, old_pk)
    new_in = new is not None and _in_view(sub, new) and _visible(binding, new)
    out: list[dict[str, Any]] = []

    def event(action: str, pk: Any, data: Any) -> dict[str, Any]:
        e = {"action": action, "pk": pk, **base}
        if data is not None:
            e["data"] = data
        return e

    if old is not None and old_in and new is not None and new_in:
        new_data = binding.serialize(new)
        if old_pk != new_pk:
            out += [event("delete", old_pk, None), event("create", new_pk, new_data)]
        elif binding.serialize(old) != new_data:
            out.append(event("update", new_pk, new_data))
    elif old is not None and old_in:
        known = sub.members is not None
        out.append(event("delete", old_pk, binding.serialize(old) if known else None))
    elif new is not None and new_in:
        out.append(event("create", new_pk, binding.serialize(new)))
    if sub.members is not None:
        sub.members.discard(old_pk)
        if new_in:
            sub.members.add(new_pk)
    return out


def _in_view(sub: Subscription, instance: models.Model) -> bool:
    return (sub.pk is None or instance.pk == sub.pk) and filters.matches(sub.where, instance)


def _was_in(sub: Subscription, old: models.Model, pk: Any) -> bool:
    """Did the client hold this row before the change? Known exactly from the rows it was
    sent; after a resume (not known), judged by filter and object permission."""
    if sub.members is not None:
        return pk in sub.members
    binding = sub.binding
    return _in_view(sub, old) and binding.has_object_permission(binding.user, "retrieve", old)


def _visible(binding: Binding, instance: models.Model) -> bool:
    """May the subscriber see this row (its queryset, and object permission)?"""
    if type(binding).get_queryset is not Binding.get_queryset:
        if not binding.get_queryset(binding.user).filter(pk=instance.pk).exists():
            return False
    return binding.has_object_permission(binding.user, "retrieve", instance)


#: Channels 1.x name.
WebsocketDemultiplexer = Demultiplexer
