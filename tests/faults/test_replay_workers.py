"""Long replays in the production shape: daphne builds them in its replay worker process
(pgbinding.processes), pglisten in its own process, channels-redis, real WebSocket clients
signed in with a session cookie, writes from another connection. The worker is SIGKILLed, and
then daphne itself: a resume never loses or leaks a row, and no worker outlives its server.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import psutil
import psycopg
import pytest
from django.contrib.auth.models import User
from websockets.sync.client import connect

from pgbinding.delivery.listener import conninfo_from_django
from tests import servers
from tests.faults.conftest import Stack, restart_postgres
from tests.faults.test_authorization import ItemWriter, alice_and_bob, session_cookie
from tests.support.capture import BACKENDS
from tests.support.processes import Daphne, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

ROWS_EACH = 5
CHANGES = 2000
#: Replays of at least this many changes go to the worker (the default is 1,000).
IN_PROCESS_FROM = 100
READY = re.compile(r"Replay worker process (\d+) ready")


def resume(
    server: Daphne, user: User | None, since: str, status: int = 200
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A fresh socket of ``user`` (None: signed out) resumes ``myitems`` from ``since``:
    (events, reply); the reply must have ``status``, at the first try: the socket joins its
    groups on another connection when one of daphne's Redis connections went stale with a
    Redis restart (tests/faults/test_redis.py), so no 503 is left for a client to retry."""
    headers = session_cookie(user) if user is not None else None
    with connect(server.url("/all/"), additional_headers=headers, max_size=None) as ws:
        frame = {"action": "subscribe", "request_id": "s", "since": since}
        ws.send(json.dumps({"stream": "myitems", "payload": frame}))
        events: list[dict[str, Any]] = []
        while True:
            payload = json.loads(ws.recv(timeout=30))["payload"]
            if payload.get("request_id") == "s":
                break
            events.append(payload)
    assert payload["status"] == status, payload
    return events, payload


def judge(
    replayed: tuple[list[dict[str, Any]], dict[str, Any]],
    rows: list[int],
    committed: dict[int, list[int]],
    how: str,
) -> None:
    """The replay holds every committed value of each of ``rows``, in order, and no other
    row."""
    events, reply = replayed
    assert reply["data"]["replayed"] == len(events), how
    values: dict[int, list[int]] = {}
    for event in events:
        assert event["pk"] in rows, f"{how}: another user's row {event}"
        values.setdefault(event["pk"], []).append(event["data"]["value"])
    for pk in rows:
        assert values.get(pk) == committed[pk], f"{how}, row {pk}"


def logged_updates(since: str) -> int:
    """How many item updates the change log holds after position ``since``."""
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pgbinding_change"
            " WHERE table_name = 'testapp_item' AND op = 'U' AND id > %s",
            [int(since.partition(":")[0])],
        ).fetchone()
    return int(row[0]) if row else 0


def position(server: Daphne, user: User) -> str:
    with connect(server.url("/all/"), additional_headers=session_cookie(user)) as ws:
        frame = {"action": "subscribe", "request_id": "s"}
        ws.send(json.dumps({"stream": "myitems", "payload": frame}))
        reply = json.loads(ws.recv(timeout=30))["payload"]
        assert reply["status"] == 200, reply
        return str(reply["data"]["position"])


def write_changes(owned: dict[int, list[int]]) -> dict[int, list[int]]:
    """CHANGES single-row UPDATEs, round robin over both users' items: committed values."""
    pks = [pk for rows in owned.values() for pk in rows]
    committed: dict[int, list[int]] = {pk: [] for pk in pks}
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        for n in range(CHANGES):
            pk = pks[n % len(pks)]
            row = conn.execute(
                "UPDATE testapp_item SET value = value + 1 WHERE id = %s RETURNING value", [pk]
            ).fetchone()
            assert row is not None
            committed[pk].append(int(row[0]))
    return committed


def gone(pid: int) -> bool:
    """Exited (a zombie until its parent reaps it counts)."""
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return status == str(psutil.STATUS_ZOMBIE)


def worker_cpu(worker: psutil.Process) -> float:
    times = worker.cpu_times()
    return float(times.user + times.system)


def worker_pid(server: Daphne, since: int = 0) -> int:
    wait_until(
        lambda: bool(READY.search(server.output()[since:])) or not server.running,
        lambda: f"a replay worker to start; daphne's output ends:\n{server.tail()}",
        timeout=60,
    )
    found = READY.findall(server.output()[since:])
    assert found, server.tail()
    return int(found[-1])


def test_resumes_through_a_replay_worker_that_is_killed_lose_and_leak_nothing(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("core")
    stack.env["PGBINDING_TEST_PGBINDING"] = json.dumps({"REPLAY_IN_PROCESS_FROM": IN_PROCESS_FROM})
    alice, _bob, owned = alice_and_bob(ROWS_EACH)
    stack.pglisten("pglisten").wait_output("Caught up", timeout=30)
    server = stack.daphne("daphne")
    server.wait_ready()
    since = position(server, alice)
    committed = write_changes(owned)
    mark = server.mark()
    stack.listeners[0].wait_output("Caught up", since=0, timeout=30)
    time.sleep(1.0)  # the listener's position reaches the log's end

    # The first long replay starts the worker and is built in daphne meanwhile.
    first = resume(server, alice, since)
    judge(first, owned[alice.pk], committed, "built in daphne")
    pid = worker_pid(server, since=mark)
    worker = psutil.Process(pid)
    assert worker.ppid() == server.pid
    busy = worker_cpu(worker)
    judge(resume(server, alice, since), owned[alice.pk], committed, "built in the worker")
    assert worker_cpu(worker) > busy, "the worker did not build the replay"
    assert "died" not in server.output()[mark:]
    assert "does not pickle" not in server.output()  # the signed-in user's binding went over

    # A worker killed while idle is reaped (no zombie left) and replaced at once, before any
    # replay needs it.
    mark = server.mark()
    os.kill(pid, 9)
    wait_until(lambda: not psutil.pid_exists(pid), lambda: f"worker {pid} to be reaped")
    server.wait_output(f"Replay worker process {pid} exited (killed by signal 9)", since=mark)
    replacement = worker_pid(server, since=mark)
    assert replacement != pid
    busy = worker_cpu(psutil.Process(replacement))
    judge(resume(server, alice, since), owned[alice.pk], committed, "built in the new worker")
    assert worker_cpu(psutil.Process(replacement)) > busy
    assert "died" not in server.output()[mark:]

    # A server killed outright leaves no worker behind (its pipe closes).
    server.kill()
    wait_until(
        lambda: gone(replacement),
        lambda: f"worker {replacement} to exit after its daphne was killed",
        timeout=20,
    )


@pytest.mark.parametrize("capture", BACKENDS)
def test_long_resumes_after_redis_listener_and_postgres_faults_reach_only_their_owner(
    make_stack: Callable[..., Stack], capture: str
) -> None:
    """While alice's and bob's items change: Redis is SIGKILLed and started again empty, and
    the leading pglisten is SIGKILLed (its standby takes over); after the writes, Postgres is
    restarted (immediate). Then alice and bob resume from the same position, long replays
    built in daphne's worker, and a signed-out socket tries the same.

    Required: each gets every committed value of each of their own rows, in commit order, and
    no row of the other (the position is not a secret: bob resumes from alice's); the
    signed-out socket gets 403 and nothing else; the worker built the replays."""
    stack = make_stack("core", capture=capture)
    stack.env["PGBINDING_TEST_PGBINDING"] = json.dumps({"REPLAY_IN_PROCESS_FROM": IN_PROCESS_FROM})
    alice, bob, owned = alice_and_bob(ROWS_EACH)
    leader = stack.pglisten("pglisten-1")
    leader.wait_output("Caught up", timeout=30)
    standby = stack.pglisten("pglisten-2")
    server = stack.daphne("daphne")
    server.wait_ready()
    since = position(server, alice)

    writer = ItemWriter(owned[alice.pk] + owned[bob.pk]).start()
    time.sleep(2)
    stack.redis.kill()
    time.sleep(1.5)
    stack.redis.start()
    time.sleep(1.5)
    leader.kill()
    standby.wait_output("took over", timeout=30)
    time.sleep(2)
    writer.stop()
    committed = writer.committed
    assert all(len(committed[pk]) >= 10 for pk in owned[alice.pk] + owned[bob.pk]), committed

    postgres = servers.postgres_server()
    if postgres is not None:
        restart_postgres(postgres)
    if capture == "logical":
        # The logical backend's pump commits its log writes asynchronously (their rows are
        # sent live at once): the restart can lose the last ones, which the pump writes again,
        # under the same ids, once its listener has reconnected. A client resuming before that
        # gets those changes live after its replay's reply, which resume() does not wait for;
        # the replays below are judged once the log holds every committed change again.
        updates = sum(len(values) for values in committed.values())
        wait_until(
            lambda: logged_updates(since) >= updates,
            lambda: (
                f"the log to hold the {updates} committed updates again "
                f"(holds {logged_updates(since)})"
            ),
            timeout=60,
            interval=0.1,
        )

    # A first long replay starts the worker (and is built in daphne meanwhile).
    mark = server.mark()
    judge(resume(server, alice, since), owned[alice.pk], committed, "alice, built in daphne")
    worker = psutil.Process(worker_pid(server, since=mark))
    busy = worker_cpu(worker)
    judge(resume(server, alice, since), owned[alice.pk], committed, "alice")
    judge(resume(server, bob, since), owned[bob.pk], committed, "bob, from alice's position")
    assert worker_cpu(worker) > busy, "the worker did not build the replays"
    events, reply = resume(server, None, since, status=403)
    assert events == [], events
    assert "data" not in reply or not reply["data"], reply
    assert "died" not in server.output()
    assert standby.running, standby.tail()
