"""Waiting between attempts: a small retry policy object, used for reconnecting to Postgres
and for sending to a failing channel layer; and :func:`again_once` for a channel-layer call
that may meet a stale connection."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Backoff:
    """Doubling waits from ``first`` up to ``most`` seconds, each spread by +-``jitter`` (a
    share) so that many processes retrying at once do not stay in step."""

    def __init__(self, first: float, most: float, jitter: float = 0.2) -> None:
        self.first, self.most, self.jitter = first, max(most, first), jitter
        self._next = first

    def next(self) -> float:
        """The next wait, in seconds."""
        wait = self._next * (1 - self.jitter + 2 * self.jitter * random.random())
        self._next = min(self._next * 2, self.most)
        return wait

    def peek(self) -> float:
        """The next wait without jitter (for log lines)."""
        return self._next

    def reset(self) -> None:
        self._next = self.first


async def again_once(logger: logging.Logger, call: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``await call(*args)``, and once more if it fails (said on ``logger``). A channel layer's
    pooled connection can be stale: after Redis restarts, the first command on each of
    channels_redis's old connections fails and drops it (tests/faults/test_redis.py). The second
    try runs on another connection; a layer that is really down fails again, and that error is
    raised."""
    try:
        return await call(*args)
    except Exception as exc:
        logger.info("The channel layer failed (%r); trying once more", exc)
        return await call(*args)
