"""The ASGI application the end-to-end tests serve (with daphne) and drive (with
WebsocketCommunicator)."""

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path

from pgbinding.consumers import Demultiplexer
from tests.testapp.bindings import (
    CounterBinding,
    ItemBinding,
    ItemValueBinding,
    OwnedItemBinding,
)


class ItemsDemultiplexer(Demultiplexer):
    """Channels 1.x shape: explicit consumers and connection groups."""

    consumers = {"items": ItemBinding.consumer, "itemvalues": ItemValueBinding.consumer}

    def connection_groups(self, **kwargs: Any) -> list[str]:
        return ["items"]


class ValuesDemultiplexer(Demultiplexer):
    """One binding whose events all go to one group (the listener coalesces those sends)."""

    consumers = {"itemvalues": ItemValueBinding.consumer}

    def connection_groups(self, **kwargs: Any) -> list[str]:
        return ["itemvalues"]


class CountersDemultiplexer(Demultiplexer):
    """The fault tests' group socket: every change of the counters, through group "counters"."""

    consumers = {"counters": CounterBinding.consumer}

    def connection_groups(self, **kwargs: Any) -> list[str]:
        return ["counters"]


class MineDemultiplexer(Demultiplexer):
    """Every socket joins the stream group of "myitems"; each user must see only their rows."""

    consumers = {"myitems": OwnedItemBinding.consumer}

    def connection_groups(self, **kwargs: Any) -> list[str]:
        return [OwnedItemBinding.stream_group()]


class RoomDemultiplexer(Demultiplexer):
    """Channels 1.x style: the group comes from the route (``connection_groups(**kwargs)``)."""

    consumers = {"items": ItemBinding.consumer}

    def connection_groups(self, **kwargs: Any) -> list[str]:
        return [f"items-status-{kwargs['status']}"]


websocket_urls = [
    path("binding/", ItemsDemultiplexer.as_asgi()),
    path("all/", Demultiplexer.as_asgi()),
    path("values/", ValuesDemultiplexer.as_asgi()),
    path("counters/", CountersDemultiplexer.as_asgi()),
    path("mine/", MineDemultiplexer.as_asgi()),
    path("status/<str:status>/", RoomDemultiplexer.as_asgi()),
]

application = ProtocolTypeRouter({"websocket": AuthMiddlewareStack(URLRouter(websocket_urls))})
