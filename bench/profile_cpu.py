"""CPU cost of pgbinding's per-change Python work, deterministically: function calls and
CPU seconds of a replay, the listener's build and a consumer's judging, for the same logged
changes, all in one thread so cProfile sees everything. Not a benchmark of the whole path (no
daphne, no channel layer, no sockets): a harness for before/after comparisons of the code.

    .venv/bin/python -m pytest -p no:cacheprovider -q -s bench/profile_cpu.py

It uses the test suite's settings, test app and private Postgres (``tests.servers``). Setup:
PROF_ROWS (500) rows each of ``testapp_item`` (12 columns: text, integer, decimal, timestamptz,
date, uuid, jsonb...) and ``testapp_counter`` (3 columns), then PROF_STMTS (10) UPDATEs of every
row of each (5,000 logged changes per table; on items, half change ``value`` and half
``due``). Measured, each PROF_RUNS (5) times without the profiler (CPU seconds of the
process: median and min) and once under cProfile (function calls; ``.pstats`` files in
PROF_OUT, default ``bench/out/profile_cpu``):

- ``replay_*``: a ``subscribe`` with ``since`` before the changes, through the consumer's
  ``handle_frame`` (snapshot, replay, every frame encoded and handed to an ASGI ``send`` that
  keeps nothing, as daphne's inline path does), for a staff user on ``items`` (ItemBinding), on
  ``counters`` (CounterBinding), and for alice on ``myitems`` (``Owner("owner")`` and an object
  permission);
- ``build_*``: ``Dispatcher.build`` and ``coalesce`` over the 5,000 item changes in batches of
  100, for every binding of the items table, and for ``OwnedItemBinding`` alone;
- ``live_changes_alice``: the change messages for alice's delivery key judged by her
  subscription's consumer (``pgbinding_changes``) and sent.

The machine's load moves CPU seconds by up to a third between runs of the same code; the call
counts do not move.
"""

from __future__ import annotations

import asyncio
import cProfile
import datetime
import decimal
import gc
import io
import os
import pstats
import statistics
import time
from typing import Any

import psycopg
import pytest
from channels.layers import InMemoryChannelLayer
from django.contrib.auth.models import User
from django.db import connection

from pgbinding.delivery import dispatch
from pgbinding.delivery.changelog import Change, configure_connection
from pgbinding.delivery.listener import conninfo_from_django
from pgbinding.positions import Cursor
from pgbinding.websocket import consumer, subscribing
from pgbinding.websocket.consumer import Demultiplexer
from pgbinding.websocket.events import RepeatFilter
from pgbinding.websocket.outbound import OutboundQueue
from tests.testapp.bindings import CounterBinding, ItemBinding, OwnedItemBinding
from tests.testapp.models import Counter, Item

pytestmark = pytest.mark.django_db(transaction=True)

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
RUNS = int(os.environ.get("PROF_RUNS", "5"))
OUT = os.environ.get("PROF_OUT", "bench/out/profile_cpu")
ROWS = int(os.environ.get("PROF_ROWS", "500"))
STMTS = int(os.environ.get("PROF_STMTS", "10"))


def _setup() -> tuple[User, User, int, int]:
    staff = User.objects.create(username="staff", is_staff=True)
    alice = User.objects.create(username="alice")
    bob = User.objects.create(username="bob")
    base = datetime.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
    Item.objects.bulk_create(
        Item(
            name=f"item {i}",
            value=i,
            status="open" if i % 3 else "done",
            owner=alice if i % 2 else bob,
            price=decimal.Decimal("12.3456") + i,
            due=base + datetime.timedelta(seconds=i),
            day=datetime.date(2024, 5, 1 + i % 28),
            extra={"n": i, "tags": ["a", "b"], "ratio": 0.5},
            body="lorem ipsum " * 8,
        )
        for i in range(ROWS)
    )
    with connection.cursor() as cur:
        cur.execute("SELECT coalesce(max(id), 0) FROM pgbinding_change")
        start = int(cur.fetchone()[0])
        Counter.objects.bulk_create(Counter(key=f"k{i}", n=i) for i in range(ROWS))
        cur.execute("SELECT coalesce(max(id), 0) FROM pgbinding_change")
        cstart = int(cur.fetchone()[0])
        for _ in range(STMTS):
            cur.execute("UPDATE testapp_counter SET n = n + 1")
        cur.execute("SELECT coalesce(max(id), 0) FROM pgbinding_change")
        start = int(cur.fetchone()[0])
        for s in range(STMTS):
            if s % 2:
                cur.execute("UPDATE testapp_item SET due = due + interval '1.5 seconds'")
            else:
                cur.execute("UPDATE testapp_item SET value = value + 1")
    return staff, alice, start, cstart


def _changes(start: int) -> list[Change]:
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        configure_connection(conn)  # type: ignore[arg-type]
        rows = conn.execute(
            "SELECT id, table_name, op, pk, old, new FROM pgbinding_change WHERE id > %s"
            " ORDER BY id",
            [start],
        ).fetchall()
    return [
        Change(int(r[0]), r[1], r[2], r[3], r[4], r[5], Cursor(int(r[0])).encode()) for r in rows
    ]


class _Watch:
    def detach(self) -> None:
        pass


async def _consumer(user: User, stream_cls: Any, layer: Any) -> Demultiplexer:
    """A consumer set up as connect() does, with a daphne-like outbound queue (inline send)."""
    c = Demultiplexer()
    c.scope = {"user": user, "type": "websocket"}
    c.channel_layer = layer
    c.channel_name = await layer.new_channel()
    c.user = user
    c.bindings = {stream_cls.stream: stream_cls(user=user, scope=c.scope)}
    c.subscriptions = {}
    c.joined = set()
    c.repeats = RepeatFilter()
    c._closing = False
    c.readable = {stream_cls.stream: True}
    sent: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(len(message.get("text", "")))

    c._sent = sent  # type: ignore[attr-defined]
    c._send = send  # type: ignore[attr-defined]
    c.base_send = send
    return c


def _start_outbound(c: Any) -> None:
    """From the task that does the work (the queue stops when its starting task ends)."""
    c.outbound = OutboundQueue(c._send, 1 << 40)
    c.outbound.start()
    c.outbound._watch = _Watch()  # as under daphne: inline sends


def _sync_in_thread(func: Any) -> Any:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return call


def _measure(name: str, make: Any, work: Any, calls: dict[str, Any]) -> None:
    """``make()`` prepares (not measured), ``work(state)`` runs; CPU time without the profiler
    (median of RUNS) and function calls with it (one run)."""
    cpu = []
    for _ in range(RUNS):
        state = make()
        gc.collect()
        t0 = time.process_time()
        result = work(state)
        cpu.append(time.process_time() - t0)
    state = make()
    prof = cProfile.Profile()
    prof.enable()
    work(state)
    prof.disable()
    os.makedirs(OUT, exist_ok=True)
    prof.dump_stats(f"{OUT}/{name}.pstats")
    stats = pstats.Stats(prof, stream=io.StringIO())
    calls[name] = (statistics.median(cpu), sorted(cpu), stats.total_calls, result)


def test_profile_cpu(settings: Any, monkeypatch: Any) -> None:
    settings.PGBINDING = {**settings.PGBINDING, "MAX_REPLAY": 100_000}
    monkeypatch.setattr(subscribing, "in_thread", _sync_in_thread)
    monkeypatch.setattr(consumer, "in_thread", _sync_in_thread)
    staff, alice, start, cstart = _setup()
    changes = _changes(start)
    n = len(changes)
    assert n == ROWS * STMTS
    since = Cursor(start).encode()
    results: dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    layer = InMemoryChannelLayer()

    def replay(user: User, binding: Any) -> Any:
        def make() -> Any:
            return loop.run_until_complete(_consumer(user, binding, layer))

        def work(c: Any) -> Any:
            frame = {
                "stream": binding.stream,
                "payload": {"action": "subscribe", "request_id": "r", "since": since},
            }

            async def go() -> None:
                _start_outbound(c)
                await c.handle_frame(frame)
                await c.outbound.close()

            loop.run_until_complete(go())
            return (len(c._sent), sum(c._sent))

        return make, work

    _measure("replay_items_staff", *replay(staff, ItemBinding), results)
    since = Cursor(cstart).encode()
    _measure("replay_counters", *replay(staff, CounterBinding), results)
    since = Cursor(start).encode()
    _measure("replay_myitems_alice", *replay(alice, OwnedItemBinding), results)

    # The listener's build: every binding of the items table, then coalesce.
    def make_build() -> Any:
        return dispatch.Dispatcher(layer)

    def work_build(d: Any) -> Any:
        out = []
        for i in range(0, n, 100):
            out += dispatch.coalesce(d.build(changes[i : i + 100]))
        return len(out)

    _measure("build_all_item_bindings", make_build, work_build, results)

    def make_build_owned() -> Any:
        from pgbinding.registry import Registry

        reg = Registry()
        reg.register(OwnedItemBinding)
        d = dispatch.Dispatcher(layer, reg)
        return d

    _measure("build_owned_only", make_build_owned, work_build, results)

    # The consumer's side of the fan-out: alice's subscription to myitems receives the changes
    # of her key group, 100 per message, and judges each.
    d = make_build_owned()
    group = OwnedItemBinding.change_group(f"owner.{alice.pk}")
    msgs = [m for g, m in dispatch.coalesce(d.build(changes)) if g == group]
    assert msgs

    def make_live() -> Any:
        c = loop.run_until_complete(_consumer(alice, OwnedItemBinding, layer))
        c.outbound = None
        loop.run_until_complete(
            c.handle_frame(
                {"stream": "myitems", "payload": {"action": "subscribe", "request_id": "s"}}
            )
        )
        c.subscriptions["s"].cursor = Cursor(start)
        c._sent.clear()
        return c

    def work_live(c: Any) -> Any:
        async def go() -> None:
            _start_outbound(c)
            for m in msgs:
                await c.dispatch(m)
            await c.outbound.close()

        loop.run_until_complete(go())
        return (len(c._sent), sum(c._sent))

    _measure("live_changes_alice", make_live, work_live, results)

    print()
    print(f"changes: {n}")
    for name, (med, cpus, ncalls, result) in results.items():
        print(
            f"{name:28s} cpu median {med * 1000:8.1f} ms  runs {[round(x * 1000) for x in cpus]}"
            f" min {min(cpus) * 1000:7.1f}  calls {ncalls:9d}  result {result}"
        )
    loop.close()
