"""Live subscriptions: the snapshot a subscription starts from, the replay of what a resuming
client missed, and the judgment of each change for one subscriber.

A subscription shows the rows of one binding that match its filter (or its one ``pk``) and that
its user may see. Every change is judged on the logged old and new row (never on the database
as it is now): visible before and after is an ``update``, only before a ``delete``, only after
a ``create``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import pickle
from dataclasses import dataclass, field
from typing import Any

from django.db import OperationalError, connections, transaction

from .. import filters, metrics, processes, rows
from ..bindings import Binding, row_python
from ..conf import pgbinding_settings
from ..delivery import messages
from ..delivery.changelog import Change, loads
from ..exceptions import RequestError
from ..positions import Cursor
from . import frames

logger = logging.getLogger("pgbinding.subscriptions")

#: Most log ids above the listeners' saved position that a snapshot looks at to say which it
#: already reflects; a later id is sent live even if the snapshot showed it (a harmless repeat).
SNAPSHOT_SCAN = 100_000


@dataclass
class Subscription:
    id: str
    stream: str
    binding: Binding
    where: list[filters.Condition]
    pk: Any
    cursor: Cursor
    #: ``pk`` as events carry it (serialized), for one-row subscriptions.
    pk_json: Any = None
    #: pks of the rows the client holds (None after a resume: not known, so judged by filter).
    members: set[Any] | None = field(default_factory=set)


@dataclass
class Snapshot:
    """What a subscription starts from: the rows, and the log ids they already reflect."""

    rows: list[dict[str, Any]]
    cursor: Cursor
    #: The events replaying what a resuming client missed, each encoded as JSON (None: not
    #: resuming, or resync).
    replay: list[str] | None = None
    resync: bool = False
    #: pks of the rows in the subscription's view in this snapshot (after a replay: the rows
    #: the client holds once it has applied it).
    members: set[Any] = field(default_factory=set)


def row_reply(binding: Binding, instance: Any) -> dict[str, Any]:
    return {"pk": binding.serialize_pk(instance), "data": binding.serialize(instance)}


# -- judging one change for one subscription -----------------------------------------------------


def evaluate(sub: Subscription, message: dict[str, Any]) -> list[dict[str, Any]]:
    """What subscription ``sub`` should see of one raw change message (see
    :meth:`Binding.build`): create when a row enters its view, update while it stays, delete
    when it leaves."""
    binding = sub.binding
    model, position = binding.model_label(), message["position"]
    if message["op"] == "T":
        if sub.members is not None:
            sub.members.clear()
        return [
            {
                "action": "reload",
                "reason": "truncate",
                "model": model,
                "position": position,
                "subscription": sub.id,
            }
        ]
    old, new = message.get("old"), message.get("new")
    old_pk = old["pk"] if old is not None else None
    new_pk = new["pk"] if new is not None else None
    old_in = old is not None and _was_in(sub, old)
    new_in = new is not None and _in_view(sub, new) and binding.sees(new)
    out: list[dict[str, Any]] = []
    if old is not None and old_in and new is not None and new_in:
        if old_pk != new_pk:
            out += [
                _event("delete", old_pk, None, model, position, sub.id),
                _event("create", new_pk, new["data"], model, position, sub.id),
            ]
        elif old["data"] != new["data"]:
            out.append(_event("update", new_pk, new["data"], model, position, sub.id))
    elif old is not None and old_in:
        known = sub.members is not None
        out.append(
            _event("delete", old_pk, old["data"] if known else None, model, position, sub.id)
        )
    elif new is not None and new_in:
        out.append(_event("create", new_pk, new["data"], model, position, sub.id))
    if sub.members is not None:
        sub.members.discard(old_pk)
        if new_in:
            sub.members.add(new_pk)
    return out


def _event(
    action: str, pk: Any, data: Any, model: str, position: str, sub_id: str
) -> dict[str, Any]:
    event = {
        "action": action,
        "pk": pk,
        "model": model,
        "position": position,
        "subscription": sub_id,
    }
    if data is not None:
        event["data"] = data
    return event


def _in_view(sub: Subscription, row: dict[str, Any]) -> bool:
    if sub.pk is not None and row["pk"] != sub.pk_json:
        return False
    if not sub.where:
        return True
    return filters.matches(sub.where, row_python(type(sub.binding), row))


def _was_in(sub: Subscription, old: dict[str, Any]) -> bool:
    """Did the client hold this row before the change? Known exactly from the rows it was
    sent; after a resume (not known), judged by filter and visibility of the logged row."""
    if sub.members is not None:
        return old["pk"] in sub.members
    return _in_view(sub, old) and sub.binding.sees(old)


# -- snapshot and replay ------------------------------------------------------------------------


def _db() -> str:
    return pgbinding_settings.current.DATABASE


def snapshot_cursor(cursor: Any) -> Cursor:
    """The log ids visible in the current (repeatable-read) snapshot, as a Cursor.

    The most advanced listener's saved state says every id up to its position, except its
    gaps, was committed before it saved, so is visible here; above that, look at the ids
    themselves (at most :data:`SNAPSHOT_SCAN` of them).
    """
    cursor.execute(
        "SELECT position, pending FROM pgbinding_listener ORDER BY position DESC LIMIT 1"
    )
    row = cursor.fetchone()
    position, pending = (int(row[0]), _json(row[1])) if row else (0, [])
    gaps = [(int(lo), int(hi)) for lo, hi in pending]
    cursor.execute(
        "SELECT c.id FROM unnest(%s::bigint[], %s::bigint[]) AS g(lo, hi)"
        " JOIN pgbinding_change c ON c.id BETWEEN g.lo AND g.hi ORDER BY c.id",
        [[lo for lo, _ in gaps], [hi for _, hi in gaps]],
    )
    filled = [int(r[0]) for r in cursor.fetchall()]
    cursor.execute(
        """
        WITH ids AS (SELECT id FROM pgbinding_change WHERE id > %(p)s ORDER BY id LIMIT %(n)s),
             steps AS (SELECT lag(id, 1, %(p)s::bigint) OVER (ORDER BY id) AS prev, id FROM ids)
        SELECT coalesce((SELECT max(id) FROM ids), %(p)s::bigint),
               coalesce((SELECT array_agg(prev + 1 ORDER BY id) FROM steps
                          WHERE id > prev + 1), '{}'),
               coalesce((SELECT array_agg(id - 1 ORDER BY id) FROM steps
                          WHERE id > prev + 1), '{}')
        """,
        {"p": position, "n": SNAPSHOT_SCAN},
    )
    top, los, his = cursor.fetchone()
    out = _subtract(gaps, filled) + list(zip(los, his, strict=True))
    return Cursor(int(top), tuple(_merge(out)))


def _subtract(ranges: list[tuple[int, int]], ids: list[int]) -> list[tuple[int, int]]:
    """``ranges`` without the (sorted) ``ids``."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        start = lo
        for i in ids:
            if i < start or i > hi:
                continue
            if i > start:
                out.append((start, i - 1))
            start = i + 1
        if start <= hi:
            out.append((start, hi))
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def snapshot(sub: Subscription, since: Cursor | None) -> Snapshot:
    """Read the subscription's rows (or, resuming, the retained changes after ``since``, judged
    for it) and the cursor of the same database snapshot, so live events can skip what it
    already shows. Runs on the consumer's database threads (:mod:`pgbinding.threads`)."""
    db = _db()
    timeout_ms = max(1, int(pgbinding_settings.current.REPLAY_TIMEOUT * 1000))
    try:
        with transaction.atomic(using=db), connections[db].cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(timeout_ms)])
            state = snapshot_cursor(cursor)
            replay = None
            if since is not None:
                replay = _replay(sub, since, state, cursor)
            found = _view(sub)
            members = {row["pk"] for row in found}
            if replay is not None:
                return Snapshot([], state, replay, members=members)
            return Snapshot(found, state, resync=since is not None, members=members)
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "57014":  # query_canceled
            raise RequestError(
                503, "Reading the change log took too long; retry in a moment."
            ) from None
        raise


def _replay(sub: Subscription, since: Cursor, state: Cursor, cursor: Any) -> list[str] | None:
    """The events (encoded) a client resuming from ``since`` missed, or None (resync) when they are
    pruned, too many, or ``since`` is not a position of this log."""
    binding = type(sub.binding)
    if since.position > state.position:
        return None  # ahead of this log: from another database, or made up
    limit = pgbinding_settings.current.MAX_REPLAY
    table = binding.model._meta.db_table
    count, entries = read_log(cursor, since, table, limit + 1)
    cursor.execute("SELECT pruned_through FROM pgbinding_state")
    pruned = cursor.fetchone()
    if (pruned and pruned[0] > since.floor) or count > limit:
        return None
    rows.load_types_sync(cursor, [table])
    # While replaying, which rows the client holds is not known: an old row counts as held if
    # it matched the filter and the user could see it.
    sub.members = None
    token = since.encode()
    types = rows.known_types(table)
    if count >= pgbinding_settings.current.REPLAY_IN_PROCESS_FROM:
        built = processes.run(replay_events, _portable(sub), table, types, entries, token)
        if built is not None:
            metrics.replays_in_process.inc()
            return built
    return replay_events(sub, table, types, entries, token)


#: The changes to a table that a cursor does not cover, at most ``n``, in log order: JSON texts
#: ``[[id, op, old row, new row], ...]`` of up to ``chunk`` changes each, and how many each holds.
READ_LOG_SQL = """
SELECT json_agg(json_build_array(r.id, r.op, r.old, r.new) ORDER BY r.id)::text, count(*)
  FROM (SELECT q.*, (row_number() OVER (ORDER BY q.id) - 1) / %(chunk)s AS chunk
          FROM ((SELECT c.id, c.op, c.old, c.new
                   FROM unnest(%(los)s::bigint[], %(his)s::bigint[]) AS g(lo, hi)
                   JOIN pgbinding_change c ON c.id BETWEEN g.lo AND g.hi AND c.table_name = %(t)s)
                UNION ALL
                (SELECT id, op, old, new FROM pgbinding_change
                  WHERE id > %(p)s AND table_name = %(t)s ORDER BY id LIMIT %(n)s)
                ORDER BY 1 LIMIT %(n)s) AS q) AS r
 GROUP BY r.chunk
 ORDER BY r.chunk
"""
#: Changes per JSON text of :func:`read_log`: a text is one value, which Postgres caps at 1 GB.
READ_LOG_CHUNK = 100


def read_log(cursor: Any, since: Cursor, table: str, n: int) -> tuple[int, list[str]]:
    """The logged changes to ``table`` that ``since`` does not cover (its gaps, then after its
    position), at most ``n``: how many, and them as JSON texts of up to
    :data:`READ_LOG_CHUNK` ``[id, op, old, new]`` each, in log order (:data:`READ_LOG_SQL`),
    for :func:`replay_events`.

    Texts rather than a row per change: fetching them, and pickling them for a replay worker,
    holds the server process's GIL for a millisecond or two, where 10,000 rows of four values
    held it for 5-13 ms (bench/replay.py), each time stalling every other socket of the
    process. Postgres prints the jsonb either way; the worker parses it."""
    cursor.execute(
        READ_LOG_SQL,
        {
            "los": [lo for lo, _ in since.gaps],
            "his": [hi for _, hi in since.gaps],
            "p": since.position,
            "t": table,
            "n": n,
            "chunk": READ_LOG_CHUNK,
        },
    )
    chunks = cursor.fetchall()
    return sum(int(count) for _, count in chunks), [str(text) for text, _ in chunks]


def replay_events(
    sub: Subscription,
    table: str,
    types: dict[str, rows.ColumnType] | None,
    entries: list[str],
    token: str,
) -> list[str]:
    """The events of a replay, each encoded as JSON: the logged changes ``entries`` (JSON
    arrays of [id, op, old row, new row], from :func:`read_log`) judged for ``sub``. Pure
    computation on what it is given (the table's column types included), so it runs in a
    worker process as well as here (:mod:`pgbinding.processes`)."""
    if types is not None and rows.known_types(table) != types:
        rows.remember_column_types(table, types)
    binding = type(sub.binding)
    connection = rows.db_connection()
    encode = frames.encode
    out: list[str] = []
    for chunk in entries:
        for change_id, op, old, new in loads(chunk):
            change = Change(int(change_id), table, str(op), None, old, new, token)
            message = messages.change_message(binding, change, connection)
            if message is not None:
                out += map(encode, evaluate(sub, message))
    return out


def _portable(sub: Subscription) -> Subscription:
    """A copy of ``sub`` that can go to a worker process: its binding keeps the user and the
    scope entries that pickle (a session store or a lazy object of the server may not)."""
    binding = copy.copy(sub.binding)
    binding.scope = {key: value for key, value in binding.scope.items() if _pickles(value)}
    return dataclasses.replace(sub, binding=binding)


def _pickles(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _view(sub: Subscription) -> list[dict[str, Any]]:
    """The rows a subscription shows: its filter, the read rule and object permission."""
    binding = sub.binding
    qs = binding.readable_queryset(binding.user).filter(filters.to_q(sub.where))
    if sub.pk is not None:
        qs = qs.filter(pk=sub.pk)
    found = list(qs.order_by("pk")[: binding.max_subscription_rows + 1])
    if len(found) > binding.max_subscription_rows:
        raise RequestError(
            400,
            f"More than {binding.max_subscription_rows} rows match; subscribe with a "
            "narrower filter.",
        )
    return [
        row_reply(binding, r)
        for r in found
        if binding.has_object_permission(binding.user, "retrieve", r)
    ]


def _json(value: Any) -> Any:
    """Logged jsonb (as text, or already parsed), decimals keeping every digit."""
    if isinstance(value, str | bytes):
        return loads(value)
    return value
