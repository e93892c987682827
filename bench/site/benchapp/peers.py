"""The peers pgbinding is compared with, on the same model and the same socket shape.

* ``SignalConsumer``: the hand-written approach. A ``post_save``/``post_delete`` receiver sends
  the row to a group from ``transaction.on_commit``; the consumer forwards group events.
* djangochannelsrestframework's ``model_observer`` (signals + ``on_commit`` inside the library),
  when that package is installed (only in the benchmark environment).

``BENCH_PEERS`` chooses which peers' signal receivers a process connects: a comma-separated
list of ``signal`` and ``dcrf``, or ``none``; unset means both. A writing process measured for
one system connects only that system's receivers (bench/peers.py), so no peer's work is paid
for while another system is measured. The consumers (``/signal/``, ``/dcrf/``) are served
either way.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

from asgiref.sync import async_to_sync
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from .models import Tick

DCRF = importlib.util.find_spec("djangochannelsrestframework") is not None
SIGNAL_GROUP = "ticks-signal"
PEERS = ("signal", "dcrf")


def enabled() -> set[str]:
    """The peers whose receivers this process connects (``BENCH_PEERS``; unset: all)."""
    raw = os.environ.get("BENCH_PEERS")
    if raw is None:
        return set(PEERS)
    names = {x.strip() for x in raw.split(",") if x.strip()} - {"none"}
    unknown = names - set(PEERS)
    if unknown:
        raise ValueError(f"BENCH_PEERS: unknown peer(s) {sorted(unknown)}; known: {PEERS}")
    return names


def _send(action: str, instance: Tick) -> None:
    message = {
        "type": "tick.event",
        "action": action,
        "pk": instance.pk,
        "data": {"value": instance.value, "note": instance.note},
    }
    layer = get_channel_layer()
    transaction.on_commit(lambda: async_to_sync(layer.group_send)(SIGNAL_GROUP, message))


def _saved(sender: Any, instance: Tick, created: bool, **kwargs: Any) -> None:
    _send("create" if created else "update", instance)


def _deleted(sender: Any, instance: Tick, **kwargs: Any) -> None:
    _send("delete", instance)


if "signal" in enabled():
    post_save.connect(_saved, sender=Tick, dispatch_uid="bench-signal-save")
    post_delete.connect(_deleted, sender=Tick, dispatch_uid="bench-signal-delete")


class SignalConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(SIGNAL_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(SIGNAL_GROUP, self.channel_name)

    async def tick_event(self, event: dict[str, Any]) -> None:
        await self.send_json({"action": event["action"], "pk": event["pk"], "data": event["data"]})


@functools.cache
def dcrf_consumer() -> type:
    """djangochannelsrestframework's documented ``model_observer`` consumer for Tick: the
    observer's serializer builds the message in the writing process (from ``post_save``, sent
    at ``on_commit``); the consumer subscribes when it connects and forwards each message."""
    from djangochannelsrestframework.generics import GenericAsyncAPIConsumer
    from djangochannelsrestframework.observer import model_observer

    class TickObserverConsumer(GenericAsyncAPIConsumer):  # type: ignore[misc]
        queryset = Tick.objects.all()

        async def connect(self) -> None:
            await self.accept()
            await self.tick_activity.subscribe()

        @model_observer(Tick)
        async def tick_activity(self, message: Any, observer: Any = None, **kwargs: Any) -> None:
            await self.send_json(message)

        @tick_activity.serializer
        def tick_activity(self, instance: Tick, action: Any, **kwargs: Any) -> dict[str, Any]:
            return {
                "action": action.value,
                "pk": instance.pk,
                "data": {"value": instance.value, "note": instance.note},
            }

    return TickObserverConsumer
