"""The documented import path of ``unpack`` (the single events inside a channel-layer message,
for consumers of your own). The listener's dispatch step is :mod:`pgbinding.delivery.dispatch`;
the message types are in :mod:`pgbinding.protocol`."""

from .protocol import CHANGE_TYPE, CHANGES_TYPE, EVENT_TYPE, EVENTS_TYPE, unpack

__all__ = ["CHANGES_TYPE", "CHANGE_TYPE", "EVENTS_TYPE", "EVENT_TYPE", "unpack"]
