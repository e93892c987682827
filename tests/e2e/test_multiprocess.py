"""The production shape: ``manage.py pglisten`` in its own process, two daphne ASGI servers,
channels-redis between them (a private Redis), and real WebSocket clients."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from pgbinding.embedded import free_port
from tests.conftest import subprocess_env, wait_for
from tests.testapp.models import Item

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_listener_and_two_asgi_servers_through_redis(redis_url, tmp_path):
    env = subprocess_env(redis_url)
    procs = []
    try:
        listener_log = tmp_path / "pglisten.log"
        procs.append(start([sys.executable, "-m", "django", "pglisten"], env, listener_log))
        ports = [free_port(), free_port()]
        for n, port in enumerate(ports):
            procs.append(
                start(
                    [
                        sys.executable,
                        "-m",
                        "daphne",
                        "-b",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "tests.asgi:application",
                    ],
                    env,
                    tmp_path / f"daphne{n}.log",
                )
            )
        for port in ports:
            wait_for(lambda port=port: port_open(port), f"daphne on port {port}", timeout=30)
        wait_for(lambda: "Caught up" in listener_log.read_text(), "pglisten to catch up")

        # Signed-out sockets in the group of a binding that sends to everyone (itemvalues; the
        # staff-only items stream sends them nothing, tests/e2e/test_authorization.py).
        clients = [connect(f"ws://127.0.0.1:{port}/values/", open_timeout=10) for port in ports]
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
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert procs[0].returncode == 0, (tmp_path / "pglisten.log").read_text()
