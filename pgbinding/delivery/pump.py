"""The logical capture backend's pump: from the replication slot into the change log.

With ``PGBINDING["CAPTURE"] = "logical"`` no trigger writes ``pgbinding_change``: the leading
listener does, in front of its usual loop. Each :meth:`Pump.round`:

1. takes the transactions committed since the last round: from the replication stream
   (:class:`pgbinding.capture.walstream.WalStream`, ``LOGICAL_READER = "stream"``: the
   walsender pushes each one as its commit is flushed), or, polling (``"poll"``, or while the
   server refuses the stream), by reading the WAL flush position ``L`` and peeking the slot's
   transactions before it (``pg_logical_slot_peek_binary_changes``); protocol 1, the
   publication of the bound tables, decoded by :mod:`pgbinding.capture.pgoutput` and turned
   into log rows by :class:`pgbinding.capture.logrows.Converter`;
2. in one statement: locks the slot's row in ``pgbinding_slot``, skips the transactions it
   has already written (end LSN <= its ``confirmed_lsn``: a restart, or a migration that
   drained the slot), inserts the rest in commit order (the log ids follow commit order, so
   these rows open no gaps), and stores how far it has read (the stream's sent position, or
   ``L``) as ``confirmed_lsn``. Streaming, it commits asynchronously, with ids that depend only
   on what the log holds (:data:`~pgbinding.capture.logical.ASYNC_WRITE_SQL`); polling, or while
   a capture trigger exists, durably, with ids from the sequence;
3. only after that write is flushed, and the listener sent what it read, lets the slot go of
   it (:meth:`Pump.sent`): a status update on the stream, or, polling,
   ``pg_replication_slot_advance`` (at least every ``ADVANCE_INTERVAL`` during a long
   catch-up). Never on the way from commit to client.

A crash anywhere loses nothing (the slot still holds what was not flushed in step 2) and
writes nothing twice (step 2 skips it); a write that a crash lost after its rows were sent is
written again with the same ids, which consumers drop as repeats. The log reader, positions
and ``since``, dispatch and consumers then work as with triggers.

There is no NOTIFY: between rounds the listener waits in :meth:`Pump.wait`, on the stream's
socket, or, polling, in one statement (``pgbinding_wait_wal``, schema v3) that looks at the
flush position every ``LOGICAL_POLL_INTERVAL`` inside the server, or
``LOGICAL_IDLE_POLL_INTERVAL`` after ``LOGICAL_IDLE_AFTER`` seconds without a change.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from operator import itemgetter
from typing import Any

import psycopg
from psycopg import errors

from ..capture import logical, logrows, pgoutput
from ..capture.walstream import WalStream
from ..conf import Settings

logger = logging.getLogger("pgbinding.listener")

#: Seconds between checks of the WAL the slot retains.
SLOT_CHECK_INTERVAL = 30.0
#: Seconds between repeats of the same complaint (a missing slot, a slot in use).
COMPLAINT_INTERVAL = 60.0
#: The slot is advanced before the listener waits, and at least this often (seconds) while
#: it is too busy to wait.
ADVANCE_INTERVAL = 1.0
#: While a write of the pump may be unflushed, look at the flush position at most this often
#: (seconds) when there is nothing else to do.
FLUSH_CHECK_INTERVAL = 0.1
#: After finding a capture trigger (a switch of backends in progress), write durably, with ids
#: from the sequence, for this many seconds before trying the asynchronous write again.
TRIGGERS_RECHECK_INTERVAL = 5.0
#: After the stream failed (or could not start), poll the slot's SQL functions for this many
#: seconds before trying the stream again.
STREAM_RETRY_INTERVAL = 1.0
#: After the server refused a replication connection (no REPLICATION attribute, no free
#: walsender, a pooler in between): try again this rarely (seconds).
STREAM_REFUSED_RETRY_INTERVAL = 60.0
#: At start, how long to try to take the slot from a listener that lost the lead (seconds).
TAKEOVER_TIMEOUT = 5.0

_WAIT_SQL = (
    "SELECT (pgbinding_wait_wal(%s::pg_lsn, %s::float8, %s::float8) - '0/0'::pg_lsn)::bigint"
)
_HAS_TABLES_SQL = (
    "SELECT EXISTS (SELECT FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid"
    " WHERE p.pubname = %s)"
)


class Pump:
    """Moves committed changes from the logical replication slot into ``pgbinding_change``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slot = settings.SLOT_NAME
        self.publication = settings.PUBLICATION_NAME
        #: Most messages one peek returns (whole transactions: it may return more).
        self.peek_limit = max(1000, settings.BATCH_SIZE * 4)
        #: Every transaction committed before this LSN has been written into the log (or was
        #: of no bound table).
        self.decoded_upto = 0
        #: Log rows written since start (for logs, tests and benchmarks).
        self.written = 0
        self.rounds = 0
        self.peeks = 0
        self.converter = logrows.Converter()
        self._last_change = 0.0
        #: The slot has been advanced to this LSN (and when).
        self._advanced = 0
        self._advanced_at = 0.0
        #: wait() saw WAL past decoded_upto: the next round peeks without looking first.
        self._moved = False
        self._flush_wal: str | None = None
        self._log_snapshot = False
        #: This pump's transactions up to this LSN are in the log (pgbinding_slot's value).
        self._confirmed = 0
        self._last_slot_check = 0.0
        self._complained: dict[str, float] = {}
        #: The replication stream when the pump reads the slot that way (LOGICAL_READER =
        #: "stream"), else None: it polls the slot's SQL functions.
        self.stream: WalStream | None = None
        self._conninfo: str | None = None
        self._stream_name = ""
        self._stream_retry_at = 0.0
        #: Transactions read from the stream (for logs, tests and benchmarks).
        self.streamed = 0
        #: Asynchronous writes not known to be flushed yet: [a WAL position past the write's
        #: commit record (0 until read after it), the slot position it wrote up to], oldest
        #: first. The slot is never confirmed past a write in here: a crash could lose it.
        self._unflushed: collections.deque[list[int]] = collections.deque()
        #: With writes unflushed: the slot position safe to confirm (every transaction before
        #: it is durably in the log, or of no bound table).
        self._safe = 0
        self._flush_checked = 0.0
        #: Write durably, with ids from the sequence, until then (a capture trigger exists).
        self._durable_until = 0.0
        #: The log rows the last asynchronous write wrote (:meth:`take_written`).
        self.written_rows: list[tuple[Any, ...]] = []
        #: Writes committed asynchronously, and durably (for tests and benchmarks).
        self.async_writes = 0
        self.durable_writes = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(
        self, conn: psycopg.AsyncConnection[Any], conninfo: str | None = None, name: str = ""
    ) -> None:
        """Pin the session settings pgoutput's text output depends on, make sure the slot
        exists (creating it, with a warning, when bound tables are published without one),
        and, with LOGICAL_READER = "stream" and ``conninfo``, start streaming it (taking it
        from a listener that lost the lead)."""
        await self.close()
        self._conninfo, self._stream_name = conninfo, name
        await self._prepare(conn)
        if self.settings.LOGICAL_READER == "stream" and conninfo is not None:
            await self._open_stream(conn, take_over=True)

    async def _prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        for statement in logical.pin_settings_sql():
            await conn.execute(statement)
        self.decoded_upto = self._advanced = 0
        self._moved = True
        # Rows a write returned before a reconnect may be lost (a server crash): the new
        # connection's rounds write them again, or the read finds them.
        self.written_rows = []
        self._flush_wal = logical.flush_wal_sql(conn.info.server_version)
        self._log_snapshot = conn.info.server_version >= 160000
        await conn.execute(logical.ENSURE_ROW_SQL, {"slot": self.slot})
        cur = await conn.execute(
            "SELECT (confirmed_lsn - '0/0'::pg_lsn)::bigint FROM pgbinding_slot WHERE name = %s",
            [self.slot],
        )
        row = await cur.fetchone()
        self._confirmed = int(row[0]) if row else 0
        # A previous leader (or this listener before the server restarted) may have written
        # asynchronously up to there: make that durable before the slot is confirmed past it.
        await conn.execute(logical.FLUSH_COMMIT_SQL, {"slot": self.slot})
        self._unflushed.clear()
        cur = await conn.execute(logical.SLOT_SQL, [self.slot])
        if await cur.fetchone() is not None:
            return
        cur = await conn.execute(_HAS_TABLES_SQL, [self.publication])
        row = await cur.fetchone()
        if not (row and row[0]):
            self._complain(
                "missing",
                "Logical capture: replication slot %r does not exist and publication %r has no "
                "table; run `manage.py makemigrations` and `manage.py migrate`",
                self.slot,
                self.publication,
            )
            return
        await conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [self.slot])
        logger.warning(
            "Logical capture: replication slot %r was missing, so it was created now. Changes "
            "committed to the bound tables before this moment and after the old slot was "
            "dropped were not captured: clients should reload (resync).",
            self.slot,
        )

    # -- the stream --------------------------------------------------------------------------

    async def _open_stream(self, conn: psycopg.AsyncConnection[Any], take_over: bool) -> None:
        """Start streaming the slot; on failure, say why and poll until the next try.

        ``take_over`` (only right after taking the lead): a listener that lost the lead may
        still hold the slot through its walsender (until wal_sender_timeout, 60 s by default,
        if it is stalled), so end that walsender (a pgbinding listener's only) and try again.
        """
        assert self._conninfo is not None
        deadline = time.monotonic() + TAKEOVER_TIMEOUT
        while True:
            try:
                self.stream = await WalStream.open(
                    self._conninfo,
                    self.slot,
                    self.publication,
                    f"pgbinding stream {self._stream_name}",
                )
            except errors.ObjectInUse as exc:
                if take_over and time.monotonic() < deadline:
                    cur = await conn.execute(logical.RELEASE_SLOT_SQL, [self.slot])
                    ended = await cur.fetchall()
                    if ended:
                        logger.info(
                            "Logical capture: ended the replication stream of another "
                            "listener (backend pid %s) that still held slot %r",
                            ", ".join(str(r[0]) for r in ended),
                            self.slot,
                        )
                    await asyncio.sleep(0.05)
                    continue
                self._stream_failed(exc, STREAM_RETRY_INTERVAL)
                return
            except errors.UndefinedObject as exc:  # no slot yet: round() says so
                self._stream_failed(exc, STREAM_RETRY_INTERVAL)
                return
            except errors.InsufficientPrivilege as exc:
                self._stream_failed(exc, STREAM_REFUSED_RETRY_INTERVAL)
                return
            except psycopg.OperationalError as exc:
                # No free walsender, or a pooler that refuses replication connections.
                self._stream_failed(exc, STREAM_REFUSED_RETRY_INTERVAL)
                return
            self.decoded_upto = max(self.decoded_upto, self._confirmed)
            self._moved = True
            logger.info(
                "Logical capture: streaming replication slot %r (publication %r)",
                self.slot,
                self.publication,
            )
            return

    def _stream_failed(self, exc: BaseException, retry_in: float) -> None:
        self._stream_retry_at = time.monotonic() + retry_in
        self._complain(
            f"stream {type(exc).__name__}",
            "Logical capture cannot stream replication slot %r (%s); reading it with the "
            "slot's SQL functions instead (about 1 ms of database CPU per look, and changes "
            "wait for the next look), trying the stream again in %.0f s. Streaming needs a "
            "replication connection (a free walsender: max_wal_senders; no connection pooler "
            "in between that refuses them); set PGBINDING['LOGICAL_READER'] = 'poll' to read "
            "the slot that way only.",
            self.slot,
            str(exc).strip() or type(exc).__name__,
            retry_in,
        )

    async def _lose_stream(self, exc: BaseException) -> None:
        await self.close()
        self._stream_failed(exc, STREAM_RETRY_INTERVAL)

    async def close(self) -> None:
        """End the stream (the slot is free for others)."""
        stream, self.stream = self.stream, None
        if stream is not None:
            await stream.close()

    async def _stream_round(self, conn: psycopg.AsyncConnection[Any], stream: WalStream) -> int:
        try:
            await stream.receive(0)
        except psycopg.OperationalError as exc:
            await self._lose_stream(exc)
            return -1
        transactions = stream.take()
        upto = stream.sent_upto
        written = await self._write(conn, transactions, upto) if transactions else 0
        self.streamed += len(transactions)
        self.decoded_upto = max(self.decoded_upto, upto)
        return written

    # -- one round ---------------------------------------------------------------------------

    async def round(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Write every change committed since the last round into the log; how many rows."""
        self.rounds += 1
        self.written_rows = []
        now = time.monotonic()
        if now - self._last_slot_check >= SLOT_CHECK_INTERVAL:
            self._last_slot_check = now
            await self.check_slot(conn)
        if (
            self.stream is None
            and self._conninfo is not None
            and self.settings.LOGICAL_READER == "stream"
            and now >= self._stream_retry_at
        ):
            await self._open_stream(conn, take_over=False)
        if self.stream is not None:
            written = await self._stream_round(conn, self.stream)
            if written >= 0:
                self._moved = False
                return written
        if not self._moved:  # not just woken by wait(): look whether WAL moved first
            cur = await conn.execute(logical.FLUSH_SQL)
            row = await cur.fetchone()
            if row is None or int(row[0]) <= self.decoded_upto:
                return 0
        self._moved = False
        total = 0
        while True:
            try:
                written, complete = await self._step(conn)
            except errors.ObjectInUse as exc:  # a migration or a command reads the slot now
                self._complain("in use", "Logical capture: %s; retrying", str(exc).strip())
                return total
            except errors.UndefinedObject as exc:  # no slot (or no publication)
                self._complain(
                    "missing",
                    "Logical capture cannot read replication slot %r: %s. Run `manage.py "
                    "migrate` (or restart the listener to recreate the slot).",
                    self.slot,
                    str(exc).strip(),
                )
                cur = await conn.execute(logical.FLUSH_SQL)
                row = await cur.fetchone()
                self.decoded_upto = int(row[0]) if row else self.decoded_upto
                return total
            total += written
            if complete:
                return total
            try:
                await self._advance(conn)  # or the next peek returns the same transactions
            except errors.ObjectInUse:
                return total

    async def _step(self, conn: psycopg.AsyncConnection[Any]) -> tuple[int, bool]:
        """One peek up to the flush position, its rows written: (rows, reached the position).
        One round trip to peek and one to write (one statement); the slot is advanced later
        (:meth:`_advance`), off the way from commit to client."""
        params = {"slot": self.slot, "limit": self.peek_limit, "publication": self.publication}
        self.peeks += 1
        async with conn.pipeline():
            if self._flush_wal is not None:
                await conn.execute(self._flush_wal)
            cur = await conn.execute(logical.PEEK_AT_FLUSH_SQL, params)
        data = await cur.fetchall()
        flush = int(data[0][0])
        messages = [pgoutput.parse(bytes(r[1])) for r in data if r[1] is not None]
        decoded = pgoutput.Transactions().feed(messages)
        complete = len(messages) < self.peek_limit or not decoded
        upto = flush if complete else decoded[-1].end_lsn
        written = await self._write(conn, decoded, upto)
        self.decoded_upto = max(self.decoded_upto, upto)
        return written, complete

    async def _write(
        self, conn: psycopg.AsyncConnection[Any], decoded: list[pgoutput.Transaction], upto: int
    ) -> int:
        """Write the transactions of ``decoded`` not written before into the log, with
        ``upto`` as the slot's confirmed position; how many rows.

        Streaming, the write is committed asynchronously (:data:`logical.ASYNC_WRITE_SQL`, one
        round trip): the WAL flush it would wait for is the largest part of the way from a
        writer's commit to the clients. Polling, or while a capture trigger exists, it is
        committed durably with ids from the sequence (:data:`logical.WRITE_SQL`)."""
        # What this pump wrote already (the slot is advanced after sending): not again.
        transactions = [t for t in decoded if t.end_lsn > self._confirmed]
        if not transactions:
            return 0
        for relid in self.converter.missing(transactions):
            cur = await conn.execute(logical.RELATION_SQL, [relid])
            self.converter.learn(relid, await cur.fetchall())
        rows = self.converter.rows(transactions)
        params = {**logrows.insert_params(self.slot, rows), "lsn": logical.lsn_text(upto)}
        written: int | None = None
        if self.stream is not None and time.monotonic() >= self._durable_until:
            written = await self._write_async(conn, params, upto)
        if written is None:
            written = await self._write_durably(conn, params)
        self._confirmed = max(self._confirmed, upto)
        if written:
            self.written += written
            self._last_change = time.monotonic()
        return written

    async def _write_durably(self, conn: psycopg.AsyncConnection[Any], params: Any) -> int:
        cur = await conn.execute(logical.WRITE_SQL, params)
        result = await cur.fetchone()
        if result is None or result[1] != 1:  # its row was deleted (drop-slot): again
            await conn.execute(logical.ENSURE_ROW_SQL, {"slot": self.slot})
            cur = await conn.execute(logical.WRITE_SQL, params)
            result = await cur.fetchone()
        # Its commit flushed every asynchronous write before it.
        self._unflushed.clear()
        self.durable_writes += 1
        return int(result[0]) if result else 0

    async def _write_async(
        self, conn: psycopg.AsyncConnection[Any], params: dict[str, Any], upto: int
    ) -> int | None:
        """The asynchronous write (one statement), or None when it wrote nothing: a capture
        trigger exists, another writer of the slot committed while it ran, or the slot's row
        is gone (drop-slot)."""
        safe_before = self.decoded_upto
        cur = await conn.execute(
            logical.ASYNC_WRITE_SQL, {**params, "functions": list(logical.TRIGGER_FUNCTIONS)}
        )
        records = await cur.fetchall()
        # One summary row (no log id), then the rows written.
        result = next(r for r in records if r[7] is None)
        written, updated, triggers, stale = int(result[0]), int(result[1]), result[2], result[3]
        # Every earlier write had committed when this statement read the insert position.
        self._wal(int(result[4]), int(result[5]))
        if triggers:
            self._durable_until = time.monotonic() + TRIGGERS_RECHECK_INTERVAL
            logger.info(
                "Logical capture: a capture trigger exists (a switch of capture backends in "
                "progress?); writing the log durably for %.0f s",
                TRIGGERS_RECHECK_INTERVAL,
            )
            return None
        if stale or updated != 1:
            return None
        if not self._unflushed:
            self._safe = max(self._safe, safe_before)
        # Where its commit record ends is known only after it: the next look sets it.
        self._unflushed.append([0, upto])
        self.async_writes += 1
        self.written_rows = sorted((r[7:] for r in records if r[7] is not None), key=itemgetter(0))
        return written

    def take_written(self, limit: int | None = None) -> list[tuple[Any, ...]]:
        """The log rows the last round wrote (as the log reader reads them: id, table_name,
        op, pk, old, new; in id order), when it wrote them asynchronously; [] otherwise. With
        ``limit``, the first ``limit`` of them; the rest wait for the next call (the listener
        sends a big round in batches, then lets the pump read the stream again)."""
        if limit is None or len(self.written_rows) <= limit:
            rows, self.written_rows = self.written_rows, []
        else:
            rows, self.written_rows = self.written_rows[:limit], self.written_rows[limit:]
        return rows

    def _wal(self, inserted: int, flushed: int) -> None:
        """WAL positions read after the unflushed writes committed (``inserted``, past their
        commit records) and how far the WAL is flushed: the writes before it are durable."""
        self._flush_checked = time.monotonic()
        for entry in self._unflushed:
            if entry[0] == 0:
                entry[0] = inserted
        while self._unflushed and self._unflushed[0][0] <= flushed:
            self._safe = max(self._safe, self._unflushed.popleft()[1])

    async def _confirmable(self, conn: psycopg.AsyncConnection[Any], now: bool = False) -> int:
        """The slot position that may be confirmed: what was decoded, but not past a write a
        crash could still lose. Looks at the flush position if a write is unflushed (at most
        every FLUSH_CHECK_INTERVAL unless ``now``)."""
        if self._unflushed and (
            now or time.monotonic() - self._flush_checked >= FLUSH_CHECK_INTERVAL
        ):
            cur = await conn.execute(logical.FLUSH_SQL)
            row = await cur.fetchone()
            if row is not None:
                self._wal(int(row[1]), int(row[0]))
        return self._safe if self._unflushed else self.decoded_upto

    async def _advance(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Let the slot go of what is in the log (WAL Postgres may then remove).

        Each peek and advance decodes from the slot's restart_lsn, which Postgres moves only
        to a snapshot of running transactions in the WAL (the background writer logs one every
        15 s): without more of them every round would read up to 15 s of WAL again. So the
        pump logs one itself after advancing (pg_log_standby_snapshot, Postgres >= 16, which
        needs EXECUTE on it), and the next advance moves restart_lsn up to it.
        """
        if self.decoded_upto <= self._advanced:
            return
        if self._unflushed:  # written while streaming, before the stream was lost: flush it
            await conn.execute(logical.FLUSH_COMMIT_SQL, {"slot": self.slot})
            self._unflushed.clear()
        lsn = {"slot": self.slot, "lsn": logical.lsn_text(self.decoded_upto)}
        await conn.execute(logical.ADVANCE_SQL, lsn)
        self._advanced, self._advanced_at = self.decoded_upto, time.monotonic()
        if self._log_snapshot:
            try:
                await conn.execute("SELECT pg_log_standby_snapshot()")
            except errors.InsufficientPrivilege as exc:
                self._log_snapshot = False
                logger.warning(
                    "Logical capture: cannot log running-transaction snapshots (%s), so each "
                    "round decodes up to 15 s of WAL again; GRANT EXECUTE ON FUNCTION "
                    "pg_log_standby_snapshot() to the listener's role to avoid it",
                    str(exc).strip(),
                )

    async def sent(self, conn: psycopg.AsyncConnection[Any], now: bool = False) -> None:
        """The listener sent what it read: advance the slot past what is in the log (``now``,
        or if it was last advanced ADVANCE_INTERVAL ago: an advance costs a decoding pass and
        a write of the slot's state, and the next peek skips what is written anyway)."""
        if self.stream is not None:
            # A status update on the stream: no decoding pass (and no round trip unless a write
            # may be unflushed).
            upto = await self._confirmable(conn, now)
            try:
                self.stream.confirm(upto)
            except psycopg.OperationalError as exc:
                await self._lose_stream(exc)
            return
        if not now and time.monotonic() - self._advanced_at < ADVANCE_INTERVAL:
            return
        try:
            await self._advance(conn)
        except (errors.ObjectInUse, errors.UndefinedObject) as exc:
            self._complain("advance", "Logical capture: cannot advance the slot: %s", exc)

    # -- waiting -----------------------------------------------------------------------------

    async def wait(self, conn: psycopg.AsyncConnection[Any], seconds: float) -> bool:
        """Wait up to ``seconds`` for WAL past what was decoded; True if there is some (the
        next :meth:`round` then peeks at once). The slot is advanced first if it was not for
        ADVANCE_INTERVAL (the waits come in slices of at most 0.25 s)."""
        await self.sent(conn)
        if self.stream is not None:
            try:
                self._moved = await self.stream.receive(seconds)
            except psycopg.OperationalError as exc:
                await self._lose_stream(exc)
                return True  # the next round polls
            if not self.stream.transactions_ready:
                # Caught up: what the walsender says it has sent is decoded (nothing of it
                # is waiting to be written).
                self.decoded_upto = max(self.decoded_upto, self.stream.sent_upto)
            return self._moved
        quiet = time.monotonic() - self._last_change >= self.settings.LOGICAL_IDLE_AFTER
        step = (
            self.settings.LOGICAL_IDLE_POLL_INTERVAL
            if quiet
            else self.settings.LOGICAL_POLL_INTERVAL
        )
        cur = await conn.execute(
            _WAIT_SQL, [logical.lsn_text(self.decoded_upto), seconds, max(step, 0.0001)]
        )
        row = await cur.fetchone()
        self._moved = bool(row and int(row[0]) > self.decoded_upto)
        return self._moved

    # -- the slot's health -------------------------------------------------------------------

    async def check_slot(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Warn when the slot retains more WAL than SLOT_WAL_WARNING_BYTES, or lost some."""
        cur = await conn.execute(logical.SLOT_SQL, [self.slot])
        row = await cur.fetchone()
        if row is None:
            return
        retained, wal_status = int(row[7]), row[8]
        if wal_status == "lost":
            logger.error(
                "Logical capture: replication slot %r has lost WAL it needed "
                "(max_slot_wal_keep_size = %s): changes were lost. Drop it (`manage.py "
                "pgbinding drop-slot`), restart the listener, and have clients resync.",
                self.slot,
                row[10],
            )
        elif retained > self.settings.SLOT_WAL_WARNING_BYTES:
            logger.warning(
                "Logical capture: replication slot %r retains %.1f MB of WAL (warning at "
                "SLOT_WAL_WARNING_BYTES = %.1f MB; max_slot_wal_keep_size = %s). A long "
                "transaction holds it back, or the listener cannot keep up.",
                self.slot,
                retained / 1e6,
                self.settings.SLOT_WAL_WARNING_BYTES / 1e6,
                row[10],
            )

    def _complain(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._complained.get(key, -COMPLAINT_INTERVAL) >= COMPLAINT_INTERVAL:
            self._complained[key] = now
            logger.warning(message, *args)
