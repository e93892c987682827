"""The channel layer pgbinding's ``channel_layers()`` configures for Redis: channels-redis's core
layer, with one receive made safe to cancel.

channels-redis receives every process-local channel (``specific.<process>!<socket>``) through
one ``BZPOPMIN`` at a time, made by whichever consumer holds the process's receive lock, for
whichever local channel the next message is; it then saves the popped message in a backup
queue, hands it to that channel's buffer and drops the backup. When a socket closes, Channels
cancels its consumer's ``receive``. If that consumer was the one receiving, a message Redis had
already popped for *another* socket of the process could be lost or delayed behind later ones
(channels#1683, channels_redis#366). pgbinding's consumers drop a change that arrives behind a
later one of the same stream as a repeat, so either way the other socket silently missed it:
tests/faults/test_slow_client.py's reading socket lost one 100-change message, at the moment
the never-reading socket on the same daphne was closed, in about one run in eight on a loaded
2-core machine.

:class:`RedisChannelLayer` runs that receive (:meth:`receive_single`) as a task of its own that
a cancelled caller does not interrupt: it finishes popping, saving and cleaning up, and the
message goes to the buffer of the channel it was for, where that socket's next ``receive``
finds it, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels_redis.core import RedisChannelLayer as _CoreLayer

__all__ = ["RedisChannelLayer"]


class RedisChannelLayer(_CoreLayer):  # type: ignore[misc]
    """channels-redis's ``RedisChannelLayer``; a cancelled receive loses no other socket's
    message."""

    async def receive_single(self, channel: str) -> tuple[Any, dict[str, Any]]:
        if "!" not in channel:  # a worker channel: not shared, nothing else to lose
            result: tuple[Any, dict[str, Any]] = await super().receive_single(channel)
            return result
        task = asyncio.ensure_future(super().receive_single(channel))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # Our caller was cancelled (its socket closed); the receive goes on, and what it
            # pops goes where receive() would have put it.
            task.add_done_callback(self._deliver_late)
            raise

    def _deliver_late(self, task: asyncio.Future[tuple[Any, dict[str, Any]]]) -> None:
        if task.cancelled() or task.exception() is not None:
            return  # nothing was popped (the loop is closing, or Redis failed)
        message_channel, message = task.result()
        for name in message_channel if isinstance(message_channel, list) else [message_channel]:
            self.receive_buffer[name].put_nowait(message)
