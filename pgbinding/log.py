"""Reading the change log in commit-safe order, and remembering where the listener got to.

Log ids come from a sequence, so they are taken before commit: a reader can see id 11 while id
10's transaction is still running, and advancing past 10 would lose it. The reader therefore
tracks *gaps*: ranges of ids below its position that it has not seen. A gap is re-read until it
fills, or until every transaction that was in progress when the gap was noticed has finished
and one more read has not found it (the writer rolled back, or the sequence skipped). Gaps do
not hold back later changes: a transaction that is still running cannot have touched a row that
a later, committed transaction changed (it would still hold that row's lock), so per-row order
is commit order either way.

The position and the open gaps are saved in ``pgbinding_listener`` after each delivered batch,
so a restarted listener resumes where the last one stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads

from .bindings import Change

_READ = """
SELECT id, table_name, op, pk, old, new, txid::text FROM pgbinding_change
WHERE id > %(position)s ORDER BY id LIMIT %(limit)s
"""
_READ_WITH_GAPS = """
(SELECT c.id, c.table_name, c.op, c.pk, c.old, c.new, c.txid::text
   FROM unnest(%(los)s::bigint[], %(his)s::bigint[]) AS g(lo, hi)
   JOIN pgbinding_change c ON c.id BETWEEN g.lo AND g.hi)
UNION ALL
(SELECT id, table_name, op, pk, old, new, txid::text FROM pgbinding_change
  WHERE id > %(position)s ORDER BY id LIMIT %(limit)s)
ORDER BY id
"""


#: One decoder for every row: ``json.loads(s, parse_float=...)`` builds a new JSONDecoder per
#: call, which was a fifth of the listener's JSON time under load (py-spy, docs/benchmarks.md).
_DECODER = json.JSONDecoder(parse_float=Decimal)


def _loads(data: str | bytes) -> Any:
    # Like json.loads, which reads bytes as UTF-8 (what Postgres sends jsonb as, to psycopg).
    return _DECODER.decode(data.decode() if isinstance(data, bytes) else data)


def configure_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Load jsonb numbers as Decimal so decimal columns keep every digit."""
    set_json_loads(_loads, conn)


@dataclass(frozen=True, slots=True)
class Watch:
    """The transactions that were running at some moment, so we can tell when all have ended.

    A snapshot's xip list only names running transactions below its xmax (the latest completed
    xid + 1); a writer newer than every completed transaction is running but not listed. So a
    watch also records a barrier: an xid taken just after the snapshot. Every transaction that
    was running at that moment is in ``xids`` or has an xid in ``[lo, hi)``.
    """

    xids: frozenset[int]
    lo: int
    hi: int

    def finished(self, running: frozenset[int]) -> bool:
        """Have all watched transactions ended, given the xids ``running`` now?"""
        return not any(x in self.xids or self.lo <= x < self.hi for x in running)


def _parse_snapshot(text: str) -> tuple[int, int, frozenset[int]]:
    xmin, xmax, xip = str(text).split(":")
    return int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x)


async def running(conn: psycopg.AsyncConnection[Any]) -> frozenset[int]:
    """Xids of the transactions in progress now that a :class:`Watch` could be waiting on.

    Only the xip list is needed: a watch's barrier xid has completed by the time this runs,
    so this snapshot's xmax is above every xid a watch covers.
    """
    cur = await conn.execute("SELECT pg_current_snapshot()::text")
    row = await cur.fetchone()
    assert row is not None
    return _parse_snapshot(row[0])[2]


async def watch_running(conn: psycopg.AsyncConnection[Any]) -> Watch:
    """A :class:`Watch` on every transaction running now. Uses up one xid (the barrier)."""
    cur = await conn.execute("SELECT pg_current_snapshot()::text, pg_current_xact_id()::text")
    row = await cur.fetchone()
    assert row is not None
    _, xmax, xip = _parse_snapshot(row[0])
    return Watch(xip, xmax, int(row[1]))


@dataclass(slots=True)
class Gap:
    """Ids ``lo``..``hi`` (inclusive) not seen yet, below the reader's position."""

    lo: int
    hi: int
    #: The transactions running when the gap was noticed (None: not looked yet); any of them
    #: may hold an id of the gap.
    watch: Watch | None = None
    #: Every watched transaction had ended at the last check: drop the gap after the next read.
    settled: bool = False


@dataclass(frozen=True, slots=True)
class Cursor:
    """Which log ids someone has had: all up to ``position`` except the ``gaps`` ranges.

    Every outbound event carries the listener's cursor just after that change, encoded as
    ``"123"`` or ``"123:118-119,121-121"``; a client that reconnects hands back the last one it
    received, and is replayed exactly the ids the cursor does not cover.
    """

    position: int
    gaps: tuple[tuple[int, int], ...] = ()

    def covers(self, change_id: int) -> bool:
        if change_id > self.position:
            return False
        return not any(lo <= change_id <= hi for lo, hi in self.gaps)

    def encode(self) -> str:
        if not self.gaps:
            return str(self.position)
        return f"{self.position}:" + ",".join(f"{lo}-{hi}" for lo, hi in self.gaps)

    @classmethod
    def decode(cls, token: object) -> Cursor:
        """Parse a token; raises ValueError (with the token quoted) if it is not one."""
        # Consumers decode every event's token, so: the common form (no gaps) first, and the
        # error built only when it is raised.
        if type(token) is str and len(token) <= 4096 and token.isascii() and token.isdigit():
            return cls(int(token))
        if isinstance(token, bool) or not isinstance(token, int | str) or len(str(token)) > 4096:
            raise _not_a_position(token)
        head, _, rest = str(token).partition(":")
        try:
            position = int(head)
            gaps = tuple(
                (int(lo), int(hi))
                for lo, _, hi in (part.partition("-") for part in rest.split(",") if part)
            )
        except ValueError:
            raise _not_a_position(token) from None
        if position < 0 or not all(0 < lo <= hi for lo, hi in gaps):
            raise _not_a_position(token)
        return cls(position, gaps)


def _not_a_position(token: object) -> ValueError:
    return ValueError(
        f"{token!r} is not a position: expected a value received in an event's "
        '\'position\', like "123" or "123:118-119"'
    )


class ChangeLog:
    """The listener's cursor over ``pgbinding_change``."""

    def __init__(self, name: str, batch_size: int = 500) -> None:
        self.name = name
        self.batch_size = batch_size
        self.position = 0
        self.gaps: list[Gap] = []
        #: How many gaps this reader has seen open (for logs, tests and benchmarks).
        self.gaps_opened = 0

    async def load(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Read the saved position (creating the row for a new listener name)."""
        await conn.execute(
            "INSERT INTO pgbinding_listener (name) VALUES (%s) ON CONFLICT (name) DO NOTHING",
            [self.name],
        )
        cur = await conn.execute(
            "SELECT position, pending FROM pgbinding_listener WHERE name = %s", [self.name]
        )
        row = await cur.fetchone()
        assert row is not None
        self.position = int(row[0])
        self.gaps = [Gap(int(lo), int(hi)) for lo, hi in row[1]]

    async def save(self, conn: psycopg.AsyncConnection[Any]) -> None:
        pending = json.dumps([[g.lo, g.hi] for g in self.gaps])
        await conn.execute(
            "UPDATE pgbinding_listener SET position = %s, pending = %s::jsonb, updated_at = now()"
            " WHERE name = %s",
            [self.position, pending, self.name],
        )

    async def read(self, conn: psycopg.AsyncConnection[Any]) -> list[Change]:
        """The next changes in order: gap fills first (they have lower ids), then new ones."""
        params: dict[str, Any] = {"position": self.position, "limit": self.batch_size}
        if self.gaps:
            params["los"] = [g.lo for g in self.gaps]
            params["his"] = [g.hi for g in self.gaps]
            cur = await conn.execute(_READ_WITH_GAPS, params)
        else:
            cur = await conn.execute(_READ, params)
        rows = await cur.fetchall()
        changes = self._advance(
            [Change(int(r[0]), r[1], str(r[2]), r[3], r[4], r[5], r[6]) for r in rows]
        )
        if self.gaps:
            await self._check_gaps(conn)
        return changes

    def _advance(self, changes: list[Change]) -> list[Change]:
        """Move the position past ``changes`` (in id order); return them, each carrying the
        cursor just after it, so a client that stops anywhere in the batch resumes exactly."""
        fills = sorted(c.id for c in changes if c.id <= self.position)
        gaps: list[Gap] = []
        for gap in self.gaps:
            if not gap.settled:
                gaps.append(gap)
            else:
                # Settled at the last check: the ids this later read did not bring never will.
                gaps += [Gap(i, i) for i in fills if gap.lo <= i <= gap.hi]
        self.gaps = sorted(gaps, key=lambda g: g.lo)
        out = []
        expected = self.position + 1
        for change in changes:
            if change.id <= self.position:
                self._fill(change.id)
            else:
                if change.id > expected:
                    self.gaps.append(Gap(expected, change.id - 1))
                    self.gaps_opened += 1
                expected = change.id + 1
                self.position = change.id
            out.append(replace(change, position=self.cursor().encode()))
        return out

    def cursor(self) -> Cursor:
        return Cursor(self.position, tuple((g.lo, g.hi) for g in self.gaps))

    def _fill(self, change_id: int) -> None:
        for i, gap in enumerate(self.gaps):
            if gap.lo <= change_id <= gap.hi:
                parts = []
                if gap.lo < change_id:
                    parts.append(Gap(gap.lo, change_id - 1, gap.watch, gap.settled))
                if change_id < gap.hi:
                    parts.append(Gap(change_id + 1, gap.hi, gap.watch, gap.settled))
                self.gaps[i : i + 1] = parts
                return

    async def _check_gaps(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if any(g.watch is None for g in self.gaps):
            # New gaps: their ids may be held by any transaction running now.
            watch = await watch_running(conn)
            for gap in self.gaps:
                if gap.watch is None:
                    gap.watch = watch
            return
        now = await running(conn)
        for gap in self.gaps:
            assert gap.watch is not None
            if gap.watch.finished(now):
                gap.settled = True

    async def behind(self, conn: psycopg.AsyncConnection[Any]) -> tuple[int, float]:
        """(how many ids are in the log past the position, age in seconds of the oldest one)."""
        cur = await conn.execute(
            "SELECT coalesce((SELECT max(id) FROM pgbinding_change), 0),"
            " coalesce(extract(epoch FROM now() - (SELECT created_at FROM pgbinding_change"
            "  WHERE id > %s ORDER BY id LIMIT 1)), 0)::float8",
            [self.position],
        )
        row = await cur.fetchone()
        assert row is not None
        return max(0, int(row[0]) - self.position), float(row[1])


async def prune(conn: psycopg.AsyncConnection[Any], retention: float, batch: int = 5000) -> int:
    """Delete log entries older than ``retention`` seconds that every listener has passed.

    Deletes in small batches (each its own statement in autocommit) so writers, which only
    insert, are never blocked and no long transaction holds back vacuum.
    """
    total = 0
    while True:
        cur = await conn.execute(
            """
            WITH gone AS (
                DELETE FROM pgbinding_change WHERE id IN (
                    SELECT id FROM pgbinding_change
                    WHERE id <= (SELECT coalesce(min(position), 0) FROM pgbinding_listener)
                      AND created_at < now() - make_interval(secs => %s)
                    ORDER BY id LIMIT %s)
                RETURNING id)
            UPDATE pgbinding_state
               SET pruned_through = greatest(pruned_through, (SELECT max(id) FROM gone))
             WHERE EXISTS (SELECT FROM gone)
            RETURNING (SELECT count(*) FROM gone)
            """,
            [retention, batch],
        )
        row = await cur.fetchone()
        removed = int(row[0]) if row else 0
        total += removed
        if removed < batch:
            return total
