"""makemigrations writes the trigger operations; migrate installs and removes them."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader

from pgbinding import WebsocketBinding
from pgbinding.capture import sql
from pgbinding.exceptions import BindingConfigError
from pgbinding.operations import InstallBindingTrigger
from pgbinding.registry import registry
from tests.testapp.models import Item, Note

ROOT = Path(__file__).resolve().parents[2]
BOUND_TABLES = ["auth_user", "testapp_counter", "testapp_item"]


def installed_triggers() -> dict[str, list[str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE t.tgname LIKE 'pgbinding_%%' AND c.relname <> 'pgbinding_change'"
            " ORDER BY 1, 2"  # (the log's own TRUNCATE trigger, schema v5, is no capture)
        )
        found: dict[str, list[str]] = {}
        for table, name in cursor.fetchall():
            found.setdefault(table, []).append(name)
    return found


def dry_run() -> str:
    out = io.StringIO()
    call_command("makemigrations", "--dry-run", "-v", "3", stdout=out)
    return out.getvalue()


@pytest.fixture
def restore_registry() -> Iterator[None]:
    saved = registry.all()
    yield
    registry._bindings = saved


@pytest.mark.django_db
def test_no_changes_when_bindings_match_migrations() -> None:
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_new_binding_writes_an_install_operation(restore_registry: None) -> None:
    class NoteBinding(WebsocketBinding):
        model = Note
        stream = "notes"
        fields = ["text"]

    out = dry_run()
    assert f"Install pgbinding capture trigger ({sql.TRIGGER_VERSION}) on testapp.note" in out
    assert "pgbinding.operations.InstallBindingTrigger(" in out
    assert 'ON "testapp_note"' in out
    registry.unregister(NoteBinding)
    assert "No changes detected" in dry_run()


@pytest.mark.django_db
def test_removing_the_last_binding_writes_a_remove_operation(restore_registry: None) -> None:
    item_bindings = registry.for_model(Item)
    assert len(item_bindings) > 1
    registry.unregister(item_bindings[0])
    assert "No changes detected" in dry_run(), "other bindings still bind Item"
    for binding in item_bindings[1:]:
        registry.unregister(binding)
    out = dry_run()
    assert f"Remove pgbinding capture trigger ({sql.TRIGGER_VERSION}) from testapp.item" in out
    assert "pgbinding.operations.RemoveBindingTrigger(" in out


@pytest.mark.django_db
def test_migrate_installs_triggers_on_every_bound_table() -> None:
    found = installed_triggers()
    for table in BOUND_TABLES:
        assert found.get(table) == sorted(sql.TRIGGER_NAMES[sql.TRIGGER_VERSION]), table
    assert "testapp_note" not in found


@pytest.mark.django_db(transaction=True)
def test_migrate_backwards_removes_what_forwards_installed() -> None:
    try:
        call_command("migrate", "testapp", "zero", verbosity=0)
        left = {t: n for t, n in installed_triggers().items() if t in BOUND_TABLES}
        assert left == {}, "auth_user's trigger lives in testapp's migration"
        call_command("migrate", "fidelity", "zero", verbosity=0)
        call_command("migrate", "pgbinding", "zero", verbosity=0)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT to_regclass('pgbinding_change'), to_regproc('pgbinding_capture_v1'),"
                " to_regproc('pgbinding_capture_v2'), to_regproc('pgbinding_log_truncated')"
            )
            assert cursor.fetchone() == (None, None, None, None)
    finally:
        call_command("migrate", verbosity=0)
    assert [t for t in sorted(installed_triggers()) if not t.startswith("fidelity_")] == (
        BOUND_TABLES
    )


def test_pinned_sql_matches_the_versioned_template() -> None:
    """The SQL in the migration files is what the versioned templates render (two install paths
    agree), for every version ever installed."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    ops = [
        op
        for (app, _), migration in loader.disk_migrations.items()
        if app == "testapp"
        for op in migration.operations
        if isinstance(op, InstallBindingTrigger)
    ]
    assert {op.model for op in ops} == {"auth.user", "testapp.counter", "testapp.item"}
    assert {op.version for op in ops} == {"v1", "v2"}
    for op in ops:
        table = {"auth.user": "auth_user"}.get(op.model, op.model.replace(".", "_"))
        assert (op.sql, op.reverse_sql) == sql.trigger_sql(table, "id", op.version)


@pytest.mark.django_db
def test_installed_triggers_call_the_capture_function() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t"
            " WHERE t.tgrelid = 'testapp_item'::regclass AND t.tgname LIKE 'pgbinding_%%'"
        )
        defs = [r[0] for r in cursor.fetchall()]
    assert len(defs) == 4
    call = f"FOR EACH STATEMENT EXECUTE FUNCTION pgbinding_capture_{sql.TRIGGER_VERSION}('id')"
    assert all(call in d for d in defs)


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"stream": "s1"}, "must set fields"),
        (
            {"stream": "s2", "fields": ["name"], "exclude": ["value"]},
            "sets both fields and exclude",
        ),
        ({"stream": "s3", "fields": ["nope"]}, "unknown field(s) 'nope'"),
        ({"stream": "bad stream!", "fields": ["name"]}, "stream must be"),
        ({"stream": "items", "fields": ["name"]}, "already used by"),
        ({"stream": "s4", "fields": "name"}, "list of names"),
    ],
)
def test_binding_declaration_errors_name_the_binding(
    attrs: dict[str, Any], message: str, restore_registry: None
) -> None:
    with pytest.raises(BindingConfigError) as info:
        type("BadBinding", (WebsocketBinding,), {"model": Item, "__module__": __name__, **attrs})
    assert message in str(info.value)
    assert "BadBinding" in str(info.value)


def test_non_postgres_database_is_an_error_at_startup(tmp_path: Path) -> None:
    settings = tmp_path / "sqlite_settings.py"
    settings.write_text(
        "from tests.settings import *\n"
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "PYTHONPATH": f"{tmp_path}:{ROOT}",
            "DJANGO_SETTINGS_MODULE": "sqlite_settings",
            "PATH": "/usr/bin:/bin",
        },
    )
    assert result.returncode != 0
    assert "captures changes with Postgres triggers" in result.stderr
    assert "tests.testapp.bindings.ItemBinding" in result.stderr


def test_the_extended_autodetector_passes_djangos_checks() -> None:
    """pgbinding extends the autodetector of makemigrations and migrate at ready() (it does not
    override the commands); Django's checks want one class for both."""
    from django.core.management.commands import makemigrations, migrate

    from pgbinding.capture.autodetect import AutodetectorMixin

    assert makemigrations.Command.autodetector is migrate.Command.autodetector
    assert issubclass(makemigrations.Command.autodetector, AutodetectorMixin)
    call_command("check", stdout=io.StringIO())
