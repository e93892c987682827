"""The demo (``scripts/demo`` without the venv part): it starts, serves the page and the live
socket, shows an outside ``UPDATE`` live, enforces the example's permissions, and stops
everything it started on Ctrl-C -- but not a Postgres another running demo uses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from devservers import EmbeddedPostgres, free_port
from tests.demo_process import start_demo

ROOT = Path(__file__).resolve().parents[2]
DEMO_ITEMS = {"Water the plants", "Fix the bike", "Paint the fence", "Read docs/design-notes.md"}


def request(ws: ClientConnection, action: str, request_id: str, **payload: Any) -> dict[str, Any]:
    frame = {"stream": "items", "payload": {"action": action, "request_id": request_id, **payload}}
    ws.send(json.dumps(frame))
    while True:
        reply: dict[str, Any] = json.loads(ws.recv(timeout=10))["payload"]
        if reply.get("request_id") == request_id:
            return reply


def events(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    frames = [json.loads(ws.recv(timeout=10)) for _ in range(count)]
    assert {f["stream"] for f in frames} == {"items"}
    return [f["payload"] for f in frames]


def sign_in(base: str, username: str, password: str) -> str | None:
    """Sign in through Django's login form; return the session cookie."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(base + "accounts/login/", timeout=10) as response:
        page = response.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, page
    form = {
        "username": username,
        "password": password,
        "csrfmiddlewaretoken": token.group(1),
        "next": "/",
    }
    data = urllib.parse.urlencode(form).encode()
    with opener.open(base + "accounts/login/", data=data, timeout=10) as response:
        assert f"Signed in as <b>{username}</b>" in response.read().decode()
    return next(c.value for c in jar if c.name == "sessionid")


def leftovers(*markers: str) -> list[str]:
    """Command lines of running processes (zombies aside) that mention any of ``markers``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["pid"] == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        if any(m in cmdline for m in markers):
            found.append(cmdline)
    return found


def stop_leftover_postgres(datadir: Path) -> None:
    """After a failure: stop a Postgres the demo left running on ``datadir`` (adopt it, then
    let go of it: nobody else uses it)."""
    postgres = EmbeddedPostgres(datadir / "pgdata")
    if postgres.is_running():
        postgres.start().stop()


def interrupt(proc: subprocess.Popen[str] | None) -> None:
    """Ctrl-C for a demo still running (SIGKILL if it does not stop)."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_demo_serves_live_updates_and_stops_cleanly(tmp_path: Path) -> None:
    started = time.monotonic()
    port = free_port()
    datadir = tmp_path / "demo"
    proc, output = start_demo("--data-dir", str(datadir), "--port", str(port))
    postgres = EmbeddedPostgres(datadir / "pgdata")
    try:
        base = output.wait_for(r"Liveboard is running at\s+(\S+)", proc)
        assert base == f"http://127.0.0.1:{port}/"
        database_url = output.wait_for(r"psql (postgresql://\S+) -c", proc)
        assert "UPDATE liveboard_item SET value = value + 1;" in output.text
        assert "demo / demo" in output.text

        with urllib.request.urlopen(base, timeout=10) as response:
            assert response.status == 200
            page = response.read().decode()
        assert "Liveboard" in page and "/binding/" in page and "/accounts/login/" in page
        # The page names its icon, and /favicon.ico (asked for by clients anyway) leads there.
        icon = re.search(r'<link rel="icon" type="image/svg\+xml" href="([^"]+)"', page)
        assert icon, page
        for url in (base + icon.group(1).lstrip("/"), base + "favicon.ico"):
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200, url
                assert response.headers["Content-Type"].startswith("image/svg+xml"), url

        ws_url = f"ws://127.0.0.1:{port}/binding/"
        origin = Origin(f"http://127.0.0.1:{port}")
        # Another site's page may not use the visitor's session on our socket.
        with pytest.raises(InvalidStatus):
            connect(ws_url, origin=Origin("http://evil.example"), open_timeout=10).close()

        with connect(ws_url, origin=origin, open_timeout=10) as watcher:
            reply = request(watcher, "subscribe", "s1")
            assert reply["status"] == 200, reply
            rows = {r["data"]["name"]: r for r in reply["data"]["results"]}
            assert set(rows) == DEMO_ITEMS
            values = {r["pk"]: r["data"]["value"] for r in rows.values()}

            # Anonymous visitors read but do not write.
            reply = request(watcher, "update", "u0", pk=rows["Fix the bike"]["pk"], data={})
            assert reply["status"] == 403

            # The outside write the demo prints, as psql would run it.
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("UPDATE liveboard_item SET value = value + 1;")
            updates = events(watcher, len(DEMO_ITEMS))
            assert {p["action"] for p in updates} == {"update"}
            assert {p["subscription"] for p in updates} == {"s1"}
            assert {p["pk"]: p["data"]["value"] for p in updates} == {
                pk: value + 1 for pk, value in values.items()
            }

            # Signed in as demo: +1 on your own item works, on someone else's it is refused.
            session = sign_in(base, "demo", "demo")
            headers = {"Cookie": f"sessionid={session}"}
            with connect(ws_url, origin=origin, additional_headers=headers) as editor:
                mine = rows["Water the plants"]["pk"]
                reply = request(editor, "update", "u1", pk=mine, data={"value": 100})
                assert reply["status"] == 200, reply
                theirs = rows["Paint the fence"]["pk"]
                reply = request(editor, "update", "u2", pk=theirs, data={"value": 100})
                assert reply["status"] == 403, reply
                # Nor can you make it yours (the owner is read-only: refused before anything
                # else is looked at).
                me = rows["Water the plants"]["data"]["owner"]
                reply = request(editor, "update", "u3", pk=theirs, data={"owner": me})
                assert reply["status"] == 400, reply
                # Nor give your own item to someone else: the owner is the server's to set.
                other = rows["Paint the fence"]["data"]["owner"]
                reply = request(editor, "update", "u4", pk=mine, data={"owner": other})
                assert reply["status"] == 400, reply
                assert reply["errors"] == {"owner": ["This field is read-only."]}
                reply = request(editor, "create", "c1", data={"name": "given", "owner": other})
                assert reply["status"] == 400, reply
            [event] = events(watcher, 1)
            assert (event["action"], event["pk"], event["data"]["value"]) == ("update", mine, 100)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, output.text
        output.thread.join(5)
        assert "stopping Postgres" in output.text
        assert not postgres.is_running()
        assert leftovers(str(datadir), f"-p {port} liveboard.asgi") == []
        assert time.monotonic() - started < 30
    finally:
        interrupt(proc)
        stop_leftover_postgres(datadir)


def test_demo_production_shape_pglisten_redis_two_servers(tmp_path: Path) -> None:
    """``scripts/demo --production``: a separate pglisten process, channels-redis (a private
    Redis) and two daphne servers; an outside write reaches sockets on both servers."""
    from devservers import port_is_free

    port = free_port()
    while not port_is_free("127.0.0.1", port + 1):
        port = free_port()
    datadir = tmp_path / "demo"
    proc, output = start_demo("--production", "--data-dir", str(datadir), "--port", str(port))
    try:
        output.wait_for(r"Liveboard is running at\s+(\S+)", proc, timeout=40)
        assert "manage.py pglisten" in output.text and "Redis on" in output.text
        database_url = output.wait_for(r"psql (postgresql://\S+) -c", proc)
        sockets = [
            connect(
                f"ws://127.0.0.1:{p}/binding/",
                origin=Origin(f"http://127.0.0.1:{p}"),
                open_timeout=10,
            )
            for p in (port, port + 1)
        ]
        try:
            for ws in sockets:
                assert request(ws, "subscribe", "s")["status"] == 200
            output.wait_for(r"(Caught up)", proc)
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("UPDATE liveboard_item SET value = value + 1;")
            for ws in sockets:
                updates = events(ws, len(DEMO_ITEMS))
                assert {p["action"] for p in updates} == {"update"}
        finally:
            for ws in sockets:
                ws.close()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    output.thread.join(5)
    assert code == 0, output.text
    assert "stopping pglisten" in output.text and "stopping Redis" in output.text
    assert leftovers(str(datadir), f"-p {port} liveboard.asgi", f"-p {port + 1} liveboard") == []


def test_stopping_a_demo_keeps_the_postgres_another_demo_uses(tmp_path: Path) -> None:
    """Two demos on one data directory: the second uses the Postgres the first started.
    Stopping the second (Ctrl-C) leaves that Postgres running: the first still serves its
    page, its socket and its database, outside writes included. Stopping the first, the last
    user, stops Postgres."""
    datadir = tmp_path / "demo"
    first_port, second_port = free_port(), free_port()
    first, first_output = start_demo("--data-dir", str(datadir), "--port", str(first_port))
    second: subprocess.Popen[str] | None = None
    try:
        base = first_output.wait_for(r"Liveboard is running at\s+(\S+)", first)
        database_url = first_output.wait_for(r"psql (postgresql://\S+) -c", first)
        second, second_output = start_demo("--data-dir", str(datadir), "--port", str(second_port))
        second_output.wait_for(r"Liveboard is running at\s+(\S+)", second)
        assert second_output.wait_for(r"psql (postgresql://\S+) -c", second) == database_url

        second.send_signal(signal.SIGINT)
        assert second.wait(20) == 0, second_output.text
        second_output.thread.join(5)
        assert "leaving Postgres running" in second_output.text, second_output.text
        assert "stopping Postgres" not in second_output.text
        assert leftovers(f"-p {second_port} liveboard.asgi") == []

        # The first demo still serves its page, its socket and its database.
        with urllib.request.urlopen(base, timeout=10) as response:
            assert response.status == 200
            assert "Liveboard" in response.read().decode()
        origin = Origin(f"http://127.0.0.1:{first_port}")
        with connect(f"ws://127.0.0.1:{first_port}/binding/", origin=origin) as watcher:
            reply = request(watcher, "subscribe", "s1")
            assert reply["status"] == 200, reply
            assert {r["data"]["name"] for r in reply["data"]["results"]} == DEMO_ITEMS
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("UPDATE liveboard_item SET value = value + 1;")
            assert {p["action"] for p in events(watcher, len(DEMO_ITEMS))} == {"update"}

        first.send_signal(signal.SIGINT)
        assert first.wait(20) == 0, first_output.text
        first_output.thread.join(5)
        assert "stopping Postgres" in first_output.text
        assert not EmbeddedPostgres(datadir / "pgdata").is_running()
        assert leftovers(str(datadir), f"-p {first_port} liveboard.asgi") == []
    finally:
        interrupt(second)
        interrupt(first)
        stop_leftover_postgres(datadir)
