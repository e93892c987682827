"""Sending a batch's messages through the channel layer, retrying while it fails.

A channel-layer failure never ends the listener: the batch in hand is kept and sent again,
message by message from the first one not sent, with backoff and without end, while this
listener leads (its lease is checked before every attempt). A send that takes longer than
``SEND_TIMEOUT`` counts as failed; it may have arrived, so it is sent again and consumers drop
the repeat. The position is never saved past what was sent (the listener saves only after
:meth:`Sender.send` returns).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .. import metrics
from .messages import Message
from .retry import Backoff

logger = logging.getLogger("pgbinding.listener")

#: First and longest wait between attempts to send to a failing channel layer (seconds).
SEND_RETRY_FIRST = 0.2
SEND_RETRY_MAX = 5.0
#: How often a listener that cannot send says so again (seconds).
SEND_FAILURE_LOG_INTERVAL = 10.0


class Stopping(Exception):
    """Stop was asked for while a batch could not be sent: leave without saving past it."""


class Sender:
    def __init__(
        self,
        layer: Any,
        timeout: float,
        sleep: Callable[[float], Awaitable[None]],
        stopping: Callable[[], bool],
    ) -> None:
        self.layer = layer
        self.timeout = timeout
        self._sleep = sleep
        self._stopping = stopping
        #: Failed attempts since start (for logs, tests and metrics).
        self.failures = 0

    async def send(
        self, messages: list[Message], before_each: Callable[[], Awaitable[None]], position: int
    ) -> None:
        """Send ``messages`` in order; ``before_each`` runs before every attempt (the lease
        check); ``position`` is the saved position, for log lines."""
        backoff = Backoff(SEND_RETRY_FIRST, SEND_RETRY_MAX)
        failing_since: float | None = None
        last_said = 0.0
        index = 0
        while index < len(messages):
            await before_each()
            group, message = messages[index]
            try:
                await asyncio.wait_for(self.layer.group_send(group, message), self.timeout)
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                self.failures += 1
                metrics.listener_send_failures.inc()
                now = time.monotonic()
                reason = str(exc).strip() or type(exc).__name__
                if isinstance(exc, TimeoutError):
                    reason = f"no answer within SEND_TIMEOUT = {self.timeout:.1f} s"
                wait = backoff.next()
                if failing_since is None or now - last_said >= SEND_FAILURE_LOG_INTERVAL:
                    logger.warning(
                        "Could not send to the channel layer (%s: %s); keeping %d message(s) "
                        "of this batch unsent and the position at %d; retrying in %.1f s%s",
                        type(exc).__name__,
                        reason,
                        len(messages) - index,
                        position,
                        wait,
                        f" (failing for {now - failing_since:.0f} s)" if failing_since else "",
                    )
                    last_said = now
                failing_since = failing_since or now
                await self._sleep(wait)
                if self._stopping():
                    raise Stopping from None
                continue
            index += 1
        if failing_since is not None:
            logger.info(
                "Sending to the channel layer works again, after %.1f s",
                time.monotonic() - failing_since,
            )
