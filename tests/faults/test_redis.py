"""Redis fails under the listener and the ASGI servers: killed and restarted empty on the same
port, or frozen (SIGSTOP) and thawed, while writers keep committing."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from pgbinding.delivery.listener import conninfo_from_django
from tests.faults.conftest import (
    Report,
    Stack,
    counter_keys,
    insert_counters,
    judge_counters,
    report_exits,
    settle,
)
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


def first_reply(
    sockets: contextlib.ExitStack, url: str, stream: str
) -> tuple[dict[str, Any], ClientConnection]:
    """A fresh socket (closed with ``sockets``) sends one ``subscribe`` on ``stream``: its reply
    (no retry, unlike a client), and the socket, still open."""
    ws = sockets.enter_context(connect(url))
    ws.send(json.dumps({"stream": stream, "payload": {"action": "subscribe", "request_id": "s"}}))
    while True:
        payload = json.loads(ws.recv(timeout=30))["payload"]
        if payload.get("request_id") == "s":
            return payload, ws


@pytest.mark.parametrize("layer", ["core", "pubsub"])
def test_the_first_subscribe_after_a_redis_restart_is_answered(
    make_stack: Callable[..., Stack], layer: str
) -> None:
    """Redis is SIGKILLed and started again (empty) between two sockets of a daphne: the
    Redis connections the first socket left in daphne's pool are stale. The next socket
    subscribes at its first try (200, not 503 and a close) and gets the change written
    next; a signed-out socket subscribing to a stream it may not read gets 403, nothing else.
    With Redis down, a subscribe still gets 503 and the socket is closed with 4012 (the core
    layer), or the handshake is refused with 403 (pub/sub); never a 500."""
    stack = make_stack(layer)
    keys = counter_keys(2)
    insert_counters(keys)
    server = stack.daphne("daphne")
    stack.pglisten("pglisten").wait_output("Caught up", timeout=30)
    server.wait_ready()
    with contextlib.ExitStack() as sockets:
        with contextlib.ExitStack() as first:
            reply, _ = first_reply(first, server.url("/all/"), "counters")
            assert reply["status"] == 200, reply
        time.sleep(0.5)  # daphne has left the socket's groups
        stack.redis.kill()
        time.sleep(1)
        stack.redis.start()
        # Sockets joined before the restart are closed (4012) once daphne notices it; wait for
        # that, so what follows is only the sockets after.
        server.wait_output("restarted (its groups", timeout=15)
        refused, _ = first_reply(sockets, server.url("/all/"), "myitems")
        assert refused["status"] == 403, f"signed out: {refused}"
        reply, ws = first_reply(sockets, server.url("/all/"), "counters")
        assert reply["status"] == 200, reply
        time.sleep(1)  # pglisten reconnects to Redis
        with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
            conn.execute("UPDATE testapp_counter SET n = n + 1 WHERE key = %s", [keys[0]])
        while True:  # the next event is the change written after the subscribe
            payload = json.loads(ws.recv(timeout=30))["payload"]
            if payload.get("action") == "update":
                assert payload["data"]["key"] == keys[0] and payload["data"]["n"] == 1, payload
                break
        # With Redis down, the join fails again on a fresh connection: 503, then the 4012 close
        # that makes the client reconnect and resume later.
        stack.redis.kill()
        if layer == "pubsub":
            # This layer subscribes each socket's own channel on Redis as it connects: with
            # no Redis there is no socket, and the handshake is refused (403), not a 500.
            with pytest.raises(InvalidStatus) as rejected:
                first_reply(sockets, server.url("/all/"), "counters")
            assert rejected.value.response.status_code == 403, rejected.value
            return
        with pytest.raises(ConnectionClosed) as closed:
            reply, ws = first_reply(sockets, server.url("/all/"), "counters")
            assert reply["status"] == 503, reply
            ws.recv(timeout=30)
        # (Should daphne's watch notice Redis gone within these milliseconds, it closes the
        # socket with the same code before the reply.)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4012, closed.value
