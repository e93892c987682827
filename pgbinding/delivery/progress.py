"""What the listener says about its progress, in words an operator reads: how many changes it
delivered and how far behind the log it is (every ``LAG_LOG_INTERVAL`` while changes flow),
and when it has caught up. The same figures go to the metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from .. import metrics
from .changelog import ChangeLog

logger = logging.getLogger("pgbinding.listener")


def ensure_logging(level: int = logging.INFO) -> None:
    """With no handler for pgbinding's logger (nor on the root logger), add a plain stream
    handler, so the listener always says what it does."""
    ours = logging.getLogger("pgbinding")
    if ours.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours.addHandler(handler)
    if ours.level == logging.NOTSET or level < ours.level:
        ours.setLevel(level)


class Progress:
    """The listener's progress lines: "Delivered N change(s) in the last S s; B behind" while
    changes flow, "Caught up at position P" once each time it runs dry."""

    def __init__(self, log: ChangeLog, interval: float) -> None:
        self.log = log
        #: Seconds between two "Delivered ... behind" lines while changes flow.
        self.interval = interval
        self.restart()

    def restart(self) -> None:
        """A new run of the loop: nothing delivered yet, not caught up."""
        self.caught_up = False
        self._count = 0
        self._since = time.monotonic()

    async def delivered(self, conn: psycopg.AsyncConnection[Any], count: int) -> None:
        """``count`` changes were delivered; say how far behind the log is, now and then."""
        self._count += count
        self.caught_up = False
        now = time.monotonic()
        if now - self._since < self.interval:
            return
        behind, age = await self.log.behind(conn)
        metrics.listener_lag_changes.set(behind)
        metrics.listener_lag_seconds.set(age)
        logger.info(
            "Delivered %d change(s) in the last %.0f s; %d behind (oldest %.1f s)",
            self._count,
            now - self._since,
            behind,
            age,
        )
        self._count, self._since = 0, now

    def idle(self, total: int) -> None:
        """Everything committed has been delivered (``total`` since start): say so once."""
        if self.caught_up:
            return
        metrics.listener_lag_changes.set(0)
        metrics.listener_lag_seconds.set(0)
        logger.info(
            "Caught up at position %d (%d delivered since start); waiting for changes",
            self.log.position,
            total,
        )
        self.caught_up, self._count, self._since = True, 0, time.monotonic()
