"""Resume tokens stay bounded and usable while a long transaction is open and many others roll
back (each rollback leaves a hole in the change log's ids that the listener must track)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import psycopg
import pytest
from websockets.sync.client import connect

from pgbinding.delivery.listener import conninfo_from_django
from tests.faults.conftest import (
    POSITION_BOUND,
    Commit,
    Report,
    Stack,
    closes,
    counter_keys,
    judge_counters,
    positions,
    received,
    settle,
)
from tests.support.processes import WsClient, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

ROLLBACKS = 1000


def resume_status(url: str, since: str, timeout: float = 30) -> tuple[int | None, str]:
    """Subscribe to ``counters`` on a fresh socket with ``since``; the reply's status (None if
    none came) and a short description."""
    frame = {
        "stream": "counters",
        "payload": {"action": "subscribe", "request_id": "resume", "since": since},
    }
    try:
        with connect(url, proxy=None, open_timeout=10, max_size=None, max_queue=None) as ws:
            ws.send(json.dumps(frame))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                payload = json.loads(ws.recv(timeout=deadline - time.monotonic())).get("payload")
                if payload and payload.get("request_id") == "resume" and "status" in payload:
                    detail = payload.get("errors") or {
                        k: v for k, v in (payload.get("data") or {}).items() if k != "results"
                    }
                    return payload["status"], str(detail)[:200]
    except Exception as exc:
        return None, repr(exc)[:200]
    return None, "no reply"


def test_positions_stay_bounded_with_a_long_transaction_and_many_rollbacks(
    make_stack: Callable[..., Stack],
) -> None:
    """A transaction that inserted a counter row stays open, uncommitted, for the whole test;
    meanwhile 1,000 transactions roll back, interleaved with committed ones (so each leaves its
    own hole in the log ids), and other writers commit.

    Required: every event's ``position`` and every subscribe reply's ``position`` is at most
    POSITION_BOUND (1024) characters; no socket is closed with 1011; subscribing with ``since``
    set to received positions (a sample: the longest, the last, and evenly spread ones) is
    accepted (200, not 400); then the long transaction commits and its row is delivered. And,
    as everywhere, the subscriber gets exactly the committed sequence of every row and the group
    socket no change twice, out of order or lost while connected."""
    stack = make_stack()
    keys = counter_keys(8)
    group, subscriber = stack.counters(keys)
    with psycopg.connect(conninfo_from_django()) as long:
        long.execute("INSERT INTO testapp_counter (key, n) VALUES ('long', 0)")
        steady = stack.write(keys[:4], threads=1)
        flipping = stack.write(
            keys[4:], threads=1, alternate=True, max_rollbacks=ROLLBACKS, pause=0.001, seed=7
        )
        started = time.monotonic()
        wait_until(
            lambda: flipping.rollbacks >= ROLLBACKS,
            lambda: f"{ROLLBACKS} rollbacks (done {flipping.rollbacks})",
            timeout=60,
        )
        rolling = time.monotonic() - started
        time.sleep(1)
        steady.stop()
        flipping.stop()
        waited = settle(stack, [steady, flipping], [group, subscriber])

        report = Report("long open transaction plus 1,000 rollbacks")
        for client in (group, subscriber):
            all_positions = positions(client)
            long_ones = [p for p in all_positions if len(p) > POSITION_BOUND]
            if long_ones:
                report.problem(
                    f"{client.name}: {len(long_ones)} of {len(all_positions)} positions over "
                    f"{POSITION_BOUND} characters, the longest {max(map(len, long_ones))}"
                )
            crashed = [c for c in closes(client) if c[1] == 1011]
            if crashed:
                report.problem(f"{client.name}: closed by the server with 1011: {crashed[:3]}")
        sample = positions(subscriber)
        picks = []
        if sample:
            spread = sample[:: max(1, len(sample) // 8)]
            picks = [*sorted({*spread, max(sample, key=len)}, key=len), sample[-1]]
        url = stack.daphnes[1].url("/all/")
        refused = []
        for since in picks:
            status, detail = resume_status(url, since)
            if status != 200:
                refused.append(f"len {len(since)}: {status} {detail}")
        if refused:
            report.problem(
                f"{len(refused)} of {len(picks)} resumes with a received position refused: "
                + " | ".join(refused[:3])
            )
        report.figure(
            f"{ROLLBACKS} rollbacks took {rolling:.1f} s; settled in {waited:.1f} s; "
            f"resumes tried {len(picks)}"
        )
        long.commit()
        committed_long = Commit("long", 0, time.monotonic())

    def has_long(client: WsClient) -> bool:
        return 0 in [n for n, _, _ in received(client).per_key.get("long", [])]

    try:
        wait_until(lambda: has_long(subscriber) and has_long(group), "the long row", timeout=15)
    except AssertionError:
        report.problem(
            "the long transaction's row was not delivered within 15 s of its commit "
            f"(subscriber: {has_long(subscriber)}, group: {has_long(group)})"
        )
    judge_counters(report, stack, [steady, flipping], group, subscriber, [committed_long])
    report.check()
