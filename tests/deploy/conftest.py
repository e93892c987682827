"""The deployment of docs/deploy.md, started for real: a private Redis, ``manage.py pglisten``,
two daphne servers run with the command line of ``docs/deploy/daphne@.service``, static files
collected with ``collectstatic``, and nginx with the server blocks of ``docs/deploy/nginx.conf``
(TLS included, with a certificate made here), on free ports. Only ports and paths of the
guide's files are replaced (``render_site``, ``unit_command``).

nginx: ``NGINX``, ``/usr/sbin/nginx`` or ``nginx`` on PATH; ``scripts/install-nginx`` installs
Debian's package. Without it the tests are skipped -- but with ``CI=true`` they fail. It runs
in the foreground (``daemon off``) with a private prefix, config, pid file, logs and temp
directories under the test's tmp_path, never touching /etc/nginx or /var/log/nginx. Its workers
run as the user running the tests: as root, ``user`` names root (pytest's tmp_path is private to
its user, so nginx's default worker user, nobody, could not read the static files); run
unprivileged, nginx ignores ``user`` and it is left out.
"""

from __future__ import annotations

import contextlib
import datetime
import grp
import ipaddress
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devservers import free_port
from tests.support.processes import (
    ROOT,
    Daphne,
    ManagedProcess,
    Pglisten,
    ProcessGroup,
    RedisServer,
    port_open,
    wait_until,
)

DEPLOY = ROOT / "docs" / "deploy"
NGINX_CONF = DEPLOY / "nginx.conf"
DAPHNE_UNIT = DEPLOY / "daphne@.service"
UVICORN_UNIT = DEPLOY / "uvicorn@.service"
#: The socket route of the test project (tests/routing.py) that nginx proxies in place of the
#: guide's /binding/: a plain Demultiplexer serving every binding.
WS_PATH = "/all/"


# --------------------------------------------------------------------------- availability


def nginx_path() -> str | None:
    for candidate in (os.environ.get("NGINX"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("nginx")


def unavailable(reason: str) -> None:
    """Skip (fail on CI) with a reason that is also printed."""
    print(f"\ndeployment tests: {reason}", file=sys.stderr)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the deployment tests must run)", pytrace=False)
    pytest.skip(reason)


def nginx_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    return tuple(int(part) for part in found.groups()) if found else (0, 0, 0)


# --------------------------------------------------------------------------- the config


def substitute(text: str, replacements: dict[str, str], source: Path) -> str:
    """Replace each key of ``replacements`` (which must occur exactly once) in ``text``."""
    for old, new in replacements.items():
        count = text.count(old)
        if count != 1:
            raise AssertionError(
                f"{source.relative_to(ROOT)} holds {old!r} {count} time(s), not once: the "
                "deployment test templates the guide's file by these strings; update "
                "tests/deploy/conftest.py along with it"
            )
        text = text.replace(old, new)
    return text


def render_site(
    *,
    upstreams: list[int],
    http_port: int,
    https_port: int,
    cert: Path,
    key: Path,
    static_root: Path,
) -> str:
    """docs/deploy/nginx.conf with the test's ports and paths: nothing else changes."""
    first, second = upstreams
    return substitute(
        NGINX_CONF.read_text(),
        {
            "server 127.0.0.1:8001 ": f"server 127.0.0.1:{first} ",
            "server 127.0.0.1:8002 ": f"server 127.0.0.1:{second} ",
            "listen 80;": f"listen 127.0.0.1:{http_port};",
            "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
            "/etc/letsencrypt/live/example.com/fullchain.pem": str(cert),
            "/etc/letsencrypt/live/example.com/privkey.pem": str(key),
            "alias /srv/mysite/static/;": f"alias {static_root}/;",
            "location /binding/ {": f"location {WS_PATH} {{",
        },
        NGINX_CONF,
    )


def render_main(site: Path, run: Path) -> str:
    """The main nginx.conf around the site file: what /etc/nginx/nginx.conf gives the site on
    Debian (mime types, one http block), with everything nginx writes under ``run``."""
    user = ""
    if os.geteuid() == 0:
        # The master runs as root and would start its workers as "nobody", who cannot read
        # tmp_path (pytest makes it private to its user): run them as that user.
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};\n"
    temp = "\n".join(
        f"    {name}_temp_path {run / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# Generated by tests/deploy/conftest.py around docs/deploy/nginx.conf.
{user}daemon off;
worker_processes 1;
pid {run / "nginx.pid"};
error_log {run / "error.log"} info;

events {{
    worker_connections 256;
}}

http {{
    types {{
        text/html html;
        text/css css;
        application/javascript js mjs;
        application/json json;
        text/plain txt ts;
    }}
    default_type application/octet-stream;
    access_log {run / "access.log"};
{temp}

    include {site};
}}
"""


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (the test's CA too)."""
    from cryptography import x509  # a dependency of daphne (twisted[tls], autobahn)
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pgbinding deploy test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


# --------------------------------------------------------------------------- processes


def unit_command(unit: Path, port: int, application: str = "tests.asgi:application") -> list[str]:
    """ExecStart of an ASGI server's unit in docs/deploy/ as this test runs it: the program
    (``.../venv/bin/daphne``) as ``python -m daphne``, ``%i`` as ``port``, and the test
    project's application instead of ``mysite.asgi:application``; the options as they are."""
    lines = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, f"{unit} should have one ExecStart line"
    argv = shlex.split(lines[0].removeprefix("ExecStart="))
    program = Path(argv[0]).name
    assert program in ("daphne", "uvicorn"), argv
    assert argv[-1] == "mysite.asgi:application", argv
    assert "%i" in argv, f"{unit}: the port should be the instance name (%i): {argv}"
    options = [arg.replace("%i", str(port)) for arg in argv[1:-1]]
    return [sys.executable, "-m", program, *options, application]


class UnitServer(Daphne):
    """tests.support.processes.Daphne (``tests.asgi:application`` on a free port of
    127.0.0.1), started with the command line of a unit file of the guide (daphne@.service by
    default, or uvicorn@.service)."""

    def __init__(
        self, env: dict[str, str], log_dir: Path, name: str, unit: Path = DAPHNE_UNIT
    ) -> None:
        self.port = free_port()
        args = unit_command(unit, self.port)
        ManagedProcess.__init__(self, args, env, log_dir / f"{name}.log", name)

    def websocket_connects(self, path: str = WS_PATH) -> int:
        """Handshakes daphne accepted on ``path`` (its access log's WSCONNECT lines)."""
        return self.output().count(f'"WSCONNECT {path}"')


class Nginx(ManagedProcess):
    """nginx in the foreground (``daemon off``) with a private prefix under ``run``.

    ``close()`` stops the master with SIGTERM and then kills what is left of its process group
    (its workers: it runs in a session of its own), so nothing outlives the test."""

    def __init__(self, binary: str, conf: Path, run: Path) -> None:
        self.binary, self.conf, self.run = binary, conf, run
        args = [binary, "-p", f"{run}/", "-c", str(conf)]
        if nginx_version(binary) >= (1, 19, 5):
            args += ["-e", str(run / "error.log")]  # not /var/log/nginx, even at startup
        self.base_args = args
        check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise AssertionError(
                f"nginx -t rejected the config generated from {NGINX_CONF}:\n"
                f"{check.stderr}{check.stdout}\n--- {conf}:\n{conf.read_text()}"
            )
        super().__init__(args, dict(os.environ), run / "nginx.out", "nginx")

    def error_log(self) -> str:
        try:
            return (self.run / "error.log").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        try:
            super().close()  # SIGTERM: nginx's fast shutdown
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)  # workers left behind, if any


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    run: Path
    env: dict[str, str]
    redis: RedisServer
    listener: Pglisten
    servers: list[UnitServer]
    nginx: Nginx
    http_port: int
    https_port: int
    static_root: Path
    cert: Path
    site_conf: Path
    conninfo: str

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}{WS_PATH}"

    def ssl_context(self) -> ssl.SSLContext:
        """For Python clients: trusts the test's certificate only, and speaks TLS 1.2 at most.

        websockets' sync client (it reads in a thread of its own) was slow over TLS 1.3 with
        this nginx, about 0.5 s per connection, and now and then its handshake request never
        reached nginx (2 handshakes of 240; its asyncio client: none of 240, 0.02 s each). The
        browser test uses TLS 1.3 (Chromium's choice)."""
        context = ssl.create_default_context(cafile=str(self.cert))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        return context

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run SQL as another program would (psycopg, autocommit); return the rows, if any."""
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def manage(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``manage.py <args>`` in a child process with the servers' settings and database."""
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def describe(self) -> str:
        parts = [f"--- {p.name}:\n{p.tail(20)}" for p in (self.listener, *self.servers)]
        parts.append(f"--- nginx error.log:\n{self.nginx.error_log()[-3000:]}")
        return "\n".join(parts)


def collectstatic(env: dict[str, str], static_root: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "collectstatic",
            "--noinput",
            "--settings",
            "tests.deploy.settings",
        ],
        cwd=ROOT,
        env={**env, "PGBINDING_DEPLOY_STATIC_ROOT": str(static_root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"collectstatic failed:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    binary = nginx_path()
    if binary is None:
        unavailable("no nginx (/usr/sbin/nginx or nginx on PATH); run scripts/install-nginx")
    assert binary is not None
    return binary


@pytest.fixture(scope="module")
def stack(
    nginx_binary: str,
    django_db_setup: None,
    django_db_blocker: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """Everything of the guide's shape, for this module's tests; the test database is flushed
    afterwards, as a transactional test's would be."""
    from django.core.management import call_command
    from django.db import connection

    from pgbinding.delivery.listener import conninfo_from_django
    from tests.conftest import subprocess_env

    run = tmp_path_factory.mktemp("deploy")
    procs = ProcessGroup()
    with django_db_blocker.unblock():
        try:
            connection.ensure_connection()
            conninfo = conninfo_from_django()
            redis = procs.add(RedisServer(run).start())
            env = subprocess_env(redis.url)
            listener = procs.add(Pglisten(env, run))
            servers = [procs.add(UnitServer(env, run, f"daphne{n}")) for n in range(2)]
            static_root = run / "static"
            collectstatic(env, static_root)
            cert, key = make_certificate(run)
            http_port, https_port = free_port(), free_port()
            site_conf = run / "site.conf"
            site_conf.write_text(
                render_site(
                    upstreams=[server.port for server in servers],
                    http_port=http_port,
                    https_port=https_port,
                    cert=cert,
                    key=key,
                    static_root=static_root,
                )
            )
            main_conf = run / "nginx.conf"
            main_conf.write_text(render_main(site_conf, run))
            nginx = procs.add(Nginx(nginx_binary, main_conf, run))
            wait_until(
                lambda: port_open(https_port) and port_open(http_port),
                lambda: f"nginx to listen:\n{nginx.tail()}\n{nginx.error_log()[-2000:]}",
                timeout=15,
            )
            for server in servers:
                server.wait_ready(timeout=30)
            listener.wait_output("Caught up", timeout=30)
            yield Stack(
                run=run,
                env=env,
                redis=redis,
                listener=listener,
                servers=servers,
                nginx=nginx,
                http_port=http_port,
                https_port=https_port,
                static_root=static_root,
                cert=cert,
                site_conf=site_conf,
                conninfo=conninfo,
            )
        finally:
            try:
                procs.close()
            finally:
                call_command("flush", interactive=False, verbosity=0)
                connection.close()


def subscribe(ws: Any, stream: str = "counters", request_id: str = "s1") -> dict[str, Any]:
    """Send a subscribe on an open socket; return the reply's payload (after checking it)."""
    ws.send(
        json.dumps({"stream": stream, "payload": {"action": "subscribe", "request_id": request_id}})
    )
    deadline = time.monotonic() + 15
    while True:
        frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        payload = frame.get("payload", {})
        if payload.get("request_id") == request_id and "status" in payload:
            assert payload["status"] == 200, payload
            return dict(payload)


def next_change(ws: Any, timeout: float = 15) -> dict[str, Any]:
    """The next subscription event's payload on ``ws``."""
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        payload = frame.get("payload", {})
        if "subscription" in payload and "action" in payload:
            return dict(payload)
