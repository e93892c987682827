"""Waiting between attempts: a small retry policy object, used for reconnecting to Postgres
and for sending to a failing channel layer."""

from __future__ import annotations

import random


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
