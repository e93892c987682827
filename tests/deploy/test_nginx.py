"""docs/deploy.md's production shape, end to end: clients reach pgbinding through nginx (TLS,
the guide's own server blocks) in front of two daphne servers, with ``manage.py pglisten`` and
channels-redis behind them and the static files served by nginx from STATIC_ROOT.

The module starts the stack once (tests/deploy/conftest.py) and its tests run in order: the
last two stop one daphne, then pglisten. A uvicorn server run with uvicorn@.service's command
line serves the same application on the side.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from tests.deploy.conftest import (
    UVICORN_UNIT,
    WS_PATH,
    Stack,
    UnitServer,
    next_change,
    subscribe,
    unavailable,
)
from tests.support.processes import ROOT, wait_until

JS_CLIENT = ROOT / "pgbinding" / "static" / "pgbinding" / "pgbinding.js"
# The database is set up for marked tests only. The stack writes and reads it from other
# processes (and flushes it when the module is done); the tests' own transaction is unused.
pytestmark = pytest.mark.django_db

#: nginx's proxy_read_timeout when none is set: a proxied socket idle this long is closed.
NGINX_DEFAULT_READ_TIMEOUT = 60


def nginx_seconds(value: str) -> float:
    """An nginx time (``90``, ``90s``, ``5m``, ``1h``, ``500ms``) in seconds."""
    found = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    assert found, f"not an nginx time: {value!r}"
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2) or "s"]
    return int(found.group(1)) * factor


def location_block(conf: str, path: str) -> str:
    found = re.search(rf"location {re.escape(path)} \{{(.*?)\n    \}}", conf, re.S)
    assert found, f"no `location {path}` block in:\n{conf}"
    return found.group(1)


def directive(block: str, name: str) -> list[str]:
    """The values of every ``name`` directive in ``block`` (comments skipped)."""
    code = "\n".join(line.split("#", 1)[0] for line in block.splitlines())
    return [" ".join(m.split()) for m in re.findall(rf"^\s*{name}\s+([^;]*);", code, re.M)]


def open_socket(stack: Stack, **options: Any) -> ClientConnection:
    """A WebSocket through nginx (wss), sending the Origin a browser on the site would."""
    ws: ClientConnection = connect(  # (Any: mypy cannot pick an overload for **options)
        stack.ws_url,
        ssl=stack.ssl_context(),
        origin=Origin(stack.origin),
        proxy=None,
        open_timeout=10,
        **options,
    )
    return ws


def new_counter(stack: Stack, key: str, n: int = 0) -> int:
    [(pk,)] = stack.sql(
        "INSERT INTO testapp_counter (key, n) VALUES (%s, %s) RETURNING id", (key, n)
    )
    return int(pk)


def set_counter(stack: Stack, key: str, n: int) -> None:
    stack.sql("UPDATE testapp_counter SET n = %s WHERE key = %s", (n, key))


def connects(stack: Stack) -> list[int]:
    return [server.websocket_connects() for server in stack.servers]


# --------------------------------------------------------------------------- the config


def test_generated_config_is_the_guides_with_websocket_proxying(stack: Stack) -> None:
    conf = stack.site_conf.read_text()
    ws = location_block(conf, WS_PATH)
    assert directive(ws, "proxy_pass") == ["http://mysite_asgi"]
    assert directive(ws, "proxy_http_version") == ["1.1"]
    headers = directive(ws, "proxy_set_header")
    assert "Upgrade $http_upgrade" in headers
    assert "Connection $connection_upgrade" in headers
    assert "Host $host" in headers
    assert "X-Forwarded-Proto $scheme" in headers
    # Idle subscribed sockets must outlive nginx's default 60 s by far (waiting that long is
    # too slow for a test: test_idle_socket_still_gets_the_next_change waits a few seconds).
    [read_timeout] = directive(ws, "proxy_read_timeout")
    [send_timeout] = directive(ws, "proxy_send_timeout")
    assert nginx_seconds(read_timeout) >= 10 * NGINX_DEFAULT_READ_TIMEOUT, read_timeout
    assert nginx_seconds(send_timeout) >= 10 * NGINX_DEFAULT_READ_TIMEOUT, send_timeout
    upstream = re.search(r"upstream mysite_asgi \{(.*?)\n\}", conf, re.S)
    assert upstream is not None
    servers = directive(upstream.group(1), "server")
    assert [s.split()[0] for s in servers] == [f"127.0.0.1:{s.port}" for s in stack.servers]
    assert directive(location_block(conf, "/static/"), "alias") == [f"{stack.static_root}/"]


def test_status_command_is_a_health_check(stack: Stack) -> None:
    result = stack.manage("pgbinding", "status", "--json", "--max-lag", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["problems"] == []
    [listener] = [entry for entry in report["listeners"] if entry["name"] == "default"]
    assert listener["state"] == "active"
    assert report["channel_layer_ok"] is True
    assert "pgbinding.layers.RedisChannelLayer" in report["channel_layer"]
    text = stack.manage("pgbinding", "status")
    assert text.returncode == 0 and "No problems." in text.stdout, text.stdout + text.stderr


# --------------------------------------------------------------------------- WebSockets


def test_subscriber_through_nginx_gets_a_change_written_with_sql(stack: Stack) -> None:
    pk = new_counter(stack, "through-nginx", 1)
    with open_socket(stack) as ws:
        reply = subscribe(ws)
        rows = {row["pk"]: row["data"] for row in reply["data"]["results"]}
        assert (rows[pk]["key"], rows[pk]["n"]) == ("through-nginx", 1), rows
        set_counter(stack, "through-nginx", 2)
        event = next_change(ws)
    assert (event["action"], event["pk"], event["data"]["n"]) == ("update", pk, 2), event


def test_sockets_through_nginx_land_on_both_servers(stack: Stack) -> None:
    pk = new_counter(stack, "both-servers")
    before = connects(stack)
    with contextlib.ExitStack() as opened:
        sockets = [opened.enter_context(open_socket(stack)) for _ in range(4)]
        for ws in sockets:
            subscribe(ws)
        wait_until(
            lambda: sum(connects(stack)) - sum(before) == 4,
            lambda: f"4 handshakes in the daphne logs (before {before}, now {connects(stack)})",
            timeout=10,
        )
        added = [now - then for now, then in zip(connects(stack), before, strict=True)]
        assert all(count >= 1 for count in added), f"handshakes per server: {added}"
        # One change, one pglisten, two servers: every socket gets it through channels-redis.
        set_counter(stack, "both-servers", 7)
        for ws in sockets:
            event = next_change(ws)
            assert (event["pk"], event["data"]["n"]) == (pk, 7), event


def test_idle_socket_still_gets_the_next_change(stack: Stack) -> None:
    pk = new_counter(stack, "idle")
    # No pings from this client: nothing crosses nginx until the change (daphne's own pings
    # start after 20 s of silence).
    with open_socket(stack, ping_interval=None) as ws:
        subscribe(ws)
        time.sleep(6)
        set_counter(stack, "idle", 1)
        event = next_change(ws)
    assert (event["pk"], event["data"]["n"]) == (pk, 1), event


def test_uvicorn_unit_serves_the_same_application(stack: Stack) -> None:
    """uvicorn@.service's command line (the guide's alternative to daphne): a subscriber gets
    the change, and stopping the server closes its socket with 1012 (service restart), after
    which pgbinding.js reconnects."""
    from websockets.exceptions import ConnectionClosedError

    pk = new_counter(stack, "uvicorn")
    server = UnitServer(stack.env, stack.run, "uvicorn", unit=UVICORN_UNIT)
    try:
        server.wait_ready(timeout=30)
        with connect(f"ws://127.0.0.1:{server.port}{WS_PATH}", proxy=None, open_timeout=10) as ws:
            subscribe(ws)
            set_counter(stack, "uvicorn", 4)
            event = next_change(ws)
            assert (event["pk"], event["data"]["n"]) == (pk, 4), event
            server.proc.terminate()
            with pytest.raises(ConnectionClosedError) as closed:
                while True:
                    ws.recv(timeout=15)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012, closed.value
        # A clean stop: uvicorn finishes, then dies of the SIGTERM it got (which systemd
        # counts as a clean exit).
        assert server.proc.wait(20) in (0, -signal.SIGTERM), server.tail()
        assert "Finished server process" in server.output()
    finally:
        server.close()


# --------------------------------------------------------------------------- static files


def test_nginx_serves_the_collected_js_client(stack: Stack) -> None:
    url = f"{stack.origin}/static/pgbinding/pgbinding.js"
    with urllib.request.urlopen(url, context=stack.ssl_context(), timeout=10) as response:
        assert response.status == 200
        assert "javascript" in response.headers["Content-Type"]
        body = response.read()
    assert body == JS_CLIENT.read_bytes()
    assert (stack.static_root / "pgbinding" / "pgbinding.js").is_file()
    # From STATIC_ROOT by nginx: no ASGI server saw the request.
    assert all("/static/" not in server.output() for server in stack.servers)


def test_plain_http_redirects_to_https(stack: Stack) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=10)
    try:
        conn.request("GET", "/static/pgbinding/pgbinding.js")
        response = conn.getresponse()
        assert response.status == 301
        assert response.getheader("Location") == "https://127.0.0.1/static/pgbinding/pgbinding.js"
    finally:
        conn.close()


# --------------------------------------------------------------------------- a browser


@pytest.fixture
def browser() -> Iterator[Any]:
    """Chromium, launched as tests/browser does. Function-scoped: Playwright's sync API runs an
    event loop in this thread while it is up, and Django's test transaction (the django_db
    mark) must be entered and left outside it."""
    from tests.browser.conftest import CHROMIUM_ARGS, TIMEOUT_MS, chromium_path

    path = chromium_path()
    if path is None:
        unavailable(
            "no Chromium (/usr/bin/chromium or chromium on PATH); run scripts/install-browser"
        )
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as exc:
        unavailable(f"the playwright package cannot be imported ({exc})")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def test_browser_page_served_by_nginx_shows_sql_changes_live(stack: Stack, browser: Any) -> None:
    from playwright.sync_api import expect

    new_counter(stack, "browser-a", 1)
    context = browser.new_context(ignore_https_errors=True)  # the test's own certificate
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{stack.origin}/static/deploy-test/board.html")
        expect(page.locator("#state")).to_have_text("open")
        expect(page.locator('li[data-key="browser-a"]')).to_have_text("browser-a=1")
        set_counter(stack, "browser-a", 42)
        new_counter(stack, "browser-b", 5)
        expect(page.locator('li[data-key="browser-a"]')).to_have_text("browser-a=42")
        expect(page.locator('li[data-key="browser-b"]')).to_have_text("browser-b=5")
        assert errors == []
    finally:
        context.close()


# --------------------------------------------------------------------------- a restart (last)


def test_a_stopped_server_is_skipped_and_its_clients_resume_on_the_other(stack: Stack) -> None:
    """One daphne stops (a rolling restart): its sockets close, new handshakes go to the
    other one, and a client that resubscribes there with ``since`` gets what it missed: no
    sticky sessions are needed."""
    pk = new_counter(stack, "restart")
    placed: dict[int, tuple[ClientConnection, str]] = {}
    with contextlib.ExitStack() as opened:
        for _ in range(6):  # least_conn alternates; a few more in case it did not
            before = connects(stack)
            ws = opened.enter_context(open_socket(stack))
            position = subscribe(ws)["data"]["position"]

            def handshake_logged(before: list[int] = before) -> bool:
                return sum(connects(stack)) > sum(before)

            wait_until(handshake_logged, "the handshake's log line")
            [server] = [
                i for i, (a, b) in enumerate(zip(connects(stack), before, strict=True)) if a > b
            ]
            placed.setdefault(server, (ws, position))
            if len(placed) == 2:
                break
        assert len(placed) == 2, f"all sockets went to server {list(placed)}"
        stack.servers[1].terminate()
        doomed, since = placed[1]
        with pytest.raises(ConnectionClosed):
            while True:
                doomed.recv(timeout=10)

        set_counter(stack, "restart", 3)  # while the client of server 1 is away
        event = next_change(placed[0][0])
        assert (event["pk"], event["data"]["n"]) == (pk, 3), event

        before = connects(stack)
        with open_socket(stack) as again:
            again.send(
                json.dumps(
                    {
                        "stream": "counters",
                        "payload": {"action": "subscribe", "request_id": "s2", "since": since},
                    }
                )
            )
            replayed = []
            while True:
                payload = json.loads(again.recv(timeout=15))["payload"]
                if payload.get("request_id") == "s2" and "status" in payload:
                    assert payload["status"] == 200, payload
                    break
                replayed.append(payload)
        assert [(p["action"], p["pk"], p["data"]["n"]) for p in replayed] == [("update", pk, 3)]
        wait_until(lambda: connects(stack)[0] > before[0], "the handshake on server 0")
        assert connects(stack)[1] == before[1]


def test_status_fails_once_the_listener_is_stopped(stack: Stack) -> None:
    """The health check's other half: no active listener is a problem (exit 1), said in words.
    pglisten stops cleanly on SIGTERM, as systemctl stop sends it."""
    assert stack.listener.terminate() == 0, stack.listener.tail()
    result = stack.manage("pgbinding", "status", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert any("is stopped" in problem for problem in report["problems"]), report["problems"]
