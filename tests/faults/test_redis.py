"""Redis fails under the listener and the ASGI servers: killed and restarted empty on the same
port, or frozen (SIGSTOP) and thawed, while writers keep committing."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import Report, Stack, counter_keys, judge_counters, report_exits, settle
from tests.support.capture import BACKENDS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


@pytest.mark.parametrize("layer", ["core", "pubsub"])
@pytest.mark.parametrize("capture", BACKENDS)
def test_redis_killed_and_restarted(
    make_stack: Callable[..., Stack], capture: str, layer: str
) -> None:
    """Redis is SIGKILLed and, 2.5 s later, started again (empty: nothing is persisted) on the
    same port, with two pglisten processes (active and standby) and writers running throughout.

    Required: no pglisten exits (a supervisor restarts pglisten if none is left, so delivery is
    judged past a crash, and every exit is reported); the subscriber (which reconnects and
    resumes with ``since`` if the server closes its socket) gets exactly the committed sequence
    of every row; the group socket gets no change twice or out of order and loses none committed
    while it was connected (commits within GRACE s before a server close are not required; the
    socket's closes are listed in the failure message)."""
    stack = make_stack(layer, capture=capture)
    keys = counter_keys(16)
    group, subscriber = stack.counters(keys, listeners=2)
    stack.supervise()
    writers = stack.write(keys)
    time.sleep(3)
    stack.redis.kill()
    killed = time.monotonic()
    time.sleep(2.5)
    stack.redis.start()
    down = time.monotonic() - killed
    time.sleep(6)
    writers.stop()
    waited = settle(stack, writers, [group, subscriber])

    report = Report(f"Redis ({layer} layer) killed for {down:.1f} s and restarted")
    report_exits(report, stack)
    judge_counters(report, stack, [writers], group, subscriber)
    report.figure(f"settled in {waited:.1f} s")
    report.check()


@pytest.mark.parametrize("capture", BACKENDS)
def test_redis_paused(make_stack: Callable[..., Stack], capture: str) -> None:
    """Redis is frozen with SIGSTOP for 10 s, then SIGCONT, writers running throughout (one
    pglisten). Connections stay open while it is frozen; nothing may be lost, duplicated or
    reordered (same judgement as the kill test), and pglisten must not exit."""
    stack = make_stack(capture=capture)
    keys = counter_keys(16)
    group, subscriber = stack.counters(keys)
    stack.supervise()
    writers = stack.write(keys)
    time.sleep(3)
    stack.redis.pause()
    paused = time.monotonic()
    time.sleep(10)
    stack.redis.resume()
    frozen = time.monotonic() - paused
    time.sleep(4)
    writers.stop()
    waited = settle(stack, writers, [group, subscriber])

    report = Report(f"Redis paused (SIGSTOP) for {frozen:.1f} s")
    report_exits(report, stack)
    judge_counters(report, stack, [writers], group, subscriber)
    report.figure(f"settled in {waited:.1f} s")
    report.check()
