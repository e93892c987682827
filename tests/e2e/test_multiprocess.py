"""The production shape: ``manage.py pglisten`` in its own process, two daphne ASGI servers,
channels-redis between them (a private Redis), and real WebSocket clients."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.conftest import subprocess_env
from tests.support.processes import Daphne, Pglisten, ProcessGroup
from tests.testapp.models import Item

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


def test_listener_and_two_asgi_servers_through_redis(redis_url: str, tmp_path: Path) -> None:
    env = subprocess_env(redis_url)
    procs = ProcessGroup()
    try:
        listener = procs.add(Pglisten(env, tmp_path))
        servers = [procs.add(Daphne(env, tmp_path, f"daphne{n}")) for n in range(2)]
        for server in servers:
            server.wait_ready(timeout=30)
        listener.wait_output("Caught up", timeout=20)

        # Signed-out sockets in the group of a binding that sends to everyone (itemvalues; the
        # staff-only items stream sends them nothing, tests/e2e/test_authorization.py).
        clients = [connect(server.url("/values/"), open_timeout=10) for server in servers]
        # A request and its reply (403 for anonymous): the socket is up, the group joined.
        for ws in clients:
            ws.send(
                json.dumps(
                    {"stream": "itemvalues", "payload": {"action": "list", "request_id": "l"}}
                )
            )
            assert json.loads(ws.recv(timeout=10))["payload"]["request_id"] == "l"

        started = time.monotonic()
        item = Item.objects.create(name="across processes", value=1)
        Item.objects.filter(pk=item.pk).update(value=2)
        for ws in clients:
            frames = [json.loads(ws.recv(timeout=15)) for _ in range(2)]
            assert [(f["stream"], f["payload"]["action"], f["payload"]["pk"]) for f in frames] == [
                ("itemvalues", "create", item.pk),
                ("itemvalues", "update", item.pk),
            ]
            assert frames[1]["payload"]["data"]["value"] == 2
        elapsed = time.monotonic() - started
        assert elapsed < 15
        # An idle socket is not dropped by redis-py's socket timeout (channels_redis#422).
        time.sleep(6)
        Item.objects.filter(pk=item.pk).update(value=3)
        for ws in clients:
            frame = json.loads(ws.recv(timeout=15))
            assert frame["payload"]["data"]["value"] == 3
        for ws in clients:
            ws.close()
    finally:
        procs.close()  # SIGTERM, SIGKILL after 10 s
    assert listener.returncode == 0, listener.output()
