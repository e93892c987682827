"""Errors that say what is wrong and what was expected."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


class PgBindingError(Exception):
    """Base class of pgbinding's own errors."""


class BindingConfigError(ImproperlyConfigured, PgBindingError):
    """A binding class is declared wrongly; the message names the binding and the fix."""


class InvalidIdentifier(PgBindingError, ValueError):
    """A table, column or other SQL name that pgbinding refuses to put into SQL."""


class InvalidGroupName(PgBindingError, ValueError):
    """A channel-layer group name that channels would reject."""
