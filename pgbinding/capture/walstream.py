"""Reading a logical replication slot as a stream: the replication protocol over libpq.

The slot's SQL functions (``pg_logical_slot_peek_binary_changes``) build a decoding context,
load pgoutput and read the WAL from the slot's ``restart_lsn`` on every call: about a
millisecond of the server's CPU per look, and a change waits for the next look. A walsender
keeps one decoding context for the life of the connection and pushes each transaction as it
is committed. psycopg 3 has no replication API, but its libpq binding (``psycopg.pq``) speaks
the copy-both sub-protocol the walsender uses, which is all it takes: a connection made with
``replication=database``, ``START_REPLICATION SLOT ... LOGICAL``, then copy data both ways
(the protocol's "Streaming Replication Protocol" chapter):

* from the server, ``w`` (XLogData: start LSN, end of WAL, send time, then one pgoutput
  message) and ``k`` (keepalive: the position the walsender has sent up to, its clock, and
  whether it wants an answer now);
* to the server, ``r`` (standby status update: received, flushed and applied positions, our
  clock). The flushed position is what lets the slot go of WAL: :class:`WalStream` reports
  only what its owner says is safely in the log (:meth:`WalStream.confirm`).

Needs what the slot's SQL functions need (the REPLICATION attribute, or superuser; pg_hba.conf
matches a logical replication connection by its database, as any other) and a free walsender
(``max_wal_senders``); a connection pooler may refuse replication connections.
:class:`~pgbinding.delivery.pump.Pump` falls back to the SQL functions when the server or a
pooler refuses the stream.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, pq
from psycopg import sql as psql

from . import pgoutput

logger = logging.getLogger("pgbinding.listener")

#: Postgres's epoch (2000-01-01) in Unix seconds: the protocol's clocks count from it.
PG_EPOCH = 946_684_800
#: Seconds between status updates the server did not ask for (it drops a walsender that says
#: nothing for wal_sender_timeout, 60 s by default).
STATUS_INTERVAL = 10.0

_XLOG_HEADER = struct.Struct("!QQQ")
_KEEPALIVE = struct.Struct("!QQB")
_STATUS = struct.Struct("!cQQQQB")
_START = struct.Struct("!Q")
#: Where an XLogData message's pgoutput message starts.
_XLOG_DATA = 1 + _XLOG_HEADER.size


@dataclass(frozen=True, slots=True)
class XLogData:
    start: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    #: Everything committed before this position has been sent.
    sent_upto: int
    reply: bool


def parse_copy_data(data: bytes | memoryview) -> XLogData | Keepalive:
    """One copy-data message from a walsender."""
    kind = data[:1]
    if kind == b"w" and len(data) >= 1 + _XLOG_HEADER.size:
        start, _wal_end, _sent_at = _XLOG_HEADER.unpack_from(data, 1)
        return XLogData(start, bytes(data[1 + _XLOG_HEADER.size :]))
    if kind == b"k" and len(data) >= 1 + _KEEPALIVE.size:
        sent_upto, _sent_at, reply = _KEEPALIVE.unpack_from(data, 1)
        return Keepalive(sent_upto, bool(reply))
    raise pgoutput.DecodeError(f"unexpected replication message {bytes(data[:1])!r}")


def status_update(received: int, flushed: int, now: float | None = None) -> bytes:
    """A standby status update: ``received`` and ``flushed`` (also reported as applied)."""
    clock = int(((time.time() if now is None else now) - PG_EPOCH) * 1_000_000)
    return _STATUS.pack(b"r", received, flushed, flushed, clock, 0)


class StreamLost(psycopg.OperationalError):
    """The replication connection ended or failed (the message says how)."""


class WalStream:
    """One replication connection reading one slot, for one asyncio task at a time."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self._pgconn: pq.abc.PGconn = conn.pgconn
        self._done: list[pgoutput.Transaction] = []
        #: Transactions assembled from the messages so far (Relation messages come once per
        #: connection, so one assembler lives as long as the stream).
        self.transactions = pgoutput.Transactions()
        #: The walsender has sent everything committed before this position.
        self.sent_upto = 0
        #: The highest position received.
        self.received = 0
        self._confirmed = 0
        self._status_at = 0.0
        self.closed = False

    # -- opening and closing ---------------------------------------------------------------------

    @classmethod
    async def open(
        cls, conninfo: str, slot: str, publication: str, application_name: str
    ) -> WalStream:
        """Connect with ``replication=database`` and start streaming ``slot`` from its
        confirmed position (errors as psycopg raises them: ``ObjectInUse`` when another
        process reads the slot, ``InsufficientPrivilege`` without the REPLICATION attribute,
        ``OperationalError`` when no walsender is free or a pooler refuses the connection)."""
        conn = await psycopg.AsyncConnection.connect(
            conninfo,
            autocommit=True,
            replication="database",
            application_name=application_name[:63],
        )
        stream = cls(conn)
        try:
            command = psql.SQL(
                "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names {})"
            ).format(psql.Identifier(slot), psql.Literal(f'"{publication}"'))
            await stream._start(command.as_bytes(conn))
        except BaseException:
            await stream.close()
            raise
        return stream

    async def _start(self, command: bytes) -> None:
        pgconn = self._pgconn
        pgconn.nonblocking = 1
        pgconn.send_query(command)
        await self._flush()
        while True:
            try:
                pgconn.consume_input()
            except psycopg.OperationalError as exc:
                raise self._lost() from exc
            if pgconn.is_busy():
                await self._wait(read=True, seconds=None)
                continue
            result = pgconn.get_result()
            if result is None:
                raise StreamLost("the server ended START_REPLICATION without streaming")
            if result.status == pq.ExecStatus.COPY_BOTH:
                self._status_at = time.monotonic()
                return
            if result.status == pq.ExecStatus.FATAL_ERROR:
                raise errors.error_from_result(result, encoding=self._conn.info.encoding)

    async def close(self) -> None:
        self.closed = True
        try:
            await self._conn.close()
        except Exception:  # closing a broken connection: nothing more to learn
            pass

    # -- reading ---------------------------------------------------------------------------------

    async def receive(self, seconds: float) -> bool:
        """Read what the server has sent, waiting up to ``seconds`` for something; True if
        a transaction was completed (see :meth:`take`)."""
        deadline = time.monotonic() + seconds
        while True:
            completed = self._read_available()
            if completed or self.transactions_ready:
                return True
            await self._maybe_report()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self._wait(read=True, seconds=min(left, STATUS_INTERVAL))

    @property
    def transactions_ready(self) -> bool:
        return bool(self._done)

    def take(self) -> list[pgoutput.Transaction]:
        """The transactions completed since the last call, in commit order."""
        done, self._done = self._done, []
        return done

    def _read_available(self) -> bool:
        pgconn = self._pgconn
        completed = False
        reply = False
        try:
            pgconn.consume_input()
            while True:
                size, data = pgconn.get_copy_data(1)
                if size == 0:
                    break
                if size < 0:  # the server ended the copy: an error follows
                    raise self._lost()
                if data[0] == 0x77 and len(data) >= _XLOG_DATA:  # "w", XLogData
                    (start,) = _START.unpack_from(data, 1)
                    if start > self.received:
                        self.received = start
                    done = self.transactions.feed_one(pgoutput.parse(bytes(data[_XLOG_DATA:])))
                    if done is not None:
                        self._done.append(done)
                        completed = True
                    continue
                message = parse_copy_data(data)  # a keepalive (or an error)
                if isinstance(message, Keepalive):
                    self.received = max(self.received, message.sent_upto)
                    if not self.transactions.in_transaction:
                        # Nothing half-sent: every transaction committed before this
                        # position is in hand.
                        self.sent_upto = max(self.sent_upto, message.sent_upto)
                    reply = reply or message.reply
        except psycopg.OperationalError as exc:
            if isinstance(exc, StreamLost | errors.ObjectInUse):
                raise
            raise self._lost() from exc
        if self._done:
            self.sent_upto = max(self.sent_upto, self._done[-1].end_lsn)
        if reply:
            self._send_status()
        return completed

    # -- reporting -------------------------------------------------------------------------------

    def confirm(self, lsn: int) -> None:
        """Everything before ``lsn`` is safely in the log: let the slot go of it (sent with
        the next status update, at once when it moved)."""
        if lsn > self._confirmed:
            self._confirmed = lsn
            self._send_status()

    async def _maybe_report(self) -> None:
        if time.monotonic() - self._status_at >= STATUS_INTERVAL:
            self._send_status()
            await self._flush()

    def _send_status(self) -> None:
        received = max(self.received, self._confirmed)
        try:
            self._pgconn.put_copy_data(status_update(received, self._confirmed))
            self._pgconn.flush()
        except psycopg.OperationalError as exc:
            raise self._lost() from exc
        self._status_at = time.monotonic()

    # -- waiting on the socket -------------------------------------------------------------------

    async def _flush(self) -> None:
        while True:
            try:
                pending = self._pgconn.flush()
            except psycopg.OperationalError as exc:
                raise self._lost() from exc
            if pending == 0:
                return
            await self._wait(read=False, seconds=None)

    async def _wait(self, read: bool, seconds: float | None) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self._pgconn.socket

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        if read:
            loop.add_reader(fd, wake)
        else:
            loop.add_writer(fd, wake)
        try:
            await asyncio.wait_for(ready, seconds)
        except TimeoutError:
            pass
        finally:
            if read:
                loop.remove_reader(fd)
            else:
                loop.remove_writer(fd)

    def _lost(self) -> Exception:
        """The error that ended the stream, as the server or libpq gave it."""
        self.closed = True
        text = self._pgconn.error_message.decode("utf-8", "replace").strip()
        try:
            result = self._pgconn.get_result()
        except Exception:
            result = None
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            error = result.error_message.decode("utf-8", "replace").strip()
            text = error or text
        return StreamLost(f"the replication stream ended: {text or 'no reason given'}")
