"""The socket's side of live subscriptions: ``subscribe`` (snapshot or replay, then live
events) and ``unsubscribe``, as a mixin of the consumer (:mod:`.consumer`). The judging of
each change and the snapshot itself are in :mod:`.subscriptions`."""

from __future__ import annotations

from typing import Any

from .. import metrics
from ..bindings import Binding
from ..conf import pgbinding_settings
from ..exceptions import RequestError
from ..positions import Cursor
from ..serialize import json_value
from ..threads import in_thread
from . import actions, frames, subscriptions
from .subscriptions import Subscription


class LayerUnavailable(RequestError):
    """The channel layer failed while the socket joined a group: 503, then close 4012."""

    def __init__(self, reason: str) -> None:
        super().__init__(503, "The channel layer is unavailable; reconnect and subscribe again.")
        self.reason = reason


class Subscribing:
    """Subscriptions of one socket. Needs the consumer's ``bindings``, ``subscriptions``,
    ``joined``, ``_join``, ``_leave``, ``send_frame``, ``send_encoded``, ``connection_groups`` and
    ``channel_layer``."""

    subscriptions: dict[str, Subscription]
    joined: set[str]
    scope: dict[str, Any]
    channel_layer: Any
    channel_name: str

    async def _join(self, group: str) -> None:
        raise NotImplementedError

    async def _leave(self, group: str) -> None:
        raise NotImplementedError

    async def send_frame(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError

    async def send_encoded(self, text: str) -> None:
        raise NotImplementedError

    def connection_groups(self, **kwargs: Any) -> list[str]:
        raise NotImplementedError

    async def subscribe(
        self, binding: Binding, stream: str, payload: dict[str, Any]
    ) -> tuple[int, Any]:
        sub_id = payload.get("request_id")
        if sub_id is None:
            raise RequestError(
                400, {"request_id": ["subscribe needs a request_id; it names the subscription."]}
            )
        sub_id = str(sub_id)
        if sub_id in self.subscriptions:
            raise RequestError(400, {"request_id": [f"subscription {sub_id!r} exists"]})
        if len(self.subscriptions) >= pgbinding_settings.current.MAX_SUBSCRIPTIONS:
            raise RequestError(429, "Too many subscriptions on this socket.")
        since = None
        if payload.get("since") is not None:
            try:
                since = Cursor.decode(payload["since"])
            except ValueError as exc:
                raise RequestError(400, {"since": [str(exc)]}) from None
        pk = payload.get("pk")

        def prepare() -> Subscription:
            where = actions.conditions(binding, payload)
            clean = actions.clean_pk(binding, pk) if pk is not None else None
            if not binding.has_permission(binding.user, "subscribe", clean):
                raise RequestError(403, "You do not have permission to subscribe to this stream.")
            pk_json = None
            if clean is not None:
                pk_field = binding.model._meta.pk
                assert pk_field is not None
                pk_json = json_value(pk_field, clean)
            return Subscription(sub_id, stream, binding, where, clean, Cursor(0), pk_json)

        sub = await in_thread(prepare)()
        # Join first: every change committed after the snapshot below reaches us.
        try:
            for group in self._change_groups(binding):
                await self._join(group)
        except Exception as exc:
            raise LayerUnavailable(f"{type(exc).__name__}: {exc}") from None
        snap = await in_thread(subscriptions.snapshot)(sub, since)
        sub.cursor = snap.cursor
        self.subscriptions[sub_id] = sub
        metrics.subscriptions.inc()
        if since is not None:
            (metrics.replays if snap.replay is not None else metrics.resyncs).inc()
        if snap.replay is not None:
            # Resuming: the changes missed, then the reply with the new position.
            for event in snap.replay:
                await self.send_encoded(frames.stream_frame(stream, event))
            sub.members = snap.members
            return 200, {
                "subscription": sub_id,
                "replayed": len(snap.replay),
                "position": snap.cursor.encode(),
            }
        sub.members = snap.members
        return 200, {
            "subscription": sub_id,
            "results": snap.rows,
            "position": snap.cursor.encode(),
            "resync": snap.resync,
        }

    def _change_groups(self, binding: Binding) -> list[str]:
        """The change groups a subscriber joins: the stream's (truncates, and every change of
        a binding whose read rule has no delivery keys) and its user's delivery keys."""
        cls = type(binding)
        keys = sorted(cls.rule().user_keys(binding.user))
        return [cls.change_group(), *(cls.change_group(k) for k in keys)]

    async def unsubscribe(self, payload: dict[str, Any]) -> tuple[int, Any]:
        sub_id = payload.get("subscription", payload.get("request_id"))
        sub = self.subscriptions.pop(str(sub_id), None) if sub_id is not None else None
        if sub is None:
            raise RequestError(404, {"subscription": [f"no subscription {sub_id!r}"]})
        metrics.subscriptions.dec()
        if not any(s.stream == sub.stream for s in self.subscriptions.values()):
            for group in self._change_groups(sub.binding):
                if group in self.joined and group not in self._connection_groups():
                    await self._leave(group)
        return 200, {"subscription": sub.id}

    def _connection_groups(self) -> set[str]:
        kwargs = self.scope.get("url_route", {}).get("kwargs", {})
        return set(self.connection_groups(**kwargs))
