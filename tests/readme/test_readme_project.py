"""README.md's "Using it" code, run as written: a fresh Django project in a temporary directory.

The ```python blocks of README.md are read at test time and picked by their content, so this
test breaks when the README changes in a way that stops working; there is no second copy of
the README's code here. The project:

- ``mysite/settings.py``: the README's settings fragment (its ``# ... django.contrib apps ...``
  placeholder line replaced by the contrib apps), what every project has and the README does
  not show (SECRET_KEY, DATABASES on a fresh database of the test server, MIDDLEWARE, ...),
  and the channel-layer block of the variant;
- ``myapp/models.py``: a ``Document`` the README's binding fits; ``myapp/bindings.py``: the
  README's binding block;
- ``mysite/asgi.py``: the README's asgi.py block (plus its ``with_listener`` lines for the
  one-process variant).

The two variants differ only in ``mysite`` (settings and asgi.py), so the project holds one
``mysite`` package per variant (``sites/<variant>/mysite``, put on ``PYTHONPATH``) beside the
shared ``manage.py``, ``myapp`` and its migrations; one database serves both. ``makemigrations``
and ``migrate`` run once. Each case (variant x ASGI server) starts its own processes on free
ports -- the server, and for the several-process variant a private Redis and ``manage.py
pglisten`` -- and stops them afterwards, whatever happened.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgbinding
from devservers import free_port
from tests.support.processes import (
    ManagedProcess,
    ProcessGroup,
    RedisServer,
    WsClient,
    port_open,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PGBINDING_JS = Path(pgbinding.__file__).parent / "static" / "pgbinding" / "pgbinding.js"

ONE_PROCESS = "one-process"
SEVERAL_PROCESSES = "several-processes"
#: The Origin non-browser clients send (README: ``Origin: https://<a host in ALLOWED_HOSTS>``).
ORIGIN = "https://127.0.0.1"
#: How long a change may take from commit to client.
DELIVERY_TIMEOUT = 15


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``; under ``CI=true`` fail instead: there, everything must run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: this must run)", pytrace=False)
    pytest.skip(reason)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- README's code


def python_blocks() -> list[str]:
    """The contents of README.md's fenced ```python blocks, in order."""
    text = README.read_text()
    return re.findall(r"^```python\n(.*?)^```\s*$", text, flags=re.DOTALL | re.MULTILINE)


def readme_block(*needles: str) -> str:
    """The one ```python block of README.md that contains every one of ``needles``."""
    found = [block for block in python_blocks() if all(n in block for n in needles)]
    assert len(found) == 1, (
        f"README.md should have exactly one ```python block containing {needles!r}; "
        f"found {len(found)}"
    )
    return found[0]


def manage_commands(needle: str) -> list[list[str]]:
    """The ``python manage.py ...`` commands of the one ```sh block of README.md containing
    ``needle``, as the arguments after ``manage.py`` (comments dropped)."""
    text = README.read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```\s*$", text, flags=re.DOTALL | re.MULTILINE)
    found = [block for block in blocks if needle in block]
    assert len(found) == 1, (
        f"README.md should have exactly one ```sh block containing {needle!r}; found {len(found)}"
    )
    commands = [shlex.split(line, comments=True) for line in found[0].splitlines()]
    assert all(c[:2] == ["python", "manage.py"] for c in commands if c), found[0]
    return [c[2:] for c in commands if c]


#: The line of the README's INSTALLED_APPS that stands for Django's own apps.
CONTRIB_PLACEHOLDER = "    # ... django.contrib apps ...\n"
CONTRIB_APPS = textwrap.indent(
    "\n".join(
        f'"django.contrib.{app}",' for app in ("auth", "contenttypes", "sessions", "staticfiles")
    )
    + "\n",
    "    ",
)


def settings_fragment() -> str:
    block = readme_block("INSTALLED_APPS", "ASGI_APPLICATION")
    assert CONTRIB_PLACEHOLDER in block, (
        f"the README's INSTALLED_APPS no longer has the line {CONTRIB_PLACEHOLDER!r} "
        "that this test fills in with the django.contrib apps"
    )
    return block.replace(CONTRIB_PLACEHOLDER, CONTRIB_APPS)


# --------------------------------------------------------------------------- the project

# What a project has that the README does not show (mostly as `startproject` writes it).
MANAGE_PY = """\
#!/usr/bin/env python
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
"""

SETTINGS_HEAD = """\
import os

SECRET_KEY = "readme-test-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
"""

SETTINGS_TAIL = """\
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "mysite.urls"
DATABASES = {{"default": {database!r}}}
STATIC_URL = "static/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
"""

URLS_PY = """\
urlpatterns = []
"""

MODELS_PY = """\
from django.conf import settings
from django.db import models


class Document(models.Model):
    title = models.CharField(max_length=200)
    text = models.TextField(blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
"""

#: Prints the user's id, another user's id, and a session of the user (as a login would).
MAKE_USERS = """\
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore

User = get_user_model()
user = User.objects.create_user({name!r}, password="secret")
other = User.objects.create_user({name!r} + "-other", password="secret")
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(json.dumps({{"user": user.pk, "other": other.pk, "session": session.session_key}}))
"""


@dataclass
class Project:
    root: Path
    #: libpq URL of the project's database.
    database_url: str
    logs: Path
    #: ``manage.py migrate`` as the README runs it, on the fresh database.
    migrate: subprocess.CompletedProcess[str] | None = None

    def site(self, variant: str) -> Path:
        return self.root / "sites" / variant

    def env(self, variant: str, /, **extra: str) -> dict[str, str]:
        """The environment of the project's processes: nothing of the test suite's Django."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH") and not k.startswith("PGBINDING_")
        }
        env["PYTHONPATH"] = str(self.site(variant))
        env["PYTHONUNBUFFERED"] = "1"
        return {**env, **extra}

    def run(
        self, variant: str, *args: str, timeout: float = 120, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``python manage.py ARGS`` in the project (``env``: on top of ``self.env(variant)``)."""
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.root,
            env=self.env(variant, **(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def manage(
        self, variant: str, *args: str, timeout: float = 120, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``python manage.py ARGS`` in the project; fails the test on a non-zero exit."""
        result = self.run(variant, *args, timeout=timeout, env=env)
        assert result.returncode == 0, (
            f"manage.py {' '.join(args)} exited with {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
        return result

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run SQL from outside Django, as psql would; return the rows, if any."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def new_document(self, title: str, owner: int, text: str = "") -> int:
        [(pk,)] = self.sql(
            "INSERT INTO myapp_document (title, text, owner_id) VALUES (%s, %s, %s) RETURNING id",
            (title, text, owner),
        )
        return int(pk)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def build_project(root: Path, database: dict[str, Any], logs: Path, database_url: str) -> Project:
    project = Project(root, database_url, logs)
    write(root / "manage.py", MANAGE_PY)
    write(root / "myapp" / "__init__.py", "")
    write(root / "myapp" / "migrations" / "__init__.py", "")
    write(root / "myapp" / "models.py", MODELS_PY)
    write(root / "myapp" / "bindings.py", readme_block("class DocumentBinding"))

    installed = settings_fragment()
    asgi = readme_block("get_asgi_application", "ProtocolTypeRouter")
    in_memory = readme_block("CHANNEL_LAYERS", "InMemoryChannelLayer")
    redis = readme_block("CHANNEL_LAYERS = channel_layers(")
    with_listener = readme_block("with_listener(application)")
    variants = {
        ONE_PROCESS: (in_memory, asgi + "\n\n" + with_listener),
        SEVERAL_PROCESSES: (redis, asgi),
    }
    for variant, (channel_layers, asgi_py) in variants.items():
        mysite = project.site(variant) / "mysite"
        settings = "\n".join(
            [
                SETTINGS_HEAD,
                installed,
                SETTINGS_TAIL.format(database=database),
                channel_layers,
            ]
        )
        write(mysite / "__init__.py", "")
        write(mysite / "settings.py", settings)
        write(mysite / "urls.py", URLS_PY)
        write(mysite / "asgi.py", asgi_py)
    return project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The README's project on a fresh database of the test server, migrated."""
    server_url = os.environ.get("PGBINDING_TEST_DATABASE_URL")
    assert server_url, "tests.servers sets PGBINDING_TEST_DATABASE_URL"
    name = f"readme_{uuid.uuid4().hex[:12]}"
    maintenance = make_conninfo(server_url, dbname="postgres")
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        params = conninfo_to_dict(make_conninfo(server_url, dbname=name))
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": params.get("user", ""),
            "PASSWORD": params.get("password", ""),
            "HOST": params.get("host", ""),
            "PORT": str(params.get("port", "")),
        }
        root = tmp_path_factory.mktemp("readme-project")
        logs = tmp_path_factory.mktemp("readme-logs")
        project = build_project(root, database, logs, make_conninfo(server_url, dbname=name))

        # §3: makemigrations writes the trigger operation; migrate installs it.
        makemigrations, migrate = manage_commands("manage.py makemigrations")
        assert makemigrations[0] == "makemigrations" and migrate[0] == "migrate"
        project.manage(ONE_PROCESS, *makemigrations)
        migrations = sorted((root / "myapp" / "migrations").glob("0*.py"))
        texts = "\n".join(path.read_text() for path in migrations)
        assert "CreateModel" in texts and "InstallBindingTrigger" in texts, (
            f"makemigrations wrote {[p.name for p in migrations]}, without "
            f"InstallBindingTrigger:\n{texts}"
        )
        project.migrate = project.run(ONE_PROCESS, *migrate)
        if project.migrate.returncode != 0:
            # test_migrate_as_written reports it; the rest of the README is tested regardless.
            project.manage(ONE_PROCESS, *migrate, "--skip-checks")
        # "The same trigger check is a Django system check (pgbinding.E001), run by migrate
        # and manage.py check --database default": it passes once migrate has run.
        project.manage(ONE_PROCESS, "check", "--database", "default")
        # "running it again writes nothing"
        again = project.manage(ONE_PROCESS, "makemigrations", "--check", "--dry-run")
        assert "No changes detected" in again.stdout, again.stdout
        [(triggers,)] = project.sql(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'myapp_document'::regclass"
            " AND NOT tgisinternal"
        )
        assert triggers > 0, "migrate installed no trigger on myapp_document"
        yield project
    finally:
        with psycopg.connect(maintenance, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_migrate_as_written(project: Project) -> None:
    """§3: ``python manage.py migrate`` (after ``makemigrations``) installs the trigger on a
    fresh database. (The other checks run after ``migrate --skip-checks`` if it does not.)"""
    result = project.migrate
    assert result is not None
    assert result.returncode == 0, (
        f"`{shlex.join(['python', *result.args[1:]])}`, as README.md §3 says, exited with "
        f"{result.returncode} on a fresh database:\n{result.stdout}{result.stderr}"
    )


# --------------------------------------------------------------------------- processes


class ProjectProcess(ManagedProcess):
    """A :class:`ManagedProcess` run in the project's directory (``ManagedProcess`` itself
    runs in the checkout): output to a log file, its own session, stopped by ``close()``."""

    #: The port a server was told to listen on.
    port = 0

    def __init__(self, args: list[str], env: dict[str, str], log: Path, name: str, cwd: Path):
        self.args, self.env, self.log, self.name = args, env, log, name
        self.paused = False
        self.started_at = time.monotonic()
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        atexit.register(self.kill)


def asgi_server_args(server: str, port: int) -> list[str]:
    """The command line of ``server`` serving the README's ``mysite.asgi:application``."""
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    # uvicorn's default WebSocket implementation (--ws auto: websockets' sans-I/O one).
    return [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)]


def start_server(
    project: Project, variant: str, server: str, env: dict[str, str]
) -> ProjectProcess:
    """Start ``server`` on a free port and wait until it listens (retrying on another port if
    the one picked was taken meanwhile); return the process, with ``port`` set."""
    for attempt in range(3):
        port = free_port()
        proc = ProjectProcess(
            [*asgi_server_args(server, port), "mysite.asgi:application"],
            env,
            project.logs / f"{variant}-{server}-{port}.log",
            f"{server} ({variant})",
            project.root,
        )
        proc.port = port
        deadline = time.monotonic() + 30
        while proc.running and not port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.running and port_open(port):
            return proc
        proc.close()
        if "in use" not in proc.output() or attempt == 2:
            raise AssertionError(
                f"{proc.name} did not listen on port {port} (exit code {proc.returncode}):\n"
                f"{proc.tail(40)}"
            )
    raise AssertionError("unreachable")


@dataclass
class Site:
    """One case: the README's project served by one ASGI server, in one variant."""

    project: Project
    variant: str
    server: str
    port: int
    user: int
    other: int
    session: str
    procs: list[ManagedProcess] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        """The end of every process's output, for failure messages."""
        return "\n".join(f"--- {p.name} ---\n{p.tail(30)}" for p in self.procs)


CASES = [
    pytest.param((variant, server), id=f"{variant}-{server}", marks=marks)
    for variant, marks in ((ONE_PROCESS, ()), (SEVERAL_PROCESSES, (pytest.mark.redis,)))
    for server in ("daphne", "uvicorn")
]


@pytest.fixture(scope="module", params=CASES)
def site(request: pytest.FixtureRequest, project: Project) -> Iterator[Site]:
    """§4 run as the README says, for one variant under one server: the in-process listener
    (``with_listener``) with the in-memory layer, or ``manage.py pglisten`` with channels-redis
    on a private Redis."""
    variant, server = request.param
    if server == "uvicorn":
        try:
            import uvicorn  # noqa: F401
        except ImportError as exc:
            unavailable(f"uvicorn cannot be imported ({exc}); pip install -e '.[test]'")
    started = time.monotonic()
    procs = ProcessGroup()
    try:
        env = project.env(variant)
        listener = None
        if variant == SEVERAL_PROCESSES:
            try:
                redis = procs.add(RedisServer(project.logs).start())
            except Exception as exc:
                unavailable(f"no private Redis server here: {exc}")
            env = project.env(variant, REDIS_URL=redis.url)
            listener = procs.add(
                ProjectProcess(
                    [sys.executable, "manage.py", *manage_commands("manage.py pglisten")[0]],
                    env,
                    project.logs / f"pglisten-{server}.log",
                    f"pglisten ({server})",
                    project.root,
                )
            )
        asgi = procs.add(start_server(project, variant, server, env))
        name = f"{variant}-{server}"
        made = project.manage(variant, "shell", "-c", MAKE_USERS.format(name=name), env=env)
        ids = json.loads(made.stdout.strip().splitlines()[-1])
        if listener is not None:
            listener.wait_output("waiting for changes", timeout=30)
        case = Site(
            project,
            variant,
            server,
            asgi.port,
            ids["user"],
            ids["other"],
            ids["session"],
            [p for p in procs.items if isinstance(p, ManagedProcess)],
        )
        print(f"\n{name}: started in {time.monotonic() - started:.1f} s")
        yield case
    finally:
        procs.close()


# --------------------------------------------------------------------------- the checks


def test_websocket_client_receives_its_own_rows_inserted_with_sql(site: Site) -> None:
    """A `websockets` client with the session cookie and an Origin in ALLOWED_HOSTS subscribes
    to `documents`; a row of its user inserted with plain SQL arrives as `create` with the
    row's data, a row of another user does not arrive. Without an Origin the handshake is
    refused (the README's note on AllowedHostsOriginValidator)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = f"ws://127.0.0.1:{site.port}/binding/"
    cookie = f"sessionid={site.session}"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"Cookie": cookie}, proxy=None, open_timeout=10)
    assert refused.value.response.status_code == 403

    client = WsClient(
        url,
        f"ws-{site.variant}-{site.server}",
        subscribe="documents",
        headers={"Cookie": cookie, "Origin": ORIGIN},
    ).start()
    try:
        client.wait_subscribed(timeout=20)
        reply = client.connections[-1].reply
        assert reply is not None and reply["data"]["results"] == [], reply

        started = time.monotonic()
        others = site.project.new_document("not yours", site.other, "someone else's")
        mine = site.project.new_document("my plan", site.user, "written with psql")

        def events() -> list[dict[str, Any]]:
            frames, _ = client.snapshot()
            return [
                f.payload for f in frames if "action" in f.payload and "status" not in f.payload
            ]

        wait_until(
            lambda: any(e.get("pk") == mine for e in events()),
            lambda: f"the create event of document {mine}: {client.describe()}\n{site.logs()}",
            timeout=DELIVERY_TIMEOUT,
        )
        took = time.monotonic() - started
        print(f"\n{site.variant}/{site.server}: SQL insert to WebSocket client {took:.3f} s")
        [event] = [e for e in events() if e.get("pk") == mine]
        assert event["action"] == "create"
        assert event["model"] == "myapp.document"
        assert event["subscription"] == "s1"
        assert event["data"] == {
            "title": "my plan",
            "text": "written with psql",
            "owner": site.user,
        }
        # The other user's row was logged first: had it been sent, it would be here by now.
        assert [e for e in events() if e.get("pk") == others] == []
        assert len(client.connections) == 1 and not client.connect_failures, client.describe()
    finally:
        client.close()


def test_static_pgbinding_js_is_served(site: Site) -> None:
    """The README's asgi.py serves STATIC_URL: GET /static/pgbinding/pgbinding.js is the file,
    as a JavaScript type a browser accepts for a module."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{site.base}/static/pgbinding/pgbinding.js", timeout=10) as response:
        assert response.status == 200
        body = response.read()
        content_type = response.headers.get("Content-Type", "")
    assert body == PGBINDING_JS.read_bytes()
    assert content_type.split(";")[0].strip() in ("text/javascript", "application/javascript")


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through Playwright, launched as tests/browser/conftest.py does."""
    from tests.browser.conftest import CHROMIUM_ARGS, chromium_path

    path = chromium_path()
    if path is None:
        unavailable(
            "no Chromium (/usr/bin/chromium or chromium on PATH); run scripts/install-browser"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable(f"the playwright package cannot be imported ({exc}); pip install playwright")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


SUBSCRIBE_JS = """async () => {
  const { connect } = await import("/static/pgbinding/pgbinding.js");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const client = connect(`${scheme}://${location.host}/binding/`);
  const open = client.subscribe("documents");
  window.readme = { client, open };
  await open.ready;
  return open.size;
}"""


def test_browser_live_collection_gets_a_row_inserted_with_sql(site: Site, browser: Any) -> None:
    """In Chromium, on a page of the site carrying the session cookie: import pgbinding.js
    from the site's static files, connect, subscribe to `documents`; a row of the user
    inserted with SQL afterwards appears in the live collection, another user's does not."""
    from tests.browser.conftest import TIMEOUT_MS

    context = browser.new_context()
    try:
        context.set_default_timeout(TIMEOUT_MS)
        context.add_cookies([{"name": "sessionid", "value": site.session, "url": site.base}])
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "console",
            # A failed request is reported by the response handler, with its URL.
            lambda msg: (
                errors.append(msg.text)
                if msg.type == "error" and not msg.text.startswith("Failed to load resource")
                else None
            ),
        )
        page.on(
            "response",
            # The browser asks for /favicon.ico, which the README's project does not have.
            lambda r: (
                errors.append(f"{r.status} {r.url}")
                if r.status >= 400 and not r.url.endswith("/favicon.ico")
                else None
            ),
        )
        response = page.goto(f"{site.base}/static/pgbinding/pgbinding.js")
        assert response is not None and response.status == 200

        [(owned,)] = site.project.sql(
            "SELECT count(*) FROM myapp_document WHERE owner_id = %s", (site.user,)
        )
        size = page.evaluate(SUBSCRIBE_JS)
        assert size == owned, f"the snapshot has {size} row(s), the user owns {owned}"

        others = site.project.new_document("browser: not yours", site.other)
        mine = site.project.new_document("browser: my plan", site.user, "from psql")
        try:
            page.wait_for_function(
                "pk => window.readme.open.has(pk)", arg=mine, timeout=DELIVERY_TIMEOUT * 1000
            )
        except Exception as exc:
            state = page.evaluate("() => [window.readme.client.state, window.readme.open.size]")
            raise AssertionError(
                f"document {mine} did not appear in the browser's collection ({exc}); "
                f"client state, rows: {state}; console errors: {errors}\n{site.logs()}"
            ) from exc
        assert page.evaluate("pk => window.readme.open.get(pk)", mine) == {
            "title": "browser: my plan",
            "text": "from psql",
            "owner": site.user,
        }
        assert page.evaluate("pk => window.readme.open.has(pk)", others) is False
        assert page.evaluate("() => window.readme.open.size") == owned + 1
        assert errors == []
        page.evaluate("() => window.readme.client.close()")
    finally:
        context.close()
