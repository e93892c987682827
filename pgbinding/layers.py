"""The channel layer pgbinding's ``channel_layers()`` configures for Redis: channels-redis's core
layer, with a receive that a closing socket cannot cut short.

channels-redis receives every process-local channel (``specific.<process>!<socket>``) from one
Redis key, one ``BZPOPMIN`` at a time, made by whichever consumer holds the process's receive
lock, for whichever local channel the next message is. When a socket closes, Channels cancels
its consumer's ``receive``. If that consumer was the one waiting in ``BZPOPMIN`` and Redis had
already popped a message for *another* socket of the process, redis-py drops the connection with
the answer unread, and the message is gone: it is neither in that key nor in the layer's backup
queue (channels#1683, channels_redis#366). tests/integration/test_channel_layer.py loses one
message in each of its tries that way with the stock layer; tests/faults/test_slow_client.py's
reading socket lost one 100-change message that way, at the moment the never-reading socket of
the same daphne was closed, in about one run in ten on a loaded 2-core machine.

:class:`RedisChannelLayer` moves that ``BZPOPMIN`` out of the consumers: one task per process
(the *pump*) pops the process's messages into the local channels' buffers, and a consumer's
``receive`` only waits on its own buffer, which cancelling loses nothing from. The pump runs while
some consumer waits and is never cancelled by one; it stops, after the pop it is in, once nobody
waits, and is cancelled only by ``flush`` and :meth:`close_pools`. When Redis fails under it
twice in a row, every consumer waiting at that moment gets the error from its ``receive``, as the
lock's holder alone did before (each would have met it in turn).

channels-redis keeps each popped message in its backup queue until the receive has it, so a
pop cut short by a Redis failure gives it back to the next one; the pump uses channels-redis's
own pop (``receive_single``) for that.

Everything else (sending, groups, worker channels without ``!``) is channels-redis's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from channels_redis.core import RedisChannelLayer as _CoreLayer

from .delivery.retry import again_once

__all__ = ["RedisChannelLayer"]

logger = logging.getLogger(__name__)


class _Failed:
    """Put in a waiting channel's buffer when the pump fails: its ``receive`` raises ``error``."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class RedisChannelLayer(_CoreLayer):  # type: ignore[misc]
    """channels-redis's core ``RedisChannelLayer``; a cancelled ``receive`` loses no message,
    its own or another socket's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pump: asyncio.Task[None] | None = None
        #: {local channel: receives waiting on its buffer}
        self._waiting: Counter[str] = Counter()

    async def receive(self, channel: str) -> dict[str, Any]:
        if "!" not in channel:  # a worker channel: its own BZPOPMIN, shared with nobody
            message: dict[str, Any] = await super().receive(channel)
            return message
        assert self.require_valid_channel_name(channel)
        real_channel = self.non_local_name(channel)
        assert real_channel.endswith(self.client_prefix + "!"), "Wrong client prefix"
        buffer = self.receive_buffer[channel]
        if buffer.empty():
            self._waiting[channel] += 1
            try:
                self._start_pump(real_channel)
                item = await buffer.get()
            finally:
                self._waiting[channel] -= 1
                if not self._waiting[channel]:
                    del self._waiting[channel]
        else:
            item = buffer.get_nowait()
        if buffer.empty() and channel not in self._waiting:
            # As channels-redis does: no buffer is kept per socket between messages.
            self.receive_buffer.pop(channel, None)
        if isinstance(item, _Failed):
            raise item.error
        return item  # type: ignore[no-any-return]

    def _start_pump(self, real_channel: str) -> None:
        loop = asyncio.get_running_loop()
        pump = self._pump
        if pump is not None and not pump.done():
            if pump.get_loop() is loop:
                return
            if not pump.get_loop().is_closed():
                raise RuntimeError(
                    "Two event loops are trying to receive() on one channel layer at once!"
                )
        self._pump = loop.create_task(self._run_pump(real_channel), name="pgbinding layer pump")

    async def _run_pump(self, real_channel: str) -> None:
        while self._waiting:
            try:
                message_channel, message = await again_once(
                    logger, self.receive_single, real_channel
                )
            except Exception as exc:
                for channel in list(self._waiting):
                    self.receive_buffer[channel].put_nowait(_Failed(exc))
                return
            names = message_channel if isinstance(message_channel, list) else [message_channel]
            for name in names:  # a group message for several sockets of the process names them all
                self.receive_buffer[name].put_nowait(message)

    async def _stop_pump(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None and not pump.done() and pump.get_loop() is asyncio.get_running_loop():
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    def _restart_pump(self) -> None:
        """Receives still waiting after the pools closed go on waiting, on new connections."""
        if self._waiting:
            self._start_pump(self.non_local_name(next(iter(self._waiting))))

    # channels-redis's flush() ends in close_pools(), so this covers both.
    async def close_pools(self) -> None:
        await self._stop_pump()
        await super().close_pools()
        self._restart_pump()
