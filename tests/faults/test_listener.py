"""The listener fails: the active pglisten stalls (SIGSTOP) with a standby waiting, or is stopped
for a while and started again, while writers keep committing."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import (
    POSITION_BOUND,
    Report,
    Stack,
    counter_keys,
    delivered_at,
    judge_counters,
    positions,
    settle,
)
from tests.support.capture import BACKENDS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

LEASE = 3.0
STANDBY_RETRY = 0.5
#: Takeover must happen within LEASE + STANDBY_RETRY plus this much (delivery, process
#: scheduling on a 2-core machine).
TAKEOVER_SLACK = 8.0 - LEASE - STANDBY_RETRY


@pytest.mark.parametrize("capture", BACKENDS)
def test_stalled_leader_is_replaced_by_the_standby(
    make_stack: Callable[..., Stack], capture: str
) -> None:
    """The active pglisten is SIGSTOPped for 15 s while a standby runs (``LEASE`` 3 s,
    ``STANDBY_RETRY`` 0.5 s) and writers commit throughout; then it gets SIGCONT.

    Required: the standby takes over: the first change committed after the stop reaches a
    client less than 8 s (LEASE + STANDBY_RETRY + slack) after the stop. After SIGCONT the old
    leader must not cause loss, visible duplicates or out-of-order events: the subscriber gets
    exactly the committed sequence of every row, the group socket no change twice or out of
    order and none lost while it was connected (server closes are listed; commits within GRACE
    s before a close are not required)."""
    stack = make_stack(capture=capture)
    keys = counter_keys(16)
    settings = {"LEASE": LEASE, "STANDBY_RETRY": STANDBY_RETRY}
    group, subscriber = stack.counters(keys, listeners=2, settings=settings)
    leader, standby = stack.listeners
    writers = stack.write(keys)
    time.sleep(3)
    mark = standby.mark()
    leader.pause()
    stopped = time.monotonic()
    first = writers.first_commit_after(stopped)
    takeover: float | None = None
    while time.monotonic() - stopped < 15:
        if takeover is None:
            at = delivered_at([group, subscriber], first.key, first.n)
            if at is not None:
                takeover = at - stopped
        time.sleep(0.1)
    said = "took over as the active listener" in standby.output()[mark:]
    leader.resume()
    time.sleep(5)
    writers.stop()
    waited = settle(stack, writers, [group, subscriber])

    report = Report("active pglisten SIGSTOPped for 15 s with a standby")
    if takeover is None:
        report.problem(
            f"no takeover: the first change committed after the stop ({first.key} n={first.n}, "
            f"{first.t - stopped:.2f} s after it) was not delivered within 15 s; the standby "
            f"{'did' if said else 'did not'} log that it took over"
        )
    elif takeover >= LEASE + STANDBY_RETRY + TAKEOVER_SLACK:
        report.problem(f"takeover took {takeover:.1f} s from the stop (limit 8 s)")
    if not standby.running:
        report.problem(f"the standby exited {standby.returncode}: {standby.tail(3)}")
    judge_counters(report, stack, [writers], group, subscriber)
    report.figure(
        f"takeover {'none' if takeover is None else f'{takeover:.2f} s'}; the standby logged "
        f"taking over: {said}; settled in {waited:.1f} s"
    )
    report.check()


@pytest.mark.parametrize("capture", BACKENDS)
def test_listener_outage_catch_up(make_stack: Callable[..., Stack], capture: str) -> None:
    """pglisten is stopped (SIGTERM) for 15 s while writers keep committing, 10 % of their
    transactions rolled back, then started again.

    Required: the first exits 0; the new one catches up on everything; every position (events
    and subscribe replies) is at most POSITION_BOUND characters; the subscriber (which would
    resume with ``since`` if its socket were closed) gets exactly the committed sequence of
    every row; the group socket, connected all along unless the server closes it (closes are
    listed), no change twice, out of order or lost while connected."""
    stack = make_stack(capture=capture)
    keys = counter_keys(16)
    group, subscriber = stack.counters(keys)
    writers = stack.write(keys, rollback_share=0.1)
    time.sleep(3)
    first = stack.listeners[0]
    code = first.terminate()
    time.sleep(15)
    behind = writers.total
    second = stack.pglisten("pglisten-2")
    restarted = time.monotonic()
    time.sleep(5)
    writers.stop()
    waited = settle(stack, writers, [group, subscriber], timeout=40)

    report = Report("pglisten stopped for 15 s and started again")
    if code != 0:
        report.problem(f"pglisten-1 exited {code} on SIGTERM: {first.tail(3)}")
    if not second.running:
        report.problem(f"pglisten-2 exited {second.returncode}: {second.tail(5)}")
    caught = second.output().count("Caught up")
    report.figure(
        f"{behind} changes committed by the restart; pglisten-2 logged 'Caught up' {caught} "
        f"time(s); restart to settled {time.monotonic() - restarted:.1f} s"
    )
    for client in (group, subscriber):
        long = [p for p in positions(client) if len(p) > POSITION_BOUND]
        if long:
            report.problem(
                f"{client.name}: {len(long)} position(s) over {POSITION_BOUND} characters, the "
                f"longest {max(map(len, long))}: {max(long, key=len)[:120]}..."
            )
    judge_counters(report, stack, [writers], group, subscriber)
    report.figure(f"settled in {waited:.1f} s")
    report.check()
