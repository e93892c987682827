"""The listener: a reconnecting loop that reads the change log and hands changes on.

One listener per name leads at a time; the others stand by. Leadership is a lease in
``pgbinding_listener``: the leader renews it while it makes progress, and a standby takes over
when the lease runs out (a leader that is stopped, or stuck on a channel layer that does not
answer, loses the lead within ``LEASE + STANDBY_RETRY`` seconds) or as soon as the leader's
Postgres backend is gone (a crash: within ``STANDBY_RETRY``). Position saves are fenced on the
leader's id, and a leader checks its lease before it sends, so one that wakes up after losing
the lead notices before it sends again.

While there is work the leader reads batch after batch without being told; when it runs dry it
marks itself asleep in ``pgbinding_state`` and waits for the NOTIFY that the capture trigger
sends only then. This keeps NOTIFY, whose commit lock serializes writers, off the hot path under
load.

A channel-layer failure never ends the listener: the batch in hand is kept, sending is retried
with backoff, the position is never saved past what was sent, and the log says so in words.

No ORM here: the loop talks to Postgres with psycopg 3 (async) and hands batches to
:class:`~pgbinding.dispatch.Dispatcher`, which runs binding code in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql as psql

from .. import metrics
from ..capture.sql import NOTIFY_CHANNEL
from ..conf import Settings
from ..positions import Cursor
from ..threads import in_thread
from . import changelog
from .changelog import LostLead
from .connection import DISCONNECTS, connect, conninfo_from_django
from .dispatch import Dispatcher, coalesce
from .lease import Lease
from .progress import Progress, ensure_logging
from .pruner import Pruner
from .pump import Pump
from .retry import Backoff
from .sender import Sender, Stopping

logger = logging.getLogger("pgbinding.listener")

__all__ = ["Listener", "conninfo_from_django", "ensure_logging"]


class Listener:
    """Reads captured changes and delivers them through a :class:`Dispatcher`.

    ``run()`` returns after ``stop()``; a change being delivered when ``stop()`` is called is
    finished and its position saved first (unless the channel layer is failing: then the
    position stays before it, and the next leader sends it).
    """

    def __init__(
        self,
        conninfo: str,
        dispatcher: Dispatcher,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        """``settings``: pgbinding's settings (default: every default); ``overrides`` replace
        some, by name in either case (``retention=2`` or ``RETENTION=2``; ``name`` is
        ``LISTENER_NAME``)."""
        names = {k: "LISTENER_NAME" if k == "name" else k.upper() for k in overrides}
        self.settings = replace(
            settings or Settings(), **{names[k]: v for k, v in overrides.items()}
        )
        self.conninfo = conninfo
        self.dispatcher = dispatcher
        self.name = self.settings.LISTENER_NAME
        self.log = changelog.ChangeLog(self.name, self.settings.BATCH_SIZE)
        self.progress = Progress(self.log, self.settings.LAG_LOG_INTERVAL)
        #: This listener's id as a leader (stored in pgbinding_listener.leader).
        self.id = f"{self.name}:{uuid.uuid4().hex[:12]}"
        self.lease = Lease(self.name, self.id, self.settings.LEASE)
        self.sender = Sender(
            dispatcher.channel_layer, self.settings.SEND_TIMEOUT, self._sleep, lambda: self.stopping
        )
        self.log.leader = self.id
        #: The logical capture backend's pump (delivery/pump.py), which fills the log itself.
        self.pump = Pump(self.settings) if self.settings.CAPTURE == "logical" else None
        self._flag_cleared = False
        self._stop = asyncio.Event()
        #: Set while this listener leads and has loaded its position.
        self.active = asyncio.Event()
        #: Set whenever the listener has read everything committed so far and is waiting.
        self.idle = asyncio.Event()
        self.delivered = 0
        self.takeovers = 0
        #: Log position up to which changes have been sent and the position saved.
        self.saved_position = 0
        self._delivered = Cursor(0)
        self._saved_cursor: Cursor | None = None
        self._sleeping = False
        self._guard: changelog.Watch | None = None
        self._led = False

    @classmethod
    def from_settings(cls, channel_layer: Any = None, **overrides: Any) -> Listener:
        """A listener configured from ``settings.PGBINDING`` (and ``CHANNEL_LAYERS``)."""
        from channels.layers import get_channel_layer

        from ..conf import pgbinding_settings

        s = pgbinding_settings.current
        layer = channel_layer or get_channel_layer(s.CHANNEL_LAYER)
        if layer is None:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                f"No channel layer {s.CHANNEL_LAYER!r}: set CHANNEL_LAYERS in your settings "
                "(channels_redis for separate processes, InMemoryChannelLayer for one process)"
            )
        return cls(conninfo_from_django(s.DATABASE), Dispatcher(layer), s, **overrides)

    async def _connect(self, role: str) -> psycopg.AsyncConnection[Any]:
        return await connect(self.conninfo, role, self.name)

    def _in_process_layer(self) -> bool:
        from channels.layers import InMemoryChannelLayer

        return isinstance(self.dispatcher.channel_layer, InMemoryChannelLayer)

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- the outer loop: connect, lead, serve, reconnect ----------------------------------------

    async def run(self) -> None:
        backoff = Backoff(0.5, self.settings.RECONNECT_MAX_DELAY)
        while not self.stopping:
            try:
                async with await self._connect("listener") as conn:
                    changelog.configure_connection(conn)
                    info = conn.info
                    logger.info(
                        "Connected to Postgres %s:%s, database %r, as listener %r",
                        info.host,
                        info.port,
                        info.dbname,
                        self.name,
                    )
                    backoff.reset()
                    await self._lead_and_serve(conn)
            except DISCONNECTS as exc:
                self.active.clear()
                self.idle.clear()
                metrics.listener_leading.set(0)
                metrics.listener_reconnects.inc()
                if self.stopping:
                    break
                wait = backoff.next()
                logger.warning(
                    "Lost the connection to Postgres (%s); reconnecting in %.1f s",
                    str(exc).strip() or type(exc).__name__,
                    wait,
                )
                await self._sleep(wait)
        self.active.clear()
        metrics.listener_leading.set(0)
        if self._led:
            logger.info("Listener %r stopped at position %d", self.name, self.saved_position)
        else:
            logger.info("Listener %r stopped (it was standing by)", self.name)

    async def _lead_and_serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while not self.stopping:
            if not await self._lead(conn):
                return
            try:
                await self._serve(conn)
                return
            except LostLead:
                self.active.clear()
                self.idle.clear()
                metrics.listener_leading.set(0)
                logger.warning(
                    "Listener %r lost the lead: another listener took over while this one "
                    "made no progress for %.1f s (more than LEASE = %.1f s); standing by",
                    self.name,
                    time.monotonic() - self.lease.renewed_at,
                    self.settings.LEASE,
                )

    async def _lead(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Claim the lead of this listener's name, standing by while another one holds it."""
        said = False
        while not self.stopping:
            claimed = await self.lease.claim(conn)
            if claimed is not None:
                self.log.restore(*claimed)
                if said:
                    self.takeovers += 1
                    metrics.listener_takeovers.inc()
                    logger.info("Listener %r took over as the active listener", self.name)
                metrics.listener_leading.set(1)
                self._led = True
                return True
            if not said:
                holder = await self.lease.holder_pid(conn) or "?"
                logger.info(
                    "Another listener %r is active (Postgres backend pid %s); standing by",
                    self.name,
                    holder,
                )
                if self._in_process_layer():
                    logger.warning(
                        "This listener sends through an in-process channel layer: while "
                        "another process leads listener %r (Postgres backend pid %s), the "
                        "sockets of this process receive nothing. Stop that other listener "
                        "(with an in-memory layer it delivers to nobody), or use channels-redis "
                        "between processes.",
                        self.name,
                        holder,
                    )
                said = True
            await self._sleep(self.settings.STANDBY_RETRY)
        return False

    # -- the inner loop: read, deliver, save, sleep --------------------------------------------

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(psql.SQL("LISTEN {}").format(psql.Identifier(NOTIFY_CHANNEL)))
        # The listener's own writes (its position, the sleeping flag) need not wait for a WAL
        # flush: a position lost in a server crash only means changes are sent again, which
        # consumers drop by position. Writers' commits are not affected.
        await conn.execute("SET synchronous_commit = off")
        if self.pump is not None:
            await self.pump.start(conn, self.conninfo, self.name)
        self._delivered = self._saved_cursor = self.log.cursor()
        self.saved_position = self.log.position
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
        pruner = None
        if self.settings.PRUNE_INTERVAL > 0:
            pruner = asyncio.create_task(Pruner(self.settings, self._pruner_connection).run())
        try:
            try:
                await self._loop(conn)
            except Stopping:
                pass
            await self._save(conn)
            # Clean stop: nobody is left to wake, so writers need not NOTIFY.
            await self._set_sleeping(conn, False)
            await self.lease.release(conn)
        finally:
            if pruner is not None:
                pruner.cancel()
            if self.pump is not None:
                await self.pump.close()

    async def _loop(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.progress.restart()
        self._last_save = self._last_gap_check = time.monotonic()
        self._gap_wait = self.settings.GAP_POLL_INTERVAL
        self._dry_since: float | None = None
        followed = False
        while not self.stopping:
            changes = None
            if self.pump is not None:
                changes = await self._follow_pump(conn, followed)
            followed = bool(changes)
            if changes is None:
                changes = await self.log.read(conn)
            now = time.monotonic()
            if self.log.gaps and now - self._last_gap_check >= self.settings.GAP_POLL_INTERVAL:
                await self.log.check_gaps(conn)
                self._last_gap_check = now
            if changes:
                await self._deliver(conn, changes)
                await self._after_delivery(conn, len(changes))
            else:
                await self._when_dry(conn)

    async def _follow_pump(
        self, conn: psycopg.AsyncConnection[Any], followed: bool
    ) -> list[Any] | None:
        """Logical capture: let the pump write what the stream brought, and return what it
        wrote when that is what the log's read would return next (sent without the round
        trip to read it back), a batch at a time (the rest of a big round first, before the
        pump reads the stream again). None: read the log.

        [] (no read) when the pump wrote nothing and the last batch was followed: the log
        ended at the position after the pump's own write, which wrote nothing if another
        writer had committed since its snapshot. A writer that commits to the log later (a
        migration's drain) is read at the next round whose rows do not follow on, or after the
        next wait, as before."""
        pump = self.pump
        assert pump is not None
        written = -1
        if not pump.written_rows:
            written = await pump.round(conn)
        changes = self.log.follow(pump.take_written(self.log.batch_size))
        if changes is None:
            pump.take_written()  # the rest of the round too: the read finds it in the log
            if written == 0 and followed:
                return []
        return changes

    async def _deliver(self, conn: psycopg.AsyncConnection[Any], changes: list[Any]) -> None:
        self._dry_since = None
        self.idle.clear()
        await self.dispatcher.prepare(conn, changes)
        messages = await in_thread(self.dispatcher.build)(changes)
        await self.sender.send(
            coalesce(messages), lambda: self.lease.keep(conn), self._delivered.position
        )
        self._delivered = self.log.cursor()
        if self.pump is not None:
            await self.pump.sent(conn)  # the slot moves only after sending
        if self._sleeping:
            # After sending, not before: the round trip is not on the way to the clients, and
            # writers NOTIFYing a little longer is harmless.
            await self._set_sleeping(conn, False)
        self.delivered += len(changes)
        metrics.listener_delivered.inc(len(changes))

    async def _after_delivery(self, conn: psycopg.AsyncConnection[Any], count: int) -> None:
        self._gap_wait = self.settings.GAP_POLL_INTERVAL
        now = time.monotonic()
        if now - self._last_save >= self.settings.SAVE_INTERVAL:
            # Not after every batch: under a steady trickle each batch holds one or two
            # changes, and a save per batch was most of the listener's cost.
            await self._save(conn)
            self._last_save = now
        await self.progress.delivered(conn, count)
        if count < self.log.batch_size and self.settings.READ_PAUSE > 0:
            # A short batch: the log is nearly drained. Let a few more commits land so the
            # next round trip carries several changes, not one.
            await asyncio.sleep(self.settings.READ_PAUSE)

    async def _when_dry(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Nothing new to read: linger, then sleep until a writer's NOTIFY (after making sure
        no writer that saw us awake is still running)."""
        if not self._sleeping and self.pump is None:
            # Dry while awake: poll a little longer before marking ourselves asleep, or a
            # steady trickle of writes would flip the flag (and make writers NOTIFY) for every
            # change.
            now = time.monotonic()
            self._dry_since = self._dry_since or now
            if now - self._dry_since < self.settings.IDLE_LINGER:
                await asyncio.sleep(max(self.settings.READ_PAUSE, 0.001))
                return
        await self._save(conn)
        self._last_save = time.monotonic()
        if not self._sleeping:
            await self._set_sleeping(conn, True)
            if self.pump is None:  # (logical capture: no NOTIFY to miss, no linger either)
                # A writer that read "awake" before we flipped the flag will not NOTIFY; it
                # holds the log's lock until it ends, so wait for every writer of this moment,
                # then read once more.
                self._guard = await changelog.watch_writers(conn)
                return
        if self._guard is not None and self._guard.finished(await changelog.writers(conn)):
            self._guard = None
            return
        if self._guard is not None or self.log.gaps:
            # Writers still running may commit changes we will not be told about (guard), or
            # hold ids below our position (gaps): look again now and then, backing off up to
            # half a second.
            await self._wait_notify(conn, self._gap_wait)
            self._gap_wait = min(self._gap_wait * 2, 0.5)
            return
        self._gap_wait = self.settings.GAP_POLL_INTERVAL
        self.progress.idle(self.delivered)
        self.idle.set()
        await self._wait_notify(conn, self.settings.KEEPALIVE)

    async def _save(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Save the delivered position (and its open gaps) if it moved since the last save;
        the save renews the lease too."""
        cursor = self._delivered
        if cursor != self._saved_cursor:
            started = time.monotonic()
            await self.log.save(conn, cursor, self.settings.LEASE)
            self.lease.renewed(started)
            self._saved_cursor = cursor
        self.saved_position = cursor.position
        metrics.listener_position.set(cursor.position)

    async def _set_sleeping(self, conn: psycopg.AsyncConnection[Any], sleeping: bool) -> None:
        if self.pump is None:
            await conn.execute("UPDATE pgbinding_state SET sleeping = %s", [sleeping])
        elif not self._flag_cleared:
            # Logical capture waits for WAL, not NOTIFY: writers never need to notify (and a
            # write here would only wake the pump).
            await conn.execute("UPDATE pgbinding_state SET sleeping = false")
            self._flag_cleared = True
        self._sleeping = sleeping
        if not sleeping:
            self._guard = None

    async def _wait_notify(self, conn: psycopg.AsyncConnection[Any], seconds: float) -> None:
        """Wait up to ``seconds`` for a wake-up, in short slices so ``stop()`` is prompt and the
        lease is renewed while idle."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            await self.lease.keep(conn)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.pump is not None:
                if await self.pump.wait(conn, min(remaining, 0.25)):
                    return
                continue
            async for _ in conn.notifies(timeout=min(remaining, 0.25), stop_after=1):
                return

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _pruner_connection(self) -> psycopg.AsyncConnection[Any]:
        return await self._connect("pruner")
