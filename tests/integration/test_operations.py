"""What an operator relies on: pglisten refuses setups that would deliver nothing, system
checks name bound models without their trigger, the listener says when it stands by uselessly,
metrics and admin pages tell what is going on."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.db import connection
from django.test import RequestFactory

from devservers import free_port
from pgbinding import metrics
from tests.conftest import ListenerHarness, subprocess_env, wait_for
from tests.testapp.models import Counter, Item

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def counter_trigger_dropped() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER pgbinding_update_v2 ON testapp_counter")
    yield
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TRIGGER pgbinding_update_v2 AFTER UPDATE ON testapp_counter"
            " REFERENCING OLD TABLE AS pgbinding_old NEW TABLE AS pgbinding_new"
            " FOR EACH STATEMENT EXECUTE FUNCTION pgbinding_capture_v2('id')"
        )


def test_pglisten_refuses_an_in_process_channel_layer() -> None:
    with pytest.raises(CommandError) as info:
        call_command("pglisten")
    text = str(info.value)
    assert "in-memory layer" in text and "channel_layers(REDIS_URL)" in text
    assert "with_listener" in text


def test_pglisten_refuses_a_bound_model_without_its_trigger(counter_trigger_dropped: None) -> None:
    with pytest.raises(CommandError) as info:
        call_command("pglisten", "--allow-in-memory-layer")
    assert "testapp.counter (testapp_counter): trigger missing" in str(info.value)
    assert "makemigrations" in str(info.value)


def test_system_check_names_the_model_and_the_command(counter_trigger_dropped: None) -> None:
    with pytest.raises(SystemCheckError) as info:
        call_command("check", databases=["default"], stdout=io.StringIO())
    assert "pgbinding.E001" in str(info.value) and "testapp.counter" in str(info.value)
    call_command("check", stdout=io.StringIO())  # without --database: not a database check


def test_an_in_process_listener_standing_by_says_its_sockets_get_nothing(
    make_listener: Callable[..., ListenerHarness], caplog: pytest.LogCaptureFixture
) -> None:
    make_listener()
    with caplog.at_level(logging.INFO, "pgbinding"):
        second = make_listener(start=False).start(wait_active=False)
        wait_for(lambda: "standing by" in caplog.text, "the second listener to stand by")
    assert "the sockets of this process receive nothing" in caplog.text
    assert not second.listener.active.is_set()


def test_listener_metrics_in_process(make_listener: Callable[..., ListenerHarness]) -> None:
    before = metrics.listener_delivered._value.get()
    harness = make_listener()
    Item.objects.create(name="m")
    harness.sync()
    assert metrics.listener_delivered._value.get() >= before + 1
    assert metrics.listener_leading._value.get() == 1
    assert metrics.listener_position._value.get() == harness.listener.saved_position
    harness.stop()
    assert metrics.listener_leading._value.get() == 0


@pytest.mark.redis
def test_pglisten_serves_its_metrics(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "pglisten.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "django", "pglisten", "--metrics-port", str(port)],
        cwd=ROOT,
        env=subprocess_env(redis_url),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: "Caught up" in (tmp_path / "pglisten.log").read_text(), "pglisten to catch up"
        )
        Counter.objects.create(key="metric", n=1)

        def scraped() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                body: bytes = r.read()  # urlopen's response is typed Any
                return body.decode()

        def delivered() -> float:
            found = re.search(r"^pgbinding_listener_delivered_total (\S+)$", scraped(), re.M)
            return float(found.group(1)) if found else 0.0

        wait_for(lambda: delivered() >= 1, "a delivery")
        text = scraped()
        assert "pgbinding_listener_leading 1.0" in text
        assert "pgbinding_listener_lag_seconds 0.0" in text
    finally:
        proc.terminate()
        proc.wait(10)


def test_admin_pages_are_read_only() -> None:
    from pgbinding.admin import register
    from pgbinding.models import Change, ListenerState

    site = admin.AdminSite(name="pgbinding-test")
    register(site)
    request = RequestFactory().get("/")
    for model in (Change, ListenerState):
        model_admin = site._registry[model]
        assert not model_admin.has_add_permission(request)
        assert not model_admin.has_change_permission(request)
        assert not model_admin.has_delete_permission(request)


def test_the_in_process_listener_logs_under_servers_that_configure_no_logging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pgbinding.delivery.listener import ensure_logging

    ours = logging.getLogger("pgbinding")
    monkeypatch.setattr(ours, "handlers", [])
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    ensure_logging()
    assert ours.handlers and ours.getEffectiveLevel() <= logging.INFO
    time.sleep(0)
