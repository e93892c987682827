"""The logical capture backend's pump: from the replication slot into the change log.

With ``PGBINDING["CAPTURE"] = "logical"`` no trigger writes ``pgbinding_change``: the leading
listener does, in front of its usual loop. Each :meth:`Pump.round`:

1. reads the WAL flush position ``L`` (one cheap query; nothing more when WAL has not moved);
2. peeks the slot's committed transactions before ``L``
   (``pg_logical_slot_peek_binary_changes``, protocol 1, the publication of the bound
   tables), decodes them (:mod:`pgbinding.capture.pgoutput`) and turns them into log rows
   (:class:`pgbinding.capture.logical.Converter`);
3. in one transaction, committed durably: locks the slot's row in ``pgbinding_slot``, skips
   the transactions it has already written (end LSN <= its ``confirmed_lsn``: a restart, or a
   migration that drained the slot), inserts the rest in commit order with one statement
   (the log ids follow commit order, so these rows open no gaps), and stores ``L`` (or the last
   transaction's end, for a partial peek) as ``confirmed_lsn``;
4. only then advances the slot to it (``pg_replication_slot_advance``).

A crash anywhere loses nothing (the slot still holds what was not committed in step 3) and
writes nothing twice (step 3 skips it). The log reader, positions and ``since``, dispatch and
consumers then work as with triggers.

There is no NOTIFY: between rounds the listener waits in :meth:`Pump.wait`, one statement
(``pgbinding_wait_wal``, schema v3) that looks at the flush position every
``LOGICAL_POLL_INTERVAL`` inside the server, or ``LOGICAL_IDLE_POLL_INTERVAL`` after
``LOGICAL_IDLE_AFTER`` seconds without a change.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from psycopg import errors

from ..capture import logical, pgoutput
from ..conf import Settings

logger = logging.getLogger("pgbinding.listener")

#: Seconds between checks of the WAL the slot retains.
SLOT_CHECK_INTERVAL = 30.0
#: Seconds between repeats of the same complaint (a missing slot, a slot in use).
COMPLAINT_INTERVAL = 60.0

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
        self.converter = logical.Converter()
        self._last_change = 0.0
        self._last_slot_check = 0.0
        self._complained: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Pin the session settings pgoutput's text output depends on, and make sure the slot
        exists (creating it, with a warning, when bound tables are published without one)."""
        for statement in logical.pin_settings_sql():
            await conn.execute(statement)
        self.decoded_upto = 0
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

    # -- one round ---------------------------------------------------------------------------

    async def round(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Write every change committed since the last round into the log; how many rows."""
        self.rounds += 1
        cur = await conn.execute(logical.FLUSH_SQL)
        row = await cur.fetchone()
        flush, written = (int(row[0]), int(row[1])) if row else (0, 0)
        if written > flush > self.decoded_upto:
            # WAL in flight: flush it first, or the peek may wait for the record the flush
            # position falls into (see logical.FLUSH_WAL_SQL).
            await conn.execute(logical.FLUSH_WAL_SQL)
            cur = await conn.execute(logical.FLUSH_SQL)
            row = await cur.fetchone()
            flush = int(row[0]) if row else flush
        now = time.monotonic()
        if now - self._last_slot_check >= SLOT_CHECK_INTERVAL:
            self._last_slot_check = now
            await self.check_slot(conn)
        if flush <= self.decoded_upto:
            return 0
        total = 0
        while True:
            try:
                written, upto, complete = await self._step(conn, flush)
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
                self.decoded_upto = flush
                return total
            total += written
            self.decoded_upto = max(self.decoded_upto, upto)
            if complete:
                return total

    async def _step(self, conn: psycopg.AsyncConnection[Any], flush: int) -> tuple[int, int, bool]:
        """One peek, its rows written and the slot advanced: (rows, LSN reached, reached L)."""
        params = {
            "slot": self.slot,
            "upto": logical.lsn_text(flush),
            "limit": self.peek_limit,
            "publication": self.publication,
        }
        self.peeks += 1
        cur = await conn.execute(logical.PEEK_SQL, params)
        data = await cur.fetchall()
        transactions = pgoutput.Transactions().feed(pgoutput.parse(bytes(r[0])) for r in data)
        complete = len(data) < self.peek_limit or not transactions
        upto = flush if complete else transactions[-1].end_lsn
        rows: list[logical.LogRow] = []
        if transactions:
            async with conn.transaction():
                # Durable before the slot moves past it, whatever the session's setting.
                await conn.execute("SET LOCAL synchronous_commit = on")
                await conn.execute(logical.ENSURE_ROW_SQL, {"slot": self.slot})
                cur = await conn.execute(logical.LOCK_SQL, {"slot": self.slot})
                stored_row = await cur.fetchone()
                stored = int(stored_row[0]) if stored_row else 0
                new = [t for t in transactions if t.end_lsn > stored]
                for relid in self.converter.missing(new):
                    cur = await conn.execute(logical.RELATION_SQL, [relid])
                    self.converter.learn(relid, await cur.fetchall())
                rows = self.converter.rows(new)
                if rows:
                    await conn.execute(logical.INSERT_SQL, logical.insert_params(rows))
                if new:
                    lsn = {"slot": self.slot, "lsn": logical.lsn_text(upto)}
                    await conn.execute(logical.CONFIRM_SQL, lsn)
            if rows:
                self.written += len(rows)
                self._last_change = time.monotonic()
        await conn.execute(logical.ADVANCE_SQL, {"slot": self.slot, "lsn": logical.lsn_text(upto)})
        return len(rows), upto, complete

    # -- waiting -----------------------------------------------------------------------------

    async def wait(self, conn: psycopg.AsyncConnection[Any], seconds: float) -> bool:
        """Wait up to ``seconds`` for WAL past what was decoded; True if there is some."""
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
        return bool(row and int(row[0]) > self.decoded_upto)

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
