"""Stale listener names no longer hold the log, and the status command tells an operator what
is going on: caught up, behind, stopped, stale, triggers, channel layer."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from django.core.management import call_command
from django.db import connection

from tests.conftest import ListenerHarness, wait_for
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)


def status(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("pgbinding", "status", *args, stdout=out)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue()


def log_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pgbinding_change")
        return int(cast(tuple[Any, ...], cursor.fetchone())[0])  # count(*): always one row


@pytest.fixture
def abandoned() -> Iterator[None]:
    """A listener name nobody has run for two hours (pgbinding's tables are not flushed
    between tests: clean up after)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pgbinding_listener (name, position, updated_at)"
            " VALUES ('abandoned', 0, now() - interval '2 hours')"
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pgbinding_listener WHERE name = 'abandoned'")


def test_an_abandoned_listener_name_stops_holding_the_log(
    abandoned: None, make_listener: Callable[..., ListenerHarness], caplog: pytest.LogCaptureFixture
) -> None:
    harness = make_listener(retention=0.5, prune_interval=0.2, stale_listener_after=60.0)
    for n in range(30):
        Item.objects.create(name=f"p{n}")
    harness.sync()
    time.sleep(0.6)  # older than the retention
    wait_for(lambda: log_count() == 0, "pruning past the abandoned name's position", timeout=10)
    assert "Listener name 'abandoned' has not run for" in caplog.text
    code, text = status("--no-layer")
    assert code == 1
    assert "abandoned: stale at position 0" in text
    assert "Listener name 'abandoned' is stale" in text


def test_status_says_active_caught_up_behind_and_stopped(
    make_listener: Callable[..., ListenerHarness],
) -> None:
    harness = make_listener()
    Item.objects.create(name="s")
    harness.sync()
    code, text = status("--json")
    found = json.loads(text)
    [default] = [entry for entry in found["listeners"] if entry["name"] == "default"]
    assert default["state"] == "active" and default["behind"] == 0
    assert {t["model"]: t["state"] for t in found["triggers"]}["testapp.item"] == "installed"
    assert "InMemoryChannelLayer" in found["channel_layer"]
    assert found["problems"] == [] and code == 0

    harness.stop()
    for n in range(5):
        Item.objects.create(name=f"behind{n}")
    time.sleep(1.1)
    code, text = status("--max-lag", "0.5")
    assert code == 1
    assert "default: stopped" in text and "5 behind" in text
    assert "Listener 'default' is stopped" in text


def test_status_flags_a_bound_model_without_its_trigger() -> None:
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER pgbinding_update_v2 ON testapp_counter")
    try:
        code, text = status("--no-layer")
        assert code == 1
        assert "testapp.counter (testapp_counter): missing" in text
        assert "run `manage.py makemigrations` and `manage.py migrate`" in text
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TRIGGER pgbinding_update_v2 AFTER UPDATE ON testapp_counter"
                " REFERENCING OLD TABLE AS pgbinding_old NEW TABLE AS pgbinding_new"
                " FOR EACH STATEMENT EXECUTE FUNCTION pgbinding_capture_v2('id')"
            )
