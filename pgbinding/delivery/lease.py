"""Leadership of a listener name: a lease in ``pgbinding_listener`` (schema v2).

One listener per name leads; the others stand by. The leader renews its lease while it makes
progress (every position save renews it too). A standby takes the lead when the lease has run
out (the leader stalled: stopped, swapped out, stuck on a channel layer that does not answer),
or at once when the leader's Postgres backend is gone (it crashed). The leader checks its lease
before it sends (:meth:`Lease.keep`), and its position saves are fenced on its id
(:meth:`ChangeLog.save <pgbinding.delivery.changelog.ChangeLog.save>`), so one that wakes up
after losing the lead notices before it sends again.

Tools can hold a name's lease themselves (:func:`hold`, :func:`release`) to keep its listeners
standing by, e.g. to let a backlog build up.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from .changelog import LostLead

#: Renew the lease when this share of it has gone by since the last renewal.
RENEW_AFTER = 0.3

_ENSURE = "INSERT INTO pgbinding_listener (name) VALUES (%s) ON CONFLICT (name) DO NOTHING"
_CLAIM = """
UPDATE pgbinding_listener AS l
   SET leader = %(me)s, leader_pid = pg_backend_pid(), updated_at = now(),
       lease_until = now() + make_interval(secs => %(lease)s)
 WHERE name = %(name)s
   AND (leader IS NULL OR leader = %(me)s OR lease_until IS NULL OR lease_until < now()
        OR NOT EXISTS (SELECT FROM pg_stat_activity a WHERE a.pid = l.leader_pid))
RETURNING position, pending
"""
_RENEW = """
UPDATE pgbinding_listener
   SET lease_until = now() + make_interval(secs => %(lease)s), leader_pid = pg_backend_pid()
 WHERE name = %(name)s AND leader = %(me)s
"""
_RELEASE = """
UPDATE pgbinding_listener SET leader = NULL, lease_until = NULL
 WHERE name = %(name)s AND leader = %(me)s
"""
_HOLDER = "SELECT leader_pid FROM pgbinding_listener WHERE name = %s AND lease_until > now()"


class Lease:
    """One listener's claim on its name. ``renewed_at`` is when (monotonic) the lease was last
    known to be renewed; the claim holds ``seconds`` from then."""

    def __init__(self, name: str, holder: str, seconds: float) -> None:
        self.name = name
        self.holder = holder
        self.seconds = seconds
        self.renewed_at = 0.0

    async def claim(self, conn: psycopg.AsyncConnection[Any]) -> tuple[int, list[Any]] | None:
        """Take the lead if it is free; (saved position, pending gaps), or None."""
        started = time.monotonic()
        await conn.execute(_ENSURE, [self.name])
        cur = await conn.execute(_CLAIM, self._params())
        row = await cur.fetchone()
        if row is None:
            return None
        self.renewed_at = started
        return int(row[0]), list(row[1])

    async def renew(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Extend the lease; raises :class:`LostLead` if another listener leads now."""
        started = time.monotonic()
        cur = await conn.execute(_RENEW, self._params())
        if cur.rowcount == 0:
            raise LostLead(self.name)
        self.renewed_at = started

    async def keep(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Renew the lease if it is getting old (before a send, while idle)."""
        if time.monotonic() - self.renewed_at >= self.seconds * RENEW_AFTER:
            await self.renew(conn)

    def renewed(self, at: float) -> None:
        """The lease was renewed at ``at`` (monotonic) by a position save."""
        self.renewed_at = at

    async def release(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Give up the lead (a clean stop), so a standby takes over at once."""
        await conn.execute(_RELEASE, self._params())

    async def holder_pid(self, conn: psycopg.AsyncConnection[Any]) -> int | None:
        """The Postgres backend of the listener leading now."""
        cur = await conn.execute(_HOLDER, [self.name])
        row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def _params(self) -> dict[str, Any]:
        return {"me": self.holder, "name": self.name, "lease": self.seconds}


def hold(conn: psycopg.Connection[Any], name: str, holder: str, seconds: float) -> bool:
    """Take (or keep) the lead of ``name`` for ``seconds`` from a tool's own connection: its
    listeners stand by until :func:`release`. False if a listener leads it now."""
    conn.execute(_ENSURE, [name])
    cur = conn.execute(_CLAIM, {"me": holder, "name": name, "lease": seconds})
    return cur.fetchone() is not None


def release(conn: psycopg.Connection[Any], name: str, holder: str) -> None:
    """Give up a lead taken with :func:`hold`: a standing-by listener takes it."""
    conn.execute(_RELEASE, {"me": holder, "name": name})


def leader_pid(conn: psycopg.Connection[Any], name: str) -> int | None:
    """The Postgres backend of whoever leads ``name`` now (a listener or a tool), if anyone."""
    row = conn.execute(_HOLDER, [name]).fetchone()
    return int(row[0]) if row and row[0] is not None else None
