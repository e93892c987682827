"""Reading the change log in commit-safe order, and remembering where the listener got to.

Log ids come from a sequence, so they are taken before commit: a reader can see id 11 while id
10's transaction is still running, and advancing past 10 would lose it. The reader therefore
tracks *gaps*: ranges of ids below its position that it has not seen. A gap is re-read until it
fills, or until every transaction that could hold one of its ids has ended and one more read has
not found it (the writer rolled back, or the sequence skipped).

Which transactions could hold a gap's ids? Only those writing to ``pgbinding_change``: an
INSERT takes a ``RowExclusiveLock`` on the table before it draws an id and keeps it until the
transaction ends. So a gap waits for the lock holders of the moment it was noticed (a
:class:`Watch`), and a long transaction that never wrote to a bound table (a report, a session
idle in transaction) holds nothing back. Gaps do not hold back later changes either: a
transaction that is still running cannot have touched a row that a later, committed transaction
changed (it would still hold that row's lock), so per-row order is commit order either way.

The position and the open gaps are saved in ``pgbinding_listener`` (at most every
``SAVE_INTERVAL`` while changes flow, and whenever the listener goes idle or stops), so a
restarted listener resumes where the last one stopped. Saves are fenced on the leader's id: a
listener that lost the lead cannot overwrite its successor's position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads

from ..positions import Cursor


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log: a row change in ``table`` at log position ``id``."""

    id: int
    table: str
    op: str  # "I" insert, "U" update, "D" delete, "T" truncate
    pk: str | None
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    #: The resume token of the reader's cursor just after this change (see :class:`Cursor`).
    position: str = ""


_READ = """
SELECT id, table_name, op, pk, old, new FROM pgbinding_change
WHERE id > %(position)s ORDER BY id LIMIT %(limit)s
"""
_READ_WITH_GAPS = """
(SELECT c.id, c.table_name, c.op, c.pk, c.old, c.new
   FROM unnest(%(los)s::bigint[], %(his)s::bigint[]) AS g(lo, hi)
   JOIN pgbinding_change c ON c.id BETWEEN g.lo AND g.hi)
UNION ALL
(SELECT id, table_name, op, pk, old, new FROM pgbinding_change
  WHERE id > %(position)s ORDER BY id LIMIT %(limit)s)
ORDER BY id
"""
#: The transactions that may still add rows to the change log: every holder of the lock an
#: INSERT takes (pg_locks also lists fast-path locks and prepared transactions).
_WRITERS = """
SELECT virtualtransaction FROM pg_locks
WHERE locktype = 'relation' AND relation = 'pgbinding_change'::regclass
  AND mode = 'RowExclusiveLock' AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


#: One decoder for every row: ``json.loads(s, parse_float=...)`` builds a new JSONDecoder per
#: call, which was a fifth of the listener's JSON time under load (py-spy, docs/benchmarks.md).
_DECODER = json.JSONDecoder(parse_float=Decimal)


def loads(data: str | bytes) -> Any:
    """Parse logged JSON keeping every digit of decimal numbers (as :class:`Decimal`)."""
    # Like json.loads, which reads bytes as UTF-8 (what Postgres sends jsonb as, to psycopg).
    return _DECODER.decode(data.decode() if isinstance(data, bytes) else data)


def configure_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Load jsonb numbers as Decimal so decimal columns keep every digit."""
    set_json_loads(loads, conn)


@dataclass(frozen=True, slots=True)
class Watch:
    """The transactions that were writing to the change log at some moment (their virtual
    transaction ids, from ``pg_locks``), so we can tell when all of them have ended."""

    holders: frozenset[str]

    def finished(self, writing_now: frozenset[str]) -> bool:
        """Have all watched transactions ended, given the ones ``writing_now``?"""
        return self.holders.isdisjoint(writing_now)


async def writers(conn: psycopg.AsyncConnection[Any]) -> frozenset[str]:
    """The transactions writing to the change log now (see :class:`Watch`)."""
    cur = await conn.execute(_WRITERS)
    return frozenset(str(row[0]) for row in await cur.fetchall())


async def watch_writers(conn: psycopg.AsyncConnection[Any]) -> Watch:
    """A :class:`Watch` on every transaction writing to the change log now."""
    return Watch(await writers(conn))


@dataclass(slots=True)
class Gap:
    """Ids ``lo``..``hi`` (inclusive) not seen yet, below the reader's position."""

    lo: int
    hi: int
    #: The log's writers when the gap was noticed (None: not looked yet); any of them may hold
    #: an id of the gap.
    watch: Watch | None = None
    #: Every watched transaction had ended at the last check: drop the gap after the next read.
    settled: bool = False


def _changes(rows: list[tuple[Any, ...]]) -> list[Change]:
    """Log rows (id, table_name, op, pk, old, new) as changes."""
    return [Change(int(r[0]), r[1], str(r[2]), r[3], r[4], r[5]) for r in rows]


class LostLead(Exception):
    """This listener is no longer the leader of its name: another one took over."""


class ChangeLog:
    """The listener's cursor over ``pgbinding_change``."""

    def __init__(self, name: str, batch_size: int = 500) -> None:
        self.name = name
        self.batch_size = batch_size
        self.position = 0
        self.gaps: list[Gap] = []
        #: How many gaps this reader has seen open (for logs, tests and benchmarks).
        self.gaps_opened = 0
        #: The leader id position saves are fenced on (None: unfenced, for tools and tests).
        self.leader: str | None = None

    def restore(self, position: int, pending: list[list[int]]) -> None:
        """Start from a saved position and its open gaps."""
        self.position = int(position)
        self.gaps = [Gap(int(lo), int(hi)) for lo, hi in pending]

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
        self.restore(row[0], row[1])

    async def save(
        self, conn: psycopg.AsyncConnection[Any], cursor: Cursor | None = None, lease: float = 0
    ) -> None:
        """Store ``cursor`` (default: this reader's) as the position and its open gaps, and
        renew the lead for ``lease`` seconds; raises :class:`LostLead` if another listener
        leads this name now."""
        cursor = cursor if cursor is not None else self.cursor()
        pending = json.dumps([[lo, hi] for lo, hi in cursor.gaps])
        cur = await conn.execute(
            "UPDATE pgbinding_listener SET position = %(position)s, pending = %(pending)s::jsonb,"
            " updated_at = now(),"
            " lease_until = CASE WHEN %(lease)s::float8 > 0"
            "   THEN now() + make_interval(secs => %(lease)s::float8) ELSE lease_until END"
            " WHERE name = %(name)s AND leader IS NOT DISTINCT FROM coalesce(%(me)s, leader)",
            {
                "position": cursor.position,
                "pending": pending,
                "lease": lease,
                "name": self.name,
                "me": self.leader,
            },
        )
        if cur.rowcount == 0:
            raise LostLead(self.name)

    async def read(self, conn: psycopg.AsyncConnection[Any]) -> list[Change]:
        """The next changes in order: gap fills first (they have lower ids), then new ones."""
        params: dict[str, Any] = {"position": self.position, "limit": self.batch_size}
        if self.gaps:
            params["los"] = [g.lo for g in self.gaps]
            params["his"] = [g.hi for g in self.gaps]
            cur = await conn.execute(_READ_WITH_GAPS, params)
        else:
            cur = await conn.execute(_READ, params)
        return self._take(await cur.fetchall())

    def follow(self, rows: list[tuple[Any, ...]]) -> list[Change] | None:
        """``rows`` as :meth:`read` would return them, when they are exactly what it would
        read next (the log rows a writer just wrote and committed, in id order: (id,
        table_name, op, pk, old, new)): the ids right after the position, no gap open, at
        most a batch. None otherwise: then read."""
        if not rows or self.gaps or len(rows) > self.batch_size:
            return None
        first = int(rows[0][0])
        if first != self.position + 1 or int(rows[-1][0]) != first + len(rows) - 1:
            return None
        return self._take(rows)

    def _take(self, rows: list[tuple[Any, ...]]) -> list[Change]:
        """Log rows read or followed (in id order) as changes, the position moved past them.
        Commonly the ids run on from the position with no gap open: then each change's
        cursor is its own id, and nothing else needs a look."""
        if (
            rows
            and not self.gaps
            and int(rows[0][0]) == self.position + 1
            and int(rows[-1][0]) == self.position + len(rows)  # (ids are unique, ascending)
        ):
            out = [
                Change(int(r[0]), r[1], str(r[2]), r[3], r[4], r[5], str(int(r[0]))) for r in rows
            ]
            self.position = out[-1].id
            return out
        return self._advance(_changes(rows))

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

    async def check_gaps(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Settle the gaps whose writers have all ended, and watch the new ones.

        Every gap is looked at, old and new alike: a burst of new gaps during a catch-up must
        not keep old ones from settling.
        """
        if not self.gaps:
            return
        now = await writers(conn)
        watch = Watch(now)
        for gap in self.gaps:
            if gap.watch is None:
                # Taken after the read that revealed the gap: a writer that held one of its
                # ids and has ended since either committed (the next read finds the id) or
                # rolled back (the id never comes).
                gap.watch = watch
            elif gap.watch.finished(now):
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


async def prune(
    conn: psycopg.AsyncConnection[Any],
    retention: float,
    stale_after: float = float("inf"),
    batch: int = 5000,
) -> int:
    """Delete log entries older than ``retention`` seconds that every listener has passed.

    A listener name whose last leader was last seen more than ``stale_after`` seconds ago is
    stale: pruning no longer waits for it (see :func:`stale_listeners`). Deletes in small
    batches (each its own statement in autocommit) so writers, which only insert, are never
    blocked and no long transaction holds back vacuum.
    """
    total = 0
    stale = None if stale_after == float("inf") else stale_after
    while True:
        cur = await conn.execute(
            """
            WITH gone AS (
                DELETE FROM pgbinding_change WHERE id IN (
                    SELECT id FROM pgbinding_change
                    WHERE id <= (SELECT coalesce(min(position), 0) FROM pgbinding_listener
                                  WHERE %(stale)s::float8 IS NULL
                                     OR coalesce(lease_until, updated_at)
                                        >= now() - make_interval(secs => %(stale)s::float8))
                      AND created_at < now() - make_interval(secs => %(retention)s)
                    ORDER BY id LIMIT %(batch)s)
                RETURNING id)
            UPDATE pgbinding_state
               SET pruned_through = greatest(pruned_through, (SELECT max(id) FROM gone))
             WHERE EXISTS (SELECT FROM gone)
            RETURNING (SELECT count(*) FROM gone)
            """,
            {"stale": stale, "retention": retention, "batch": batch},
        )
        row = await cur.fetchone()
        removed = int(row[0]) if row else 0
        total += removed
        if removed < batch:
            return total


async def stale_listeners(
    conn: psycopg.AsyncConnection[Any], stale_after: float
) -> list[tuple[str, int, float]]:
    """(name, position, seconds since its last leader was seen) of every stale listener name:
    none of its listeners has held the lead for more than ``stale_after`` seconds."""
    cur = await conn.execute(
        "SELECT name, position,"
        " extract(epoch FROM now() - coalesce(lease_until, updated_at))::float8"
        " FROM pgbinding_listener"
        " WHERE coalesce(lease_until, updated_at) < now() - make_interval(secs => %s)"
        " ORDER BY name",
        [stale_after],
    )
    return [(str(r[0]), int(r[1]), float(r[2])) for r in await cur.fetchall()]
