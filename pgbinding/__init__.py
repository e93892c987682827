"""pgbinding: live data binding for Django Channels, with change capture inside Postgres."""

from .bindings import Binding, Change, WebsocketBinding

__all__ = ["Binding", "Change", "WebsocketBinding"]
