"""The fault suite's machinery: writers that record what they commit, the production shape
(pglisten, daphne, channels_redis on a private Redis, WebSocket clients) and the checks that
compare what was committed with what each client received.

What every test judges, per row (a ``testapp_counter`` key):

* the **subscriber** (a socket on ``/all/`` subscribed to ``counters``; it reconnects when the
  server closes it and resumes with ``since`` = the last position it received, as pgbinding's
  JS client does) must see exactly the committed sequence of ``n``: nothing lost, nothing twice,
  in order. Events of a replay that was cut off before its reply are not counted: the client's
  position does not move during a replay, so the next subscribe replays them again (the
  protocol's "applying an event twice is harmless");
* the **group socket** (on ``/counters/``, group ``counters``; no resume exists for group
  events) must never see a change twice or out of order, and must not lose a change committed
  while it was connected: a commit made at time t is required if the socket was connected from
  before t until at least GRACE seconds after t (the server closing the socket is recorded, and
  the windows judged separately);
* no event may carry a change that was rolled back: rolled-back transactions add
  ROLLBACK_DELTA, so such an ``n`` can never match a committed one.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from random import Random
from typing import Any

import psycopg
import pytest
from django.db import connection

from pgbinding.delivery.listener import conninfo_from_django
from tests.conftest import subprocess_env
from tests.support.capture import capture_backend
from tests.support.processes import (
    Daphne,
    Pglisten,
    ProcessGroup,
    RedisServer,
    WsClient,
)

#: Rolled-back transactions add this instead of 1: an event carrying such an n is a rolled-back
#: change that was delivered.
ROLLBACK_DELTA = 1_000_000
#: A group socket must receive a commit made while it was connected unless it was closed within
#: this many seconds after the commit (the event may still have been on its way).
GRACE = 2.0
#: The bound every position must keep (docs/protocol.md, "position: the resume token").
POSITION_BOUND = 1024

UPDATE = "UPDATE testapp_counter SET n = n + %s WHERE key = %s RETURNING n"


def counter_keys(count: int, prefix: str = "k") -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(count)]


def insert_counters(keys: list[str]) -> None:
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        for key in keys:
            conn.execute("INSERT INTO testapp_counter (key, n) VALUES (%s, 0)", [key])


def table_counts(keys: list[str]) -> dict[str, int]:
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT key, n FROM testapp_counter WHERE key = ANY(%s)", [keys]
        ).fetchall()
    return {k: n for k, n in rows}


# --------------------------------------------------------------------------- writers


@dataclass(frozen=True)
class Commit:
    #: The counter's key (a str, as Writers record it), or a row's pk (int: test_decimal),
    #: whichever the verdict keys its events by.
    key: Any
    n: int
    #: When the commit returned (or, for an uncertain one, when the connection died).
    t: float
    #: The connection died during COMMIT; the table said it had committed.
    uncertain: bool = False


class Writers:
    """Threads of psycopg connections (not the ORM) running ``UPDATE testapp_counter SET n =
    n + 1 WHERE key = %s RETURNING n`` on keys of their own and recording every commit.

    Each thread owns a disjoint share of ``keys`` (so a commit whose outcome is unknown can be
    settled exactly: the thread reads the row back before it writes that key again). A share
    of transactions (``rollback_share``, or every other one with ``alternate`` until
    ``max_rollbacks``) adds ROLLBACK_DELTA and rolls back. Connection failures are survived:
    the thread reconnects and carries on.
    """

    def __init__(
        self,
        keys: list[str],
        *,
        threads: int = 2,
        rollback_share: float = 0.0,
        alternate: bool = False,
        max_rollbacks: int | None = None,
        pause: float = 0.004,
        synchronous_commit: bool = False,
        seed: int = 1,
    ) -> None:
        self.conninfo = conninfo_from_django()
        self.keys = keys
        self.rollback_share, self.alternate = rollback_share, alternate
        self.max_rollbacks, self.pause = max_rollbacks, pause
        self.synchronous_commit = synchronous_commit
        self.committed: dict[str, list[Commit]] = {k: [] for k in keys}
        self.rollbacks = 0
        #: Connection failures: (time, error).
        self.errors: list[tuple[float, str]] = []
        #: Commits whose outcome was unknown: (key, n, committed?).
        self.uncertain: list[tuple[str, int, bool]] = []
        #: Things that cannot happen if the harness is right (a row read back at neither value).
        self.anomalies: list[str] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._run, args=(keys[i::threads], Random(seed + i)), daemon=True
            )
            for i in range(threads)
        ]

    def start(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    close = stop

    @property
    def total(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.committed.values())

    def commits(self) -> dict[str, list[Commit]]:
        with self.lock:
            return {k: list(v) for k, v in self.committed.items()}

    def last(self) -> dict[str, int]:
        """The last committed n of each key (0: none)."""
        with self.lock:
            return {k: (v[-1].n if v else 0) for k, v in self.committed.items()}

    def first_commit_after(self, t: float, timeout: float = 10) -> Commit:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                after = [c for v in self.committed.values() for c in v if c.t > t]
            if after:
                return min(after, key=lambda c: c.t)
            time.sleep(0.01)
        raise AssertionError(f"no commit within {timeout} s after the fault")

    def add(self, commit: Commit) -> None:
        with self.lock:
            self.committed.setdefault(commit.key, []).append(commit)

    def _rollback_now(self, rng: Random, i: int) -> bool:
        if self.max_rollbacks is not None and self.rollbacks >= self.max_rollbacks:
            return False
        if self.alternate:
            return i % 2 == 1
        return rng.random() < self.rollback_share

    def _run(self, keys: list[str], rng: Random) -> None:
        conn: psycopg.Connection[Any] | None = None
        pending: tuple[str, int, float] | None = None  # a COMMIT whose outcome is unknown
        i = 0
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.conninfo, connect_timeout=3)
                    if self.synchronous_commit:
                        # The embedded server runs synchronous_commit=off: a commit it reported
                        # could vanish in an immediate shutdown. Ours must not.
                        conn.execute("SET synchronous_commit = on")
                        conn.commit()
                if pending is not None:
                    key, n, t = pending
                    row = conn.execute(
                        "SELECT n FROM testapp_counter WHERE key = %s", [key]
                    ).fetchone()
                    conn.rollback()
                    now = row[0] if row else None
                    if now == n:
                        self.add(Commit(key, n, t, uncertain=True))
                    elif now != n - 1:
                        self.anomalies.append(f"{key}: commit of n={n} unknown, table has {now}")
                    self.uncertain.append((key, n, now == n))
                    pending = None
                # Alternating: each key gets a rolled-back transaction, then a committed one.
                key = keys[(i // 2 if self.alternate else i) % len(keys)]
                rollback = self._rollback_now(rng, i)
                i += 1
                row = conn.execute(UPDATE, [ROLLBACK_DELTA if rollback else 1, key]).fetchone()
                assert row is not None
                n = int(row[0])
                if rollback:
                    conn.rollback()
                    with self.lock:
                        self.rollbacks += 1
                else:
                    pending = (key, n, time.monotonic())
                    conn.commit()
                    pending = None
                    self.add(Commit(key, n, time.monotonic()))
            except psycopg.Error as exc:
                self.errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"[:200]))
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg.Error:
                        pass
                conn = None
                self._stop.wait(0.1)
                continue
            if self.pause:
                self._stop.wait(self.pause)
        if conn is not None:
            conn.close()


# --------------------------------------------------------------------------- the stack


class Stack:
    """The production shape, started piece by piece: a private Redis (``self.redis``),
    ``manage.py pglisten`` processes, daphne servers and WebSocket clients, all closed (even
    paused or crashed ones) by ``close()``."""

    def __init__(self, tmp_path: Path, layer: str = "core", capture: str = "trigger") -> None:
        self.dir = tmp_path
        self.layer = layer
        #: The capture backend (tests/support/capture.py); every pglisten runs with it.
        self.capture = capture
        self._backend = capture_backend(capture, conninfo_from_django())
        self._backend.__enter__()
        self.group = ProcessGroup()
        self.redis = self.group.add(RedisServer(tmp_path))
        self.redis.start()
        self.env = subprocess_env(self.redis.url)
        if layer == "pubsub":
            self.env["PGBINDING_TEST_CHANNEL_LAYER_KIND"] = "pubsub"
        self.listeners: list[Pglisten] = []
        self.daphnes: list[Daphne] = []
        self.clients: list[WsClient] = []
        self.writers: list[Writers] = []
        self.listener_settings: dict[str, Any] | None = None
        #: Replacement pglisten processes the supervisor started: (time, name).
        self.restarts: list[tuple[float, str]] = []
        self._supervisor: threading.Thread | None = None
        self._closing = threading.Event()

    def pglisten(self, name: str, settings: dict[str, Any] | None = None) -> Pglisten:
        settings = {"CAPTURE": self.capture, **(settings or {})}
        proc = self.group.add(Pglisten(self.env, self.dir, name, settings))
        self.listeners.append(proc)
        return proc

    def supervise(self, delay: float = 1.0) -> None:
        """Do what systemd's ``Restart=always`` (``RestartSec=1``) would: whenever no pglisten
        is left running, start another after ``delay`` seconds. Every exit is still reported
        (``judge_counters``); this lets a test judge delivery past the first crash."""

        def run() -> None:
            while not self._closing.wait(0.2):
                if self.listeners and not any(p.running for p in self.listeners):
                    if self._closing.wait(delay):
                        return
                    name = f"pglisten-r{len(self.restarts) + 1}"
                    self.restarts.append((time.monotonic(), name))
                    self.pglisten(name, self.listener_settings)

        self._supervisor = threading.Thread(target=run, name="supervisor", daemon=True)
        self._supervisor.start()

    def stop_supervising(self) -> None:
        self._closing.set()
        if self._supervisor is not None:
            self._supervisor.join(10)

    def daphne(self, name: str) -> Daphne:
        proc = self.group.add(Daphne(self.env, self.dir, name))
        self.daphnes.append(proc)
        return proc

    def client(self, url: str, name: str, **options: Any) -> WsClient:
        client = self.group.add(WsClient(url, name, **options))
        self.clients.append(client)
        return client.start()

    def write(self, keys: list[str], **options: Any) -> Writers:
        writers = self.group.add(Writers(keys, **options))
        self.writers.append(writers)
        return writers.start()

    def counters(
        self,
        keys: list[str],
        *,
        listeners: int = 1,
        settings: dict[str, Any] | None = None,
    ) -> tuple[WsClient, WsClient]:
        """Insert ``keys``, start ``listeners`` pglisten processes (the first must catch up, the
        others stand by) and two daphnes, then connect the group socket (``/counters/`` on the
        first daphne) and the subscriber (``/all/`` on the second, subscribed to ``counters``).
        """
        insert_counters(keys)
        self.listener_settings = settings
        servers = [self.daphne("daphne-group"), self.daphne("daphne-sub")]
        first = self.pglisten("pglisten-1", settings)
        first.wait_output("Caught up", timeout=30)
        for n in range(2, listeners + 1):
            self.pglisten(f"pglisten-{n}", settings).wait_output("standing by", timeout=30)
        for server in servers:
            server.wait_ready()
        group = self.client(servers[0].url("/counters/"), "group")
        subscriber = self.client(servers[1].url("/all/"), "subscriber", subscribe="counters")
        group.wait_subscribed()
        subscriber.wait_subscribed()
        results = subscriber.connections[0].reply["data"]["results"]  # type: ignore[index]
        assert sorted(r["data"]["key"] for r in results) == sorted(keys), results
        return group, subscriber

    def close(self) -> None:
        self.stop_supervising()
        try:
            self.group.close()
        finally:
            self.dump()
            self._backend.__exit__(None, None, None)

    def dump(self) -> None:
        """Write what each client received (``<name>-frames.jsonl``: time, connection, frame)
        and its connections next to the process logs, for a post-mortem."""
        for client in self.clients:
            frames, conns = client.snapshot()
            with (self.dir / f"{client.name}-frames.jsonl").open("w") as out:
                for c in conns:
                    out.write(json.dumps({"connection": vars(c)}, default=str) + "\n")
                for f in frames:
                    out.write(json.dumps({"t": f.t, "conn": f.conn, "frame": f.data}) + "\n")


@pytest.fixture
def make_stack(tmp_path: Path, transactional_db: None) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(layer: str = "core", capture: str = "trigger") -> Stack:
        stack = Stack(tmp_path, layer, capture)
        made.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in made:
            stack.close()
        connection.close()  # a test may have restarted Postgres under it


# --------------------------------------------------------------------------- checks


def ranges(values: list[int] | set[int], most: int = 8) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"`` (at most ``most`` runs shown)."""
    runs: list[str] = []
    ordered = sorted(set(values))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        runs.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    more = f",... ({len(runs) - most} more runs)" if len(runs) > most else ""
    return ",".join(runs[:most]) + more


def _counter_key(payload: dict[str, Any]) -> Any:
    return (payload.get("data") or {}).get("key")


def _counter_n(payload: dict[str, Any]) -> Any:
    return (payload.get("data") or {}).get("n")


@dataclass
class Received:
    """What one client received of one stream, per row: [(n, receive time, connection)]."""

    name: str
    per_key: dict[Any, list[tuple[Any, float, int]]]
    events: int
    #: Events left out: from a replay cut off before its subscribe reply.
    discarded: int
    #: Problems seen besides the events (judged as problems by ``judge``).
    notes: list[str]
    #: Subscribes the server refused (a problem only when the socket then stayed open, which
    #: ``notes`` says).
    refused: list[str]


def received(
    client: WsClient,
    stream: str = "counters",
    key_of: Callable[[dict[str, Any]], Any] = _counter_key,
    n_of: Callable[[dict[str, Any]], Any] = _counter_n,
) -> Received:
    """The create/update events ``client`` got on ``stream``: subscription events (for a
    subscriber) or group events (otherwise)."""
    frames, conns = client.snapshot()
    per_key: dict[Any, list[tuple[Any, float, int]]] = {}
    notes: list[str] = []
    events = discarded = 0
    answered = {c.index for c in conns if c.subscribed is not None}
    refused: list[str] = []
    for c in conns:
        if c.reply is not None and c.reply.get("status") != 200:
            text = f"connection {c.index}: {c.reply.get('status')} {c.reply.get('errors')}"
            refused.append(text[:200])
            if c.closed is None or c.closed_by_test:
                # Like pgbinding's JS client, a refused subscribe is final on that socket; only
                # the server closing it makes the client reconnect and subscribe again.
                notes.append(
                    "left without a live subscription: the subscribe on connection "
                    f"{c.index} was refused and the server kept the socket open: "
                    f"{str(c.reply)[:300]}"
                )
        elif c.reply is not None and (c.reply.get("data") or {}).get("resync"):
            if c.since is not None:
                notes.append(f"resume on connection {c.index} answered resync: true")
    for frame in frames:
        payload = frame.payload
        if frame.data.get("stream") != stream or "position" not in payload:
            continue
        if client.subscribe_stream is not None:
            if payload.get("subscription") != client.request_id:
                continue
            if frame.conn not in answered:
                discarded += 1
                continue
        elif "subscription" in payload:
            continue
        action = payload.get("action")
        if action not in ("create", "update"):
            notes.append(f"unexpected {action!r} event: {str(payload)[:200]}")
            continue
        events += 1
        per_key.setdefault(key_of(payload), []).append((n_of(payload), frame.t, frame.conn))
    return Received(client.name, per_key, events, discarded, notes, refused)


def delivered_at(clients: list[WsClient], key: Any, n: Any) -> float | None:
    """The earliest time any of ``clients`` received the event for (key, n)."""
    times = [t for client in clients for m, t, _ in received(client).per_key.get(key, []) if m == n]
    return min(times) if times else None


def judge(
    got: Received,
    committed: dict[Any, list[Commit]],
    *,
    exact: bool,
    windows: list[tuple[float, float | None]] | None = None,
) -> list[str]:
    """Problems with what one client received. ``exact``: every committed n must be there
    (the subscriber). Otherwise only commits inside ``windows`` (connected periods, judged
    with GRACE) are required (the group socket)."""
    lost: dict[Any, list[int]] = {}
    #: For lost commits inside a closed window: how long before the close they were committed.
    before_close: list[float] = []
    twice: dict[Any, list[int]] = {}
    disorder: dict[Any, list[tuple[int, int]]] = {}
    phantom: dict[Any, list[Any]] = {}
    required_total = 0
    for key in sorted(set(committed) | set(got.per_key), key=str):
        commits = committed.get(key, [])
        ns = [n for n, _, _ in got.per_key.get(key, [])]
        valid = {c.n for c in commits}
        if exact:
            required = valid
        else:
            required = {
                c.n
                for c in commits
                for start, end in windows or []
                if start <= c.t and (end is None or c.t <= end - GRACE)
            }
        required_total += len(required)
        missing = sorted(required - set(ns))
        if missing:
            lost[key] = missing
            for c in commits:
                if c.n in missing:
                    before_close += [
                        end - c.t
                        for start, end in windows or []
                        if end is not None and start <= c.t <= end
                    ]
        dup = sorted(n for n, k in Tally(ns).items() if k > 1)
        if dup:
            twice[key] = dup
        back = [(a, b) for a, b in pairwise(ns) if b < a and b in valid]
        if back:
            disorder[key] = back
        extra = sorted({n for n in ns if n not in valid}, key=str)
        if extra:
            phantom[key] = extra
    problems = []
    if lost:
        count = sum(len(v) for v in lost.values())
        detail = "; ".join(f"{k}: n={ranges(v)}" for k, v in list(lost.items())[:6])
        when = ""
        if before_close:
            when = (
                f" (of them, {len(before_close)} committed {min(before_close):.1f}-"
                f"{max(before_close):.1f} s before the server closed the socket)"
            )
        problems.append(
            f"{got.name}: LOST {count} of {required_total} required committed changes "
            f"({len(lost)} rows): {detail}{when}"
        )
    if twice:
        count = sum(len(v) for v in twice.values())
        detail = "; ".join(f"{k}: n={ranges(v)}" for k, v in list(twice.items())[:6])
        problems.append(f"{got.name}: {count} change(s) received TWICE or more: {detail}")
    if disorder:
        count = sum(len(v) for v in disorder.values())
        detail = "; ".join(f"{k}: {v[:3]}" for k, v in list(disorder.items())[:6])
        problems.append(f"{got.name}: {count} event(s) OUT OF ORDER (n after a later n): {detail}")
    if phantom:
        count = sum(len(v) for v in phantom.values())
        detail = "; ".join(f"{k}: n={v[:5]}" for k, v in list(phantom.items())[:6])
        problems.append(
            f"{got.name}: {count} event(s) of changes that were never committed "
            f"(rolled back: n >= {ROLLBACK_DELTA}): {detail}"
        )
    problems += [f"{got.name}: {note}" for note in got.notes[:10]]
    return problems


def missed_near_close(
    got: Received, committed: dict[Any, list[Commit]], windows: list[tuple[float, float | None]]
) -> list[float]:
    """For changes a socket never got that were committed within GRACE before the server closed
    it (so not required): how long before the close each was committed."""
    out = []
    for key, commits in committed.items():
        ns = {n for n, _, _ in got.per_key.get(key, [])}
        for c in commits:
            if c.n in ns:
                continue
            for start, end in windows:
                if end is not None and start <= c.t <= end and c.t > end - GRACE:
                    out.append(end - c.t)
    return out


def windows_of(client: WsClient) -> list[tuple[float, float | None]]:
    _, conns = client.snapshot()
    return [(c.opened, None if c.closed_by_test else c.closed) for c in conns]


def closes(client: WsClient) -> list[tuple[int, int | None, str]]:
    """(connection, close code, reason) of every connection the server (or the network)
    ended."""
    _, conns = client.snapshot()
    return [
        (c.index, c.code, c.reason[:120])
        for c in conns
        if c.closed is not None and not c.closed_by_test
    ]


def positions(client: WsClient) -> list[str]:
    """Every position ``client`` received: in events and in subscribe replies."""
    frames, _ = client.snapshot()
    out = []
    for frame in frames:
        payload = frame.payload
        if "position" in payload:
            out.append(str(payload["position"]))
        data = payload.get("data")
        if "status" in payload and isinstance(data, dict) and "position" in data:
            out.append(str(data["position"]))
    return out


def exit_summary(proc: Pglisten) -> str:
    """How a pglisten process ended: its code and its last error line."""
    text = proc.output()
    errors = [
        line
        for line in text.splitlines()
        if re.match(r"^[\w.]+(Error|Exception|Full)\b", line) or "CommandError" in line
    ]
    last = errors[-1] if errors else (text.strip().splitlines() or ["(no output)"])[-1]
    return f"{proc.name} exited {proc.returncode}: {last[:300]}"


class Report:
    """Collects a test's problems and its figures; ``check()`` fails with all of them."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.problems: list[str] = []
        self.figures: list[str] = []

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def figure(self, text: str) -> None:
        self.figures.append(text)

    def check(self) -> None:
        print(f"{self.title}: " + "; ".join(self.figures))  # shown with -rP, or -s
        if self.problems:
            raise AssertionError(
                f"{self.title}:\n  - "
                + "\n  - ".join(self.problems)
                + "\n  figures: "
                + "; ".join(self.figures)
            )


def restart_postgres(server: Any) -> float:
    """Restart the embedded Postgres ``server`` in immediate mode (a crash: no checkpoint),
    start it again if the restart failed half-way, and drop Django's own connection, which
    died with it. Returns the seconds it took."""
    started = time.monotonic()
    try:
        server.restart(mode="immediate")
    finally:
        if not server.is_running():
            server.start()
        connection.close()
    return time.monotonic() - started


def settle(
    stack: Stack,
    writers: Writers | list[Writers],
    clients: list[WsClient],
    *,
    timeout: float = 30,
    quiet: float = 1.0,
    silence: float = 8.0,
) -> float:
    """Wait until every client that should have the last committed change of every key has it
    and nothing has arrived for ``quiet`` seconds. Give up after ``timeout``, after ``silence``
    seconds without any frame (call this once the faults are over), or 3 s after no pglisten is
    left running, as nothing more can come then. Return how long it took."""
    start = time.monotonic()
    last: dict[str, int] = {}
    for w in writers if isinstance(writers, list) else [writers]:
        last.update(w.last())
    dead_since: float | None = None
    while True:
        now = time.monotonic()
        done = True
        newest = 0.0
        for client in clients:
            got = received(client)
            frames, conns = client.snapshot()
            if frames:
                newest = max(newest, frames[-1].t)
            must = client.subscribe_stream is not None or (conns and conns[-1].closed is None)
            if must and any(
                n and n not in {m for m, _, _ in got.per_key.get(k, [])} for k, n in last.items()
            ):
                done = False
        if done and now - newest >= quiet:
            return now - start
        if now - max(newest, start) >= silence:
            return now - start
        if not any(p.running for p in stack.listeners):
            dead_since = dead_since or now
            if now - dead_since > 3:
                return now - start
        if now - start > timeout:
            return now - start
        time.sleep(0.25)


def judge_counters(
    report: Report,
    stack: Stack,
    writers: list[Writers],
    group: WsClient,
    subscriber: WsClient,
    extra_commits: Sequence[Commit] = (),
) -> None:
    """The standard verdict: the subscriber exact, the group socket within its windows, the
    harness's own bookkeeping consistent with the table."""
    committed: dict[str, list[Commit]] = {}
    for w in writers:
        for key, commits in w.commits().items():
            committed.setdefault(key, []).extend(commits)
        if w.anomalies:
            report.problem(f"harness: writer anomalies {w.anomalies[:5]}")
    for commit in extra_commits:
        committed.setdefault(commit.key, []).append(commit)
    table = table_counts(list(committed))
    wrong = {k: (v[-1].n if v else 0, table.get(k)) for k, v in committed.items()}
    wrong = {k: v for k, v in wrong.items() if v[0] != v[1]}
    if wrong:
        report.problem(f"harness: recorded commits disagree with the table: {wrong}")
    total = sum(len(v) for v in committed.values())
    sub = received(subscriber)
    grp = received(group)
    for problem in judge(sub, committed, exact=True):
        report.problem(problem)
    for problem in judge(grp, committed, exact=False, windows=windows_of(group)):
        report.problem(problem)
    report.figure(
        f"committed {total} changes on {len(committed)} rows, rolled back "
        f"{sum(w.rollbacks for w in writers)}, writer connection errors "
        f"{sum(len(w.errors) for w in writers)}, uncertain commits "
        f"{[u for w in writers for u in w.uncertain]}"
    )
    for got, client in ((sub, subscriber), (grp, group)):
        shown = closes(client)
        report.figure(
            f"{client.name}: {got.events} events, {got.discarded} discarded (cut-off replay), "
            f"{len(client.connections)} connection(s), {len(shown)} closed by the server "
            f"(codes {dict(Tally(c[1] for c in shown))}), {len(got.refused)} subscribe(s) "
            f"refused{': ' + got.refused[0] if got.refused else ''}"
        )
    near = missed_near_close(grp, committed, windows_of(group))
    if near:
        report.figure(
            f"group: {len(near)} change(s) committed {min(near):.2f}-{max(near):.2f} s before a "
            f"server close never arrived (within GRACE {GRACE} s, so not required)"
        )
    longest = max((len(p) for c in (group, subscriber) for p in positions(c)), default=0)
    report.figure(f"longest position {longest} chars")
    for proc in stack.listeners:
        state = "running" if proc.running else exit_summary(proc)
        report.figure(f"{proc.name}: {state}")
    if stack.restarts:
        report.figure(
            f"the supervisor started {len(stack.restarts)} replacement pglisten process(es)"
        )


def report_exits(report: Report, stack: Stack) -> None:
    """Every pglisten that is not running is a problem (tests where none may exit)."""
    exits = Tally(exit_summary(p).split(" ", 1)[1] for p in stack.listeners if not p.running)
    for text, count in exits.items():
        report.problem(f"pglisten {text}" + (f" ({count} processes)" if count > 1 else ""))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fault suite is the longest part of the whole suite (several minutes on 2 cores):
    marked ``slow`` so a developer can leave it out locally (``scripts/test -m "not slow"``);
    ``scripts/test`` with no arguments, and so CI, runs it."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
