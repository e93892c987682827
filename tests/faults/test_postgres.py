"""Postgres goes away under everything: an immediate shutdown (no checkpoint, every connection
cut, crash recovery on start) while writers commit."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests import servers
from tests.faults.conftest import (
    Report,
    Stack,
    counter_keys,
    judge_counters,
    report_exits,
    restart_postgres,
    settle,
)
from tests.support.capture import BACKENDS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


@pytest.mark.parametrize("capture", BACKENDS)
def test_postgres_immediate_restart(make_stack: Callable[..., Stack], capture: str) -> None:
    """The embedded Postgres is restarted with ``mode="immediate"`` while writers commit (with
    ``synchronous_commit = on``, so a commit Postgres reported survives). Writers reconnect
    and carry on; a commit whose outcome is unknown (the connection died during COMMIT) is
    settled by reading the row back before it counts as committed or not.

    Required: pglisten does not exit (it reconnects; a supervisor would restart it otherwise,
    and the exit is reported); nothing committed is lost: the subscriber gets exactly the
    committed sequence of every row, the group socket no change twice or out of order and none
    lost while it was connected (server closes are listed)."""
    server = servers.postgres_server()
    if server is None:
        pytest.skip("needs the embedded Postgres (PGBINDING_TEST_DATABASE_URL is set)")
    stack = make_stack(capture=capture)
    keys = counter_keys(16)
    group, subscriber = stack.counters(keys)
    stack.supervise()
    # Four busy writers: a restart is likely to catch a COMMIT in flight (outcome unknown).
    writers = stack.write(keys, threads=4, pause=0, synchronous_commit=True)
    time.sleep(3)
    restart = restart_postgres(server)
    time.sleep(6)
    writers.stop()
    waited = settle(stack, writers, [group, subscriber], timeout=40)

    report = Report(f"Postgres restarted (immediate) in {restart:.1f} s")
    report_exits(report, stack)
    reconnected = [p.name for p in stack.listeners if "reconnecting" in p.output()]
    report.figure(f"pglisten logged reconnecting: {reconnected}; settled in {waited:.1f} s")
    judge_counters(report, stack, [writers], group, subscriber)
    report.check()
