"""The documented import path of the consumer: ``from pgbinding.consumers import
Demultiplexer`` (Channels 1.x name: ``WebsocketDemultiplexer``). It lives in
:mod:`pgbinding.websocket.consumer`."""

from .websocket.consumer import Demultiplexer, WebsocketDemultiplexer

__all__ = ["Demultiplexer", "WebsocketDemultiplexer"]
