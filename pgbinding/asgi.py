"""The documented import path of the in-process listener: ``from pgbinding.asgi import
with_listener``. It lives in :mod:`pgbinding.delivery.inprocess`."""

from .delivery.inprocess import ListenerApp, with_listener

__all__ = ["ListenerApp", "with_listener"]
