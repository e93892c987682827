"""Errors that say what is wrong and what was expected.

Two kinds, one root (:class:`PgBindingError`):

* configuration errors (:class:`BindingConfigError`, :class:`InvalidIdentifier`), raised at
  startup with a message that names the binding or setting and the fix;
* request errors (:class:`RequestError`), raised while serving a socket: each carries the
  reply's ``status`` (HTTP-like) and ``errors`` (``{field or "__all__": [messages]}``), which
  the consumer turns into a reply. Nothing else reaches a client: any other exception is logged
  and answered with a 500 that says only "internal error".
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured


class PgBindingError(Exception):
    """Base class of pgbinding's own errors."""


class BindingConfigError(ImproperlyConfigured, PgBindingError):
    """A binding class is declared wrongly; the message names the binding and the fix."""


class InvalidIdentifier(PgBindingError, ValueError):
    """A table, column or other SQL name that pgbinding refuses to put into SQL."""


class RequestError(PgBindingError):
    """A client's request refused, with the reply's ``status`` and ``errors``."""

    def __init__(
        self,
        status: int,
        errors: dict[str, list[str]] | str,
        *,
        stream: Any = None,
        action: Any = None,
        request_id: Any = None,
    ) -> None:
        if isinstance(errors, str):
            errors = {"__all__": [errors]}
        super().__init__(status, errors)
        self.status = status
        self.errors = errors
        self.stream, self.action, self.request_id = stream, action, request_id

    @property
    def message(self) -> str:
        return "; ".join(m for messages in self.errors.values() for m in messages)
