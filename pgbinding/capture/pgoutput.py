"""A decoder of ``pgoutput``'s messages (logical replication protocol, version 1).

``pgoutput`` is the output plugin built into every Postgres >= 10. The logical capture backend
reads a replication slot with ``pg_logical_slot_peek_binary_changes(slot, upto_lsn,
upto_nchanges, 'proto_version', '1', 'publication_names', NAME)``: each row holds one message.
The format is documented in the Postgres manual ("Logical Replication Message Formats"); this
module reads the messages version 1 has (psycopg 3 has no replication-protocol API, and no
well-kept Python library decodes them):

=====  ==========  =====================================================================
``B``  Begin       final LSN, commit time, xid
``C``  Commit      flags, commit LSN, end LSN, commit time
``O``  Origin      LSN, origin name (skipped)
``R``  Relation    relid, namespace, name, replica identity, columns (flags, name, type, typmod)
``Y``  Type        oid, namespace, name (skipped: the capture reads types from the catalog)
``I``  Insert      relid, ``N`` new tuple
``U``  Update      relid, ``K`` (key) or ``O`` (whole old row) tuple if any, ``N`` new tuple
``D``  Delete      relid, ``K`` or ``O`` old tuple
``T``  Truncate    relids, options
``M``  Message     (only with the ``messages`` option, which the capture does not set)
=====  ==========  =====================================================================

A tuple's columns are ``n`` (null), ``u`` (an unchanged TOASTed value, which an UPDATE's new
tuple does not carry: :class:`Transactions` fills it from the old row) or ``t`` (the type's text
output, in the decoding session's settings and client encoding).

:class:`Transactions` assembles messages into committed transactions, in commit order (the
order ``pgoutput`` sends them in). A Relation message is sent once per relation per decoding
call, before its first change, so one :class:`Transactions` must see every message of a call.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

#: An unchanged TOASTed value in an UPDATE's new tuple (not sent: the old row has it).
UNCHANGED = object()
#: Postgres timestamps count microseconds from 2000-01-01 UTC.
_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)

Value = str | None | object
Row = dict[str, Value]


class DecodeError(ValueError):
    """Bytes that are not a pgoutput message of protocol version 1."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    #: Part of the replica identity (with REPLICA IDENTITY FULL: every column).
    key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    relid: int
    namespace: str
    name: str
    #: ``d`` default (primary key), ``f`` full, ``i`` index, ``n`` nothing.
    replica_identity: str
    columns: tuple[Column, ...]
    #: The columns' names, in order.
    names: tuple[str, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(c.name for c in self.columns))


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_time: datetime.datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime.datetime


@dataclass(frozen=True, slots=True)
class Insert:
    relid: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relid: int
    #: The old row (``O``, REPLICA IDENTITY FULL) or its key (``K``), or None when the key did
    #: not change under a default replica identity.
    old: tuple[Value, ...] | None
    old_kind: str | None
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    relid: int
    old: tuple[Value, ...]
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    relids: tuple[int, ...]
    options: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """A message the capture has no use for (Origin, Type, Message)."""

    kind: str


Message = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Skipped


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError(f"message ends at byte {len(self.data)}, wanted {end}")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def byte(self) -> str:
        return chr(self.take(1)[0])

    def int8(self) -> int:
        return int(self.take(1)[0])

    def int16(self) -> int:
        return int(struct.unpack("!h", self.take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack("!i", self.take(4))[0])

    def uint32(self) -> int:
        return int(struct.unpack("!I", self.take(4))[0])

    def int64(self) -> int:
        return int(struct.unpack("!q", self.take(8))[0])

    def lsn(self) -> int:
        return int(struct.unpack("!Q", self.take(8))[0])

    def time(self) -> datetime.datetime:
        return _EPOCH + datetime.timedelta(microseconds=self.int64())

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise DecodeError("unterminated string")
        out = self.data[self.pos : end].decode()
        self.pos = end + 1
        return out

    def tuple(self) -> tuple[Value, ...]:
        values, self.pos = _tuple(self.data, self.pos)
        return values


def _tuple(data: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
    """The tuple (``TupleData``) at ``pos``, and the position after it. The hot loop of
    decoding (two tuples per UPDATE): indexes and unpack_from on the message itself rather
    than a slice per field."""
    try:
        (count,) = _INT16.unpack_from(data, pos)
        pos += 2
        values: list[Value] = []
        for _ in range(count):
            kind = data[pos]
            pos += 1
            if kind == 0x74:  # "t": text
                (size,) = _INT32.unpack_from(data, pos)
                pos += 4
                end = pos + size
                if size < 0 or end > len(data):
                    raise DecodeError(f"message ends at byte {len(data)}, wanted {end}")
                values.append(data[pos:end].decode())
                pos = end
            elif kind == 0x6E:  # "n": null
                values.append(None)
            elif kind == 0x75:  # "u": unchanged TOASTed value
                values.append(UNCHANGED)
            else:  # "b" needs the binary option, which the capture does not set
                raise DecodeError(f"unexpected tuple column kind {chr(kind)!r}")
    except (struct.error, IndexError):
        raise DecodeError(f"message ends at byte {len(data)} inside a tuple") from None
    return tuple(values), pos


_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!BQQq")
_RELID = struct.Struct("!I")


def _time(micros: int) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(microseconds=micros)


def parse(data: bytes) -> Message:
    """One pgoutput message."""
    if not isinstance(data, bytes):
        data = bytes(data)
    # The messages of every change, unpacked in place: Begin, Commit, Insert and Update.
    head = data[:1]
    if head == b"B" and len(data) >= 21:
        final_lsn, micros, xid = _BEGIN.unpack_from(data, 1)
        return Begin(final_lsn, _time(micros), xid)
    if head == b"C" and len(data) >= 26:
        flags, commit_lsn, end_lsn, micros = _COMMIT.unpack_from(data, 1)
        return Commit(flags, commit_lsn, end_lsn, _time(micros))
    if head == b"I" and data[5:6] == b"N":
        return Insert(_RELID.unpack_from(data, 1)[0], _tuple(data, 6)[0])
    if head == b"U" and data[5:6] in (b"O", b"K", b"N"):
        relid = _RELID.unpack_from(data, 1)[0]
        old, old_kind, pos = None, None, 5
        if data[5:6] != b"N":
            old, pos = _tuple(data, 6)
            old_kind = chr(data[5])
        if data[pos : pos + 1] == b"N":
            return Update(relid, old, old_kind, _tuple(data, pos + 1)[0])
    r = _Reader(data)
    kind = r.byte()
    if kind == "B":
        return Begin(r.lsn(), r.time(), r.uint32())
    if kind == "C":
        return Commit(r.int8(), r.lsn(), r.lsn(), r.time())
    if kind == "R":
        relid, namespace, name = r.uint32(), r.string(), r.string()
        identity = r.byte()
        columns = []
        for _ in range(r.int16()):
            flags, column = r.int8(), r.string()
            oid, _typmod = r.uint32(), r.int32()
            columns.append(Column(column, oid, bool(flags & 1)))
        return Relation(relid, namespace or "pg_catalog", name, identity, tuple(columns))
    if kind == "I":
        relid = r.uint32()
        if r.byte() != "N":
            raise DecodeError("Insert without a new tuple")
        return Insert(relid, r.tuple())
    if kind == "U":
        relid = r.uint32()
        marker = r.byte()
        old, old_kind = None, None
        if marker in ("K", "O"):
            old, old_kind = r.tuple(), marker
            marker = r.byte()
        if marker != "N":
            raise DecodeError(f"Update without a new tuple (got {marker!r})")
        return Update(relid, old, old_kind, r.tuple())
    if kind == "D":
        relid = r.uint32()
        marker = r.byte()
        if marker not in ("K", "O"):
            raise DecodeError(f"Delete without an old tuple (got {marker!r})")
        return Delete(relid, r.tuple(), marker)
    if kind == "T":
        count, options = r.int32(), r.int8()
        return Truncate(tuple(r.uint32() for _ in range(count)), options)
    if kind in ("O", "Y", "M"):
        return Skipped(kind)
    raise DecodeError(f"unknown pgoutput message type {kind!r}")


@dataclass(frozen=True, slots=True)
class RowChange:
    """One change of a committed transaction: ``op`` is ``I``, ``U``, ``D`` or ``T``
    (``old``/``new`` are None for ``T``). Values are text (or None for SQL NULL)."""

    op: str
    relation: Relation
    old: dict[str, str | None] | None
    new: dict[str, str | None] | None


@dataclass(slots=True)
class Transaction:
    begin: Begin
    commit: Commit | None = None
    changes: list[RowChange] = field(default_factory=list)

    @property
    def end_lsn(self) -> int:
        assert self.commit is not None
        return self.commit.end_lsn


def _row(relation: Relation, values: tuple[Value, ...]) -> Row:
    if len(values) != len(relation.columns):
        raise DecodeError(
            f"{relation.name}: a tuple of {len(values)} column(s), the relation has "
            f"{len(relation.columns)}"
        )
    return {c.name: v for c, v in zip(relation.columns, values, strict=True)}


def _text_row(row: Row) -> dict[str, str | None]:
    return {k: v if isinstance(v, str) else None for k, v in row.items()}


def _old(relation: Relation, values: tuple[Value, ...], kind: str | None) -> Row:
    old = _row(relation, values)
    if kind == "K":
        # Only the key columns are sent: the rest of an old key tuple is null, not known.
        old = {c.name: old[c.name] for c in relation.columns if c.key}
    return old


_ROW_MESSAGES = (Insert, Update, Delete)


class Transactions:
    """Assembles the messages of one decoding call into committed transactions."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        self._open: Transaction | None = None
        #: Changes whose new tuple lacked an unchanged TOASTed value and no old row had it
        #: (the table is not REPLICA IDENTITY FULL): the column is left out of the row.
        self.missing_toast = 0

    @property
    def in_transaction(self) -> bool:
        """A transaction's Begin was fed and its Commit not yet."""
        return self._open is not None

    def feed(self, messages: Iterable[Message]) -> list[Transaction]:
        """The transactions completed by ``messages`` (a transaction may span two feeds)."""
        done = []
        for message in messages:
            completed = self.feed_one(message)
            if completed is not None:
                done.append(completed)
        return done

    def feed_one(self, message: Message) -> Transaction | None:
        """Take one message; the transaction it completed (a Commit), else None."""
        if self._open is not None and type(message) in _ROW_MESSAGES:
            # The common case first, without the isinstance chain below.
            self._open.changes.append(self._change(message))  # type: ignore[arg-type]
        elif isinstance(message, Relation):
            self.relations[message.relid] = message
        elif isinstance(message, Begin):
            self._open = Transaction(message)
        elif isinstance(message, Commit):
            if self._open is None:
                raise DecodeError("Commit without Begin")
            done, self._open = self._open, None
            done.commit = message
            return done
        elif not isinstance(message, Skipped):
            if self._open is None:
                raise DecodeError(f"{type(message).__name__} outside a transaction")
            self._open.changes.extend(self._changes(message))
        return None

    def _relation(self, relid: int) -> Relation:
        try:
            return self.relations[relid]
        except KeyError:
            raise DecodeError(f"a change of relation {relid} before its Relation message") from None

    def _change(self, message: Insert | Update | Delete) -> RowChange:
        """One change; a tuple without an unchanged TOASTed value (nearly all) is made a row
        with one ``dict(zip())``, no value needing a look."""
        relation = self._relation(message.relid)
        names = relation.names
        if isinstance(message, Insert):
            new = message.new
            if len(new) == len(names) and UNCHANGED not in new:
                return RowChange("I", relation, None, dict(zip(names, new, strict=True)))  # type: ignore[arg-type]
        elif isinstance(message, Update):
            new, old = message.new, message.old
            if (
                len(new) == len(names)
                and UNCHANGED not in new
                and (old is None or (message.old_kind == "O" and len(old) == len(names)))
                and (old is None or UNCHANGED not in old)
            ):
                old_row = dict(zip(names, old, strict=True)) if old is not None else None
                return RowChange("U", relation, old_row, dict(zip(names, new, strict=True)))  # type: ignore[arg-type]
        return self._changes(message)[0]

    def _changes(self, message: Insert | Update | Delete | Truncate) -> list[RowChange]:
        if isinstance(message, Truncate):
            return [RowChange("T", self._relation(r), None, None) for r in message.relids]
        relation = self._relation(message.relid)
        if isinstance(message, Insert):
            return [RowChange("I", relation, None, _text_row(_row(relation, message.new)))]
        if isinstance(message, Delete):
            old_row = _old(relation, message.old, message.old_kind)
            return [RowChange("D", relation, _text_row(old_row), None)]
        new = _row(relation, message.new)
        old = _old(relation, message.old, message.old_kind) if message.old is not None else None
        for name, value in new.items():
            if value is UNCHANGED:
                if old is not None and name in old and old[name] is not UNCHANGED:
                    new[name] = old[name]
                else:
                    self.missing_toast += 1
        new_text = {k: v for k, v in _text_row(new).items() if new[k] is not UNCHANGED}
        return [RowChange("U", relation, _text_row(old) if old is not None else None, new_text)]
