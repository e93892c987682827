"""pgbinding: live data binding for Django Channels, with change capture inside Postgres."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bindings import Binding, Change, WebsocketBinding


def __getattr__(name: str) -> Any:
    # Lazy: `from pgbinding.conf import channel_layers` in a settings file must not load
    # Django's models and forms while settings load.
    if name in __all__:
        from . import bindings

        return getattr(bindings, name)
    raise AttributeError(f"module 'pgbinding' has no attribute {name!r}")


__all__ = ["Binding", "Change", "WebsocketBinding"]
