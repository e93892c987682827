"""The listener: a reconnecting loop that reads the change log and hands changes on.

One listener per name is active at a time (a Postgres advisory lock); others stand by and take
over within ``STANDBY_RETRY`` seconds of the active one's connection dropping. While there is
work it reads batch after batch without being told; when it runs dry it marks itself asleep in
``pgbinding_state`` and waits for the NOTIFY that the capture trigger sends only then. This
keeps NOTIFY, whose commit lock serializes writers, off the hot path under load.

No ORM here: the loop talks to Postgres with psycopg 3 (async) and hands batches to
:class:`~pgbinding.dispatch.Dispatcher`, which runs binding code in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from typing import Any

import psycopg
from asgiref.sync import sync_to_async
from psycopg import sql as psql

from . import log as changelog
from .dispatch import Dispatcher
from .sql import NOTIFY_CHANNEL

logger = logging.getLogger("pgbinding.listener")

#: First half of the advisory-lock key: "pgbi".
LOCK_CLASS = 0x70676269
_DISCONNECTS = (psycopg.OperationalError, psycopg.InterfaceError, OSError)


def lock_key(name: str) -> tuple[int, int]:
    """The (int4, int4) advisory-lock key that makes listeners of one name take turns."""
    return LOCK_CLASS, zlib.crc32(name.encode()) - 2**31


def conninfo_from_django(alias: str = "default") -> str:
    """A libpq connection string for Django database ``alias``."""
    from django.db import connections

    params = connections[alias].get_connection_params()
    for key in ("cursor_factory", "context", "prepare_threshold", "pool", "server_side_binding"):
        params.pop(key, None)
    clean: dict[str, Any] = {k: v for k, v in params.items() if isinstance(v, str | int)}
    return psycopg.conninfo.make_conninfo("", **clean)


class Listener:
    """Reads captured changes and delivers them through a :class:`Dispatcher`.

    ``run()`` returns after ``stop()``; a change being delivered when ``stop()`` is called is
    finished and its position saved first.
    """

    def __init__(
        self,
        conninfo: str,
        dispatcher: Dispatcher,
        *,
        name: str = "default",
        batch_size: int = 500,
        keepalive: float = 30.0,
        reconnect_max_delay: float = 30.0,
        standby_retry: float = 1.0,
        gap_poll_interval: float = 0.02,
        retention: float = 24 * 3600.0,
        prune_interval: float = 60.0,
        lag_log_interval: float = 10.0,
        read_pause: float = 0.002,
        idle_linger: float = 0.005,
        save_interval: float = 0.25,
    ) -> None:
        self.conninfo = conninfo
        self.dispatcher = dispatcher
        self.name = name
        self.log = changelog.ChangeLog(name, batch_size)
        self.keepalive = keepalive
        self.reconnect_max_delay = reconnect_max_delay
        self.standby_retry = standby_retry
        self.gap_poll_interval = gap_poll_interval
        self.retention = retention
        self.prune_interval = prune_interval
        self.lag_log_interval = lag_log_interval
        self.read_pause = read_pause
        self.idle_linger = idle_linger
        self.save_interval = save_interval
        self._stop = asyncio.Event()
        #: Set once this listener holds the lock and has loaded its position.
        self.active = asyncio.Event()
        #: Set whenever the listener has read everything committed so far and is waiting.
        self.idle = asyncio.Event()
        self.delivered = 0
        #: Log position up to which changes have been sent and the position saved.
        self.saved_position = 0
        self._sleeping = False
        self._guard: changelog.Watch | None = None
        self._saved_cursor = changelog.Cursor(0)

    @classmethod
    def from_settings(cls, channel_layer: Any = None, **overrides: Any) -> Listener:
        """A listener configured from ``settings.PGBINDING`` (and ``CHANNEL_LAYERS``)."""
        from channels.layers import get_channel_layer

        from .conf import pgbinding_settings as s

        layer = channel_layer or get_channel_layer(s.CHANNEL_LAYER)
        if layer is None:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                f"No channel layer {s.CHANNEL_LAYER!r}: set CHANNEL_LAYERS in your settings "
                "(channels_redis for separate processes, InMemoryChannelLayer for one process)"
            )
        options: dict[str, Any] = {
            "name": s.LISTENER_NAME,
            "batch_size": s.BATCH_SIZE,
            "keepalive": s.KEEPALIVE,
            "reconnect_max_delay": s.RECONNECT_MAX_DELAY,
            "standby_retry": s.STANDBY_RETRY,
            "gap_poll_interval": s.GAP_POLL_INTERVAL,
            "retention": s.RETENTION,
            "prune_interval": s.PRUNE_INTERVAL,
            "lag_log_interval": s.LAG_LOG_INTERVAL,
            "read_pause": s.READ_PAUSE,
            "idle_linger": s.IDLE_LINGER,
            "save_interval": s.SAVE_INTERVAL,
        }
        options.update(overrides)
        return cls(conninfo_from_django(s.DATABASE), Dispatcher(layer), **options)

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- the outer loop: connect, lead, serve, reconnect ----------------------------------------

    async def run(self) -> None:
        delay = 0.5
        while not self.stopping:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True
                ) as conn:
                    changelog.configure_connection(conn)
                    info = conn.info
                    logger.info(
                        "Connected to Postgres %s:%s, database %r, as listener %r",
                        info.host,
                        info.port,
                        info.dbname,
                        self.name,
                    )
                    delay = 0.5
                    if not await self._lead(conn):
                        break
                    await self._serve(conn)
            except _DISCONNECTS as exc:
                self.active.clear()
                self.idle.clear()
                if self.stopping:
                    break
                wait = delay * (0.8 + 0.4 * random.random())
                logger.warning(
                    "Lost the connection to Postgres (%s); reconnecting in %.1f s",
                    str(exc).strip() or type(exc).__name__,
                    wait,
                )
                await self._sleep(wait)
                delay = min(delay * 2, self.reconnect_max_delay)
        self.active.clear()
        logger.info("Listener %r stopped at position %d", self.name, self.log.position)

    async def _lead(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Take the advisory lock, standing by while another listener holds it."""
        key = lock_key(self.name)
        said = False
        while not self.stopping:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key)
            row = await cur.fetchone()
            if row and row[0]:
                if said:
                    logger.info("Listener %r took over as the active listener", self.name)
                return True
            if not said:
                cur = await conn.execute(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
                    " AND objid = %s AND granted",
                    [key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF],
                )
                holder = await cur.fetchone()
                logger.info(
                    "Another listener %r is active (Postgres backend pid %s); standing by",
                    self.name,
                    holder[0] if holder else "?",
                )
                said = True
            await self._sleep(self.standby_retry)
        return False

    # -- the inner loop: read, deliver, save, sleep --------------------------------------------

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(psql.SQL("LISTEN {}").format(psql.Identifier(NOTIFY_CHANNEL)))
        # The listener's own writes (its position, the sleeping flag) need not wait for a WAL
        # flush: a position lost in a server crash only means changes are sent again, which
        # consumers drop by position. Writers' commits are not affected.
        await conn.execute("SET synchronous_commit = off")
        await self.log.load(conn)
        self._saved_cursor = self.log.cursor()
        behind, age = await self.log.behind(conn)
        logger.info(
            "Listener %r resuming at position %d; %d change(s) to catch up on%s",
            self.name,
            self.log.position,
            behind,
            f", the oldest {age:.1f} s old" if behind else "",
        )
        await self._set_sleeping(conn, False)
        self.active.set()
        pruner = asyncio.create_task(self._prune_loop()) if self.prune_interval > 0 else None
        try:
            await self._loop(conn)
            await self._save(conn)
            # Clean stop: nobody is left to wake, so writers need not NOTIFY.
            await self._set_sleeping(conn, False)
        finally:
            if pruner is not None:
                pruner.cancel()

    async def _loop(self, conn: psycopg.AsyncConnection[Any]) -> None:
        caught_up = False
        batch_count = 0
        last_lag_log = last_save = time.monotonic()
        gap_wait = self.gap_poll_interval
        dry_since: float | None = None
        while not self.stopping:
            changes = await self.log.read(conn)
            if changes:
                dry_since = None
                self.idle.clear()
                messages = await sync_to_async(self.dispatcher.build, thread_sensitive=False)(
                    changes
                )
                await self.dispatcher.send(messages)
                if self._sleeping:
                    # After sending, not before: the round trip is not on the way to the
                    # clients, and writers NOTIFYing a little longer is harmless.
                    await self._set_sleeping(conn, False)
                self.delivered += len(changes)
                batch_count += len(changes)
                caught_up, gap_wait = False, self.gap_poll_interval
                now = time.monotonic()
                if now - last_save >= self.save_interval:
                    # Not after every batch: under a steady trickle each batch holds one or
                    # two changes, and a save per batch was most of the listener's cost.
                    await self._save(conn)
                    last_save = now
                if now - last_lag_log >= self.lag_log_interval:
                    behind, age = await self.log.behind(conn)
                    logger.info(
                        "Delivered %d change(s) in the last %.0f s; %d behind (oldest %.1f s)",
                        batch_count,
                        now - last_lag_log,
                        behind,
                        age,
                    )
                    batch_count, last_lag_log = 0, now
                if len(changes) < self.log.batch_size and self.read_pause > 0:
                    # A short batch: the log is nearly drained. Let a few more commits land
                    # so the next round trip carries several changes, not one.
                    await asyncio.sleep(self.read_pause)
                continue
            if not self._sleeping:
                # Dry while awake: poll a little longer before marking ourselves asleep, or a
                # steady trickle of writes would flip the flag (and make writers NOTIFY) for
                # every change.
                now = time.monotonic()
                dry_since = dry_since or now
                if now - dry_since < self.idle_linger:
                    await asyncio.sleep(max(self.read_pause, 0.001))
                    continue
            await self._save(conn)
            last_save = time.monotonic()
            if not self._sleeping:
                await self._set_sleeping(conn, True)
                # A writer that read "awake" before we flipped the flag will not NOTIFY; wait
                # for every transaction running now to end, then read once more.
                self._guard = await changelog.watch_running(conn)
                continue
            if self._guard is not None and self._guard.finished(await changelog.running(conn)):
                self._guard = None
                continue
            if self._guard is not None or self.log.gaps:
                # Transactions still running may commit changes we will not be told about
                # (guard), or hold ids below our position (gaps): look again now and then,
                # backing off up to half a second (a long transaction may be unrelated).
                await self._wait_notify(conn, gap_wait)
                gap_wait = min(gap_wait * 2, 0.5)
                continue
            gap_wait = self.gap_poll_interval
            if not caught_up:
                logger.info(
                    "Caught up at position %d (%d delivered since start); waiting for changes",
                    self.log.position,
                    self.delivered,
                )
                caught_up, batch_count, last_lag_log = True, 0, time.monotonic()
            self.idle.set()
            await self._wait_notify(conn, self.keepalive)

    async def _save(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Save the position (and open gaps) if they moved since the last save."""
        cursor = self.log.cursor()
        if cursor != self._saved_cursor:
            await self.log.save(conn)
            self._saved_cursor = cursor
        self.saved_position = self.log.position

    async def _set_sleeping(self, conn: psycopg.AsyncConnection[Any], sleeping: bool) -> None:
        await conn.execute("UPDATE pgbinding_state SET sleeping = %s", [sleeping])
        self._sleeping = sleeping
        if not sleeping:
            self._guard = None

    async def _wait_notify(self, conn: psycopg.AsyncConnection[Any], seconds: float) -> None:
        """Wait up to ``seconds`` for a wake-up, in short slices so ``stop()`` is prompt."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            async for _ in conn.notifies(timeout=min(remaining, 0.25), stop_after=1):
                return

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(self.prune_interval)
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True
                ) as conn:
                    removed = await changelog.prune(conn, self.retention)
                if removed:
                    logger.info(
                        "Pruned %d change(s) older than %.0f s from the log",
                        removed,
                        self.retention,
                    )
            except _DISCONNECTS as exc:
                logger.warning("Could not prune the change log: %s", exc)
