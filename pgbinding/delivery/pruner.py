"""Pruning the change log: the leader deletes, every ``PRUNE_INTERVAL``, the entries older
than ``RETENTION`` that every listener name has passed (:func:`changelog.prune
<pgbinding.delivery.changelog.prune>`), and says which listener names are stale and no longer
hold pruning back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from ..conf import Settings
from . import changelog
from .connection import DISCONNECTS

logger = logging.getLogger("pgbinding.listener")

#: How often the pruner repeats its warning about one stale listener name (seconds).
STALE_LOG_INTERVAL = 3600.0


class Pruner:
    """Prunes the log on a connection of its own (``connect``), so a long delete never holds
    up delivery."""

    def __init__(
        self, settings: Settings, connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]
    ) -> None:
        self.settings = settings
        self._connect = connect
        #: When each stale listener name was last warned about (monotonic).
        self._warned: dict[str, float] = {}

    async def run(self) -> None:
        """Prune every ``PRUNE_INTERVAL`` until cancelled; a lost connection is logged and
        tried again at the next interval."""
        while True:
            await asyncio.sleep(self.settings.PRUNE_INTERVAL)
            try:
                async with await self._connect() as conn:
                    await self.once(conn)
            except DISCONNECTS as exc:
                logger.warning("Could not prune the change log: %s", exc)

    async def once(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Warn about stale listener names, then prune; how many entries were deleted."""
        s = self.settings
        for name, position, age in await changelog.stale_listeners(conn, s.STALE_LISTENER_AFTER):
            if time.monotonic() - self._warned.get(name, -STALE_LOG_INTERVAL) < STALE_LOG_INTERVAL:
                continue
            self._warned[name] = time.monotonic()
            logger.warning(
                "Listener name %r has not run for %.0f s (stale after STALE_LISTENER_AFTER = "
                "%.0f s): pruning no longer waits for its position %d. Remove its row from "
                "pgbinding_listener if it is gone for good.",
                name,
                age,
                s.STALE_LISTENER_AFTER,
                position,
            )
        removed = await changelog.prune(conn, s.RETENTION, s.STALE_LISTENER_AFTER)
        if removed:
            logger.info("Pruned %d change(s) older than %.0f s from the log", removed, s.RETENTION)
        return removed
