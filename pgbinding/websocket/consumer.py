"""The demultiplexing WebSocket consumer: frames ``{"stream": ..., "payload": {...}}`` in and out.

Route it like any Channels consumer (``path("binding/", Demultiplexer.as_asgi())``), behind
``AuthMiddlewareStack``. It joins ``connection_groups()`` and forwards their events, runs inbound
actions on the binding of a frame's stream, and keeps live subscriptions.

Outbound is default deny: a socket gets a binding's group events only if the binding's
``has_permission(user, "subscribe", None)`` says yes (or the binding sets
``send_to_everyone``), and only the rows its ``read_rule`` (and object permission) lets that
user see, judged on the logged row of each change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import nullcontext
from typing import Any, ClassVar

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.contrib.auth.models import AnonymousUser

from .. import metrics
from ..bindings import Binding
from ..conf import pgbinding_settings
from ..delivery.retry import again_once
from ..exceptions import RequestError
from ..positions import Cursor
from ..protocol import (
    LISTENER_TYPES,
    WS_4008_TOO_SLOW,
    WS_4009_MESSAGE_TOO_BIG,
    WS_4012_SERVICE_RESTART,
    reply,
)
from ..registry import registry
from ..threads import in_thread
from . import actions, frames, layerwatch
from .events import RepeatFilter, evaluate_all, judge_all
from .frames import check_request_id, parse_frame
from .outbound import OutboundQueue
from .subscribing import LayerUnavailable, Subscribing
from .subscriptions import Subscription

logger = logging.getLogger("pgbinding.consumers")

#: Wait after the channel layer failed under a socket before trying it again (seconds).
LAYER_RETRY = 0.5
_LAYER_LOST = "pgbinding.layer_lost"
# Kept importable from here for code written against earlier releases.
__all__ = ["Demultiplexer", "WebsocketDemultiplexer"]


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


class Demultiplexer(Subscribing, AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Serves bindings by stream name. Set ``consumers`` to serve some; leave it None for all
    registered bindings. Override ``connection_groups`` for groups every socket joins."""

    #: {stream: Binding} (Channels 1.x: ``{"intval": IntegerValueBinding.consumer}``).
    consumers: ClassVar[dict[str, type[Binding]] | None] = None

    def connection_groups(self, **kwargs: Any) -> list[str]:
        """Groups this socket joins on connect (``kwargs``: the route's keyword arguments, as
        in Channels 1.x); their events are forwarded as the socket's user may see them."""
        return []

    # -- connection ----------------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Channels' AsyncConsumer.__call__, with one change: a channel layer that fails under
        # this socket (Redis restarted, say) closes it with 4012 so the client reconnects and
        # resumes, instead of ending the consumer with an unhandled error (1011).
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is not None:
            try:
                self.channel_name = await again_once(logger, self.channel_layer.new_channel)
            except Exception as exc:
                # No channel, no socket: refuse the handshake (daphne answers HTTP 403), as a
                # client would be refused by a server that is down, not with a 500.
                logger.warning(
                    "The channel layer is unavailable (%r); refusing a WebSocket handshake", exc
                )
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": WS_4012_SERVICE_RESTART})
                return
        self.base_send = send
        self.outbound: OutboundQueue | None = None
        sources = [receive, self._layer_receive] if self.channel_layer is not None else [receive]
        try:
            await await_many_dispatch(sources, self.dispatch)
        except StopConsumer:
            pass

    async def _layer_receive(self) -> dict[str, Any]:
        try:
            message: dict[str, Any] = await self.channel_layer.receive(self.channel_name)
            return message
        except Exception as exc:
            # Keep the loop calm while the socket closes; the error is reported once.
            await _sleep(LAYER_RETRY)
            return {"type": _LAYER_LOST, "error": f"{type(exc).__name__}: {exc}"}

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs close_old_connections in a thread before every handler: a thread trip
        # per event, a fifth of the server's CPU when fanning out to 1,000 sockets (py-spy,
        # docs/benchmarks.md). Events from the listener do not touch the database, and the
        # subscription code that does runs on pgbinding.threads, which closes old connections
        # itself.
        if message.get("type") in LISTENER_TYPES:
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
        self.repeats = RepeatFilter()
        self.bucket = _Bucket(
            pgbinding_settings.current.RATE_LIMIT, pgbinding_settings.current.RATE_BURST
        )
        self._closing = False
        #: Streams whose group events this socket may receive (default deny).
        self.readable: dict[str, bool] = await in_thread(self._readable)()
        kwargs = self.scope.get("url_route", {}).get("kwargs", {})
        for group in self.connection_groups(**kwargs):
            await self._join(group)
        await self.accept()
        self._counted = True
        metrics.sockets.inc()
        layerwatch.watch(self, self.channel_layer)

    def _readable(self) -> dict[str, bool]:
        return {
            stream: bool(
                type(binding).send_to_everyone
                or binding.has_permission(self.user, "subscribe", None)
            )
            for stream, binding in self.bindings.items()
        }

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        await super().accept(subprotocol, headers)
        # Every frame from here on goes through a bounded queue: a client too slow to read is
        # closed with 4008 (and resumes with since) instead of growing the server.
        self.outbound = OutboundQueue(
            self.base_send,
            pgbinding_settings.current.MAX_OUTBOUND_BYTES,
            close_code=WS_4008_TOO_SLOW,
            on_overflow=self._too_slow,
        )
        self.outbound.start()

    def _too_slow(self) -> None:
        logger.info(
            "Closing a socket whose client reads too slowly (over MAX_OUTBOUND_BYTES = %d "
            "bytes waiting) with %d; it can resume with since",
            pgbinding_settings.MAX_OUTBOUND_BYTES,
            WS_4008_TOO_SLOW,
        )
        # Stop receiving events for it at once: some servers keep a dead socket's consumer
        # alive until its buffer drains.
        metrics.closes.labels(WS_4008_TOO_SLOW).inc()
        metrics.subscriptions.dec(len(self.subscriptions))
        self.subscriptions = {}
        self.readable = {}
        asyncio.get_running_loop().create_task(self._leave_groups())

    async def _leave_groups(self) -> None:
        """Leave every joined group; stop at one the layer refuses twice (it is down: the
        memberships expire with it)."""
        for group in list(getattr(self, "joined", ())):
            try:
                await self._leave(group)
            except Exception as exc:  # the layer may be what failed
                logger.info("Could not leave group %r: %s", group, exc)
                return

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        if code in (WS_4008_TOO_SLOW, WS_4009_MESSAGE_TOO_BIG, WS_4012_SERVICE_RESTART):
            metrics.closes.labels(code).inc()
        if self.outbound is None:  # not accepted yet: a rejection
            await super().close(code, reason)
        else:  # after the frames already queued
            self.outbound.put_close(int(code) if code else 1000, reason)

    async def send_json(self, content: Any, close: bool = False) -> None:
        await self.send_frame(content)
        if close:
            await self.close()

    async def disconnect(self, code: int) -> None:
        layerwatch.unwatch(self)
        if getattr(self, "_counted", False):
            self._counted = False
            metrics.sockets.dec()
            metrics.subscriptions.dec(len(getattr(self, "subscriptions", {})))
        if self.outbound is not None:
            await self.outbound.close()
        await self._leave_groups()
        self.joined = set()

    async def _join(self, group: str) -> None:
        if group in self.joined:
            return
        await again_once(logger, self.channel_layer.group_add, group, self.channel_name)
        self.joined.add(group)

    async def _leave(self, group: str) -> None:
        await again_once(logger, self.channel_layer.group_discard, group, self.channel_name)
        self.joined.discard(group)

    async def pgbinding_rejoin_groups(self, message: dict[str, Any] | None = None) -> None:
        """Join this socket's groups again (see :mod:`pgbinding.websocket.layerwatch`: the core
        Redis layer forgets members after ``group_expiry``)."""
        for group in list(self.joined):
            await again_once(logger, self.channel_layer.group_add, group, self.channel_name)

    async def pgbinding_layer_lost(self, message: dict[str, Any]) -> None:
        if self._closing:
            return
        self._closing = True
        if not message.get("quiet"):
            logger.warning(
                "The channel layer failed under a socket (%s); closing it with %d so its "
                "client reconnects and resumes",
                message.get("error"),
                WS_4012_SERVICE_RESTART,
            )
        await self.close(code=WS_4012_SERVICE_RESTART)

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Send one frame (strict JSON: a value JSON cannot hold is a bug, not a frame). Never
        waits for the client: frames queue, bounded (see :mod:`pgbinding.outbound`)."""
        status = frame.get("payload", {}).get("status")
        if status is not None:
            metrics.replies.labels(status).inc()
        await self.send_encoded(frames.encode(frame))

    async def send_encoded(self, text: str) -> None:
        """Send one frame already encoded as JSON (see :func:`frames.encode`)."""
        metrics.frames_out.inc()
        if self.outbound is None:
            await self.send(text_data=text)
        else:
            await self.outbound.send(text)

    # -- inbound -------------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        metrics.frames_in.inc()
        size = (
            len(text_data.encode(errors="replace"))
            if text_data is not None
            else len(bytes_data or b"")
        )
        if size > pgbinding_settings.current.CLOSE_FRAME_BYTES:
            logger.info("Closing a socket that sent a %d-byte frame", size)
            await self.close(code=WS_4009_MESSAGE_TOO_BIG)
            return
        try:
            if text_data is None:
                raise RequestError(400, "Binary frames are not supported; send JSON text.")
            if size > pgbinding_settings.current.MAX_FRAME_BYTES:
                raise RequestError(
                    413,
                    f"Frame of {size} bytes is over the limit of "
                    f"{pgbinding_settings.MAX_FRAME_BYTES} bytes.",
                )
            if not self.bucket.take():
                raise RequestError(429, "Too many requests on this socket; slow down.")
            serving = self.outbound.serving_request() if self.outbound else nullcontext()
            with serving:
                await self.handle_frame(parse_frame(text_data))
        except RequestError as bad:
            await self.send_frame(
                reply(bad.stream, bad.action, bad.request_id, bad.status, errors=bad.errors)
            )

    async def handle_frame(self, frame: Any) -> None:
        if not isinstance(frame, dict):
            raise RequestError(400, "A frame must be a JSON object with 'stream' and 'payload'.")
        stream, payload = frame.get("stream"), frame.get("payload")
        if not isinstance(stream, str):
            raise RequestError(400, "Missing or invalid 'stream': expected a string.")
        if not isinstance(payload, dict):
            raise RequestError(
                400, "Missing or invalid 'payload': expected an object.", stream=stream
            )
        action, request_id = payload.get("action"), payload.get("request_id")
        check_request_id(request_id, stream, action)
        binding = self.bindings.get(stream)
        if binding is None:
            known = ", ".join(sorted(self.bindings)) or "none"
            raise RequestError(
                404,
                f"Unknown stream {stream!r}; streams: {known}.",
                stream=stream,
                action=action,
                request_id=request_id,
            )
        if action not in actions.ACTIONS:
            raise RequestError(
                400,
                f"Unknown action {action!r}; actions: {', '.join(actions.ACTIONS)}.",
                stream=stream,
                action=action if isinstance(action, str) else None,
                request_id=request_id,
            )
        try:
            if action == "subscribe":
                status, data = await self.subscribe(binding, stream, payload)
            elif action == "unsubscribe":
                status, data = await self.unsubscribe(payload)
            else:
                run = actions.HANDLERS[action]
                status, data = await in_thread(run)(binding, payload)
        except RequestError as exc:
            await self.send_frame(reply(stream, action, request_id, exc.status, errors=exc.errors))
            if isinstance(exc, LayerUnavailable):
                # The client reconnects (with backoff) and subscribes again once it works.
                await self.pgbinding_layer_lost({"error": exc.reason})
            return
        except Exception:
            logger.exception("Action %r on stream %r failed", action, stream)
            await self.send_frame(
                reply(
                    stream,
                    action,
                    request_id,
                    500,
                    errors={"__all__": ["Internal error; the server log has details."]},
                )
            )
            return
        # Channels 1.x frames (no request_id) got no reply on success; keep that.
        if request_id is not None or action in actions.READ:
            await self.send_frame(reply(stream, action, request_id, status, data=data))

    # -- outbound ------------------------------------------------------------------------------

    async def pgbinding_event(self, message: dict[str, Any]) -> None:
        """An event for a group this socket is in (from ``group_names``)."""
        await self.pgbinding_events({"events": [message]})

    async def pgbinding_events(self, message: dict[str, Any]) -> None:
        """Events for one group, in order (the listener coalesces a batch's sends)."""
        todo = []
        for event in message["events"]:
            binding = self.bindings.get(event["stream"])
            if binding is not None and self.readable.get(event["stream"]):
                todo.append((binding, event))
        if not todo:
            return
        if any(type(b).judges_in_thread() for b, e in todo if "rows" in e):
            judged = await in_thread(judge_all)(todo)
        else:
            judged = judge_all(todo)
        for event, payload in judged:
            if payload is None:
                continue
            change_id = event.get("id")
            token = str(payload.get("position"))
            if change_id is None:  # from an older listener: the cursor's position will do
                change_id = Cursor.decode(token).position
            if self.repeats.first_time(event["stream"], int(change_id), token, payload["action"]):
                await self.send_frame({"stream": event["stream"], "payload": payload})

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
                if not self.repeats.first_time(
                    "sub:" + sub.id, change["id"], change["position"], "any"
                ):
                    continue
                todo.append((sub, change))
        if not todo:
            return
        if any(type(sub.binding).judges_in_thread() for sub, _ in todo):
            frames = await in_thread(evaluate_all)(todo)
        else:
            frames = evaluate_all(todo)
        for stream, payload in frames:
            await self.send_frame({"stream": stream, "payload": payload})


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


#: Channels 1.x name.
WebsocketDemultiplexer = Demultiplexer
