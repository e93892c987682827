"""A socket that subscribes and then never reads, while the listener fans out thousands of
changes through channels-redis: the daphne serving it stays bounded in memory (pgbinding's
per-socket outbound queue, MAX_OUTBOUND_BYTES), drops it, and a reading subscriber on the same
server misses nothing. tests/e2e/test_slow_reader.py measures the queue alone, with a bare
consumer; this is the whole stack."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import psycopg
import pytest

from pgbinding.delivery.listener import conninfo_from_django
from tests.conftest import wait_for
from tests.faults.conftest import Report, Stack, counter_keys, insert_counters
from tests.support.processes import WsClient

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

MB = 1024 * 1024


def subscribe_and_stop_reading(port: int) -> socket.socket:
    """A WebSocket (hand-built handshake) that sends one subscribe and then reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /all/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = json.dumps(
        {"stream": "counters", "payload": {"action": "subscribe", "request_id": "slow"}}
    ).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


def test_a_client_that_never_reads_is_dropped_and_the_server_stays_bounded(
    make_stack: Callable[..., Stack],
) -> None:
    """2,000 rows updated by whole-table statements (~18 MB of events to every subscriber):
    the never-reading socket is dropped once MAX_OUTBOUND_BYTES (512 KiB here) wait for it,
    daphne's memory stays bounded, and the reading subscriber on the same server gets every
    change of every row, in order (or, if on a loaded machine it is too slow itself and closed
    with 4008, resumes as the protocol says and ends holding every row's last value)."""
    stack = make_stack("core")
    stack.env["PGBINDING_TEST_PGBINDING"] = json.dumps({"MAX_OUTBOUND_BYTES": 512 * 1024})
    keys = counter_keys(2000, prefix="b")
    insert_counters(keys)
    server = stack.daphne("daphne")
    stack.pglisten("pglisten-1").wait_output("Caught up", timeout=30)
    server.wait_ready()
    reader = stack.client(server.url("/all/"), "reader", subscribe="counters")
    reader.wait_subscribed()
    slow = subscribe_and_stop_reading(server.port)
    rss = psutil.Process(server.proc.pid)
    time.sleep(1)
    before = peak = rss.memory_info().rss
    statements = 60
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        for _ in range(statements):
            conn.execute("UPDATE testapp_counter SET n = n + 1 WHERE key LIKE 'b%%'")
            peak = max(peak, rss.memory_info().rss)
    # A bound on waiting, not on speed: on a loaded 2-core machine the 120,000 events took
    # just over 60 s to arrive.
    deadline = time.monotonic() + 180
    polls = 0
    while time.monotonic() < deadline:
        peak = max(peak, rss.memory_info().rss)
        time.sleep(0.2)
        polls += 1
        # Following 120,000 frames takes ~35 ms of the reader's process (this one): once a second.
        if polls % 5 == 0 and _followed(reader, keys, statements).done:
            break

    report = Report("A subscriber that never reads, under 120,000 changes")
    seen = _followed(reader, keys, statements)
    for problem in seen.problems[:5]:
        report.problem(f"the reading subscriber: {problem}")
    if not seen.done:
        report.problem(f"the reading subscriber does not hold the last value of {seen.behind} rows")
    if not seen.reconnects and seen.updates != statements * len(keys):
        report.problem(f"the reading subscriber got {seen.updates} events, not 120,000")
    report.figure(
        f"{seen.updates} events to the reader ({seen.reconnects} reconnect(s) and "
        f"{seen.resyncs} resync(s) after it was too slow itself); "
        f"daphne RSS {before / MB:.0f} -> peak {peak / MB:.0f} MB"
    )
    # Unbounded, the slow socket alone would hold ~18 MB, less what the kernel takes.
    if peak - before > 8 * MB:
        report.problem(f"daphne grew by {(peak - before) / MB:.0f} MB (bound: 8 MB)")
    try:
        wait_for(lambda: _closed(slow), "the server to drop the slow socket", timeout=20)
    except AssertionError as exc:
        report.problem(str(exc))
    finally:
        slow.close()
    if "reads too slowly" not in server.output():
        report.problem("the server did not log closing the slow socket")
    report.check()


@dataclass
class Followed:
    """What a subscriber holds after applying its frames as pgbinding's JS client does."""

    done: bool
    behind: int
    updates: int
    reconnects: int
    resyncs: int
    problems: list[str]


def _followed(client: WsClient, keys: list[str], statements: int) -> Followed:
    """Apply the subscriber's frames in order, across its connections: a subscribe reply's
    ``results`` set every row (a resync: on a loaded machine the reading client can be too
    slow itself, be closed with 4008, and resume past MAX_REPLAY); every ``update`` must be its
    row's next value. A message lost on an open socket shows as a row skipping values."""
    held: dict[str, int] = {}
    updates = resyncs = 0
    problems: list[str] = []
    frames, connections = client.snapshot()
    for frame in frames:
        payload = frame.payload
        data = payload.get("data") or {}
        if payload.get("status") == 200 and "results" in data:
            resyncs += 1 if held else 0
            held = {r["data"]["key"]: r["data"]["n"] for r in data["results"]}
        elif payload.get("subscription") and payload.get("action") == "update":
            key, n = data["key"], data["n"]
            if frame.conn > 0 and n <= held.get(key, 0):
                continue  # a resume may replay a change the client had (docs/protocol.md)
            updates += 1
            if n != held.get(key, 0) + 1:
                problems.append(f"{key} went from {held.get(key)} to {n} (connection {frame.conn})")
            held[key] = n
    behind = sum(1 for k in keys if held.get(k) != statements)
    return Followed(behind == 0, behind, updates, len(connections) - 1, resyncs, problems)


def _closed(sock: socket.socket) -> bool:
    """Has the server closed (or dropped) the connection? Reads what it buffered for us."""
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return True
    except TimeoutError:
        return False
    except OSError:
        return True
