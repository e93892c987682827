"""Fixtures of the real-browser tests: a headless Chromium (Playwright) and the demo server.

The demo (``example/run_demo.py``) runs against a Postgres this module starts itself, so that
stopping and starting the demo process (the restart test) keeps the database.

Without Chromium (``/usr/bin/chromium`` or ``chromium`` on PATH; ``CHROMIUM`` names another)
or the ``playwright`` package the tests are skipped -- but with ``CI=true`` they fail.
``scripts/install-browser`` installs Chromium; ``pip install playwright`` the package (its
driver is in the wheel; no ``playwright install`` needed, the system Chromium is used).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devservers import EmbeddedPostgres, free_port
from tests.demo_process import Output, demo_env, start_demo

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Default time a browser expectation may take (ms).
TIMEOUT_MS = 10_000


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _unavailable(reason: str) -> None:
    """Skip (fail on CI) with a reason that is also printed."""
    print(f"\nbrowser tests: {reason}", file=sys.stderr)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        _unavailable(
            "no Chromium (/usr/bin/chromium or chromium on PATH); run scripts/install-browser"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        _unavailable(f"the playwright package cannot be imported ({exc}); pip install playwright")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


class Demo:
    """``example/run_demo.py`` on a fixed port, with ``DATABASE_URL`` set to our Postgres."""

    def __init__(self, database_url: str, port: int, log: Path) -> None:
        self.database_url = database_url
        self.port = port
        self.base = f"http://127.0.0.1:{port}/"
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.output: Output | None = None
        self.outputs: list[str] = []

    def start(self, timeout: float = 30) -> None:
        env = {**demo_env(), "DATABASE_URL": self.database_url}
        # The port was just released by the previous run: retry while it is still taken.
        deadline = time.monotonic() + timeout
        while True:
            self.proc, self.output = start_demo("--port", str(self.port), env=env)
            while time.monotonic() < deadline:
                if re.search(r"Liveboard is running at\s+(\S+)", self.output.text):
                    return
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
            else:
                self.stop()
                raise AssertionError(f"the demo did not start within {timeout} s:\n{self.text}")
            self.output.thread.join(2)
            text = self.output.text
            self.outputs.append(text)
            if "is in use" not in text or time.monotonic() > deadline:
                raise AssertionError(f"the demo exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGINT, as Ctrl-C: the demo stops daphne (our Postgres keeps running)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.output is not None
        self.output.thread.join(5)
        self.outputs.append(self.output.text)
        self.log.write_text("\n".join(self.outputs))
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def text(self) -> str:
        return "\n".join([*self.outputs, self.output.text if self.output else ""])

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run SQL from outside Django (as psql would); return the rows, if any."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def new_item(self, name: str, value: int = 0, owner: str | None = "demo") -> int:
        """Insert an item with SQL (the page shows it live); return its pk."""
        [(pk,)] = self.sql(
            "INSERT INTO liveboard_item (name, value, status, owner_id)"
            " VALUES (%s, %s, 'open', (SELECT id FROM auth_user WHERE username = %s))"
            " RETURNING id",
            (name, value, owner),
        )
        return int(pk)


@pytest.fixture(scope="module")
def demo(
    chromium: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Demo]:
    """The demo of one test module, its output kept in ``browser-demo-<module>.log``."""
    module = request.module.__name__.rpartition(".")[2]
    root = tmp_path_factory.mktemp("browser-demo")
    postgres = EmbeddedPostgres(root / "pgdata")
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        database_url = postgres.start().create_database("liveboard")
        server = Demo(database_url, free_port(), ARTIFACTS / f"browser-demo-{module}.log")
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        postgres.stop()


@pytest.fixture
def open_page(
    browser: Any, demo: Demo, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Any]]:
    """``open_page(username=None, **context_options)``: the board in a fresh browser context
    (its own cookies; ``context_options`` go to ``browser.new_context``, e.g. a viewport),
    signed in through the login form when a username is given. Each page's console errors
    are kept in ``page.console_errors``, the responses with a status of 400 or more in
    ``page.bad_responses`` (``"404 http://..."``); every page is screenshotted at the end."""
    contexts: list[Any] = []
    pages: list[Any] = []

    def open_page(username: str | None = None, **context_options: Any) -> Any:
        context = browser.new_context(**context_options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.console_errors = []
        page.bad_responses = []
        page.on(
            "console",
            lambda msg: page.console_errors.append(msg.text) if msg.type == "error" else None,
        )
        page.on(
            "response",
            lambda response: (
                page.bad_responses.append(f"{response.status} {response.url}")
                if response.status >= 400
                else None
            ),
        )
        if username is None:
            page.goto(demo.base)
        else:
            page.goto(demo.base + "accounts/login/?next=/")
            page.fill("input[name=username]", username)
            page.fill("input[name=password]", username)  # demo/demo, other/other
            with page.expect_navigation():
                page.click("form button")
            assert page.url == demo.base, page.url
        pages.append(page)
        return page

    yield open_page
    name = re.sub(r"\W+", "-", request.node.name).strip("-")
    for index, page in enumerate(pages):
        suffix = "" if index == 0 else f"-{index + 1}"
        try:
            page.screenshot(path=str(ARTIFACTS / f"browser-{name}{suffix}.png"), full_page=True)
        except Exception as exc:  # a screenshot must not hide the test's own result
            print(f"screenshot of {name}{suffix} failed: {exc}", file=sys.stderr)
    for index, page in enumerate(pages):
        if page.console_errors:  # shown with a failure's captured output
            print(f"console errors of page {index + 1}:", *page.console_errors, sep="\n  ")
    for context in contexts:
        context.close()
