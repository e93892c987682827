"""What happens to changes already in the log when the schema moves on: renamed columns and
tables, dropped fields and rows, writers with another search_path, and databases upgraded from
the v1 capture trigger with changes pending. Events are built from the logged row alone; nothing
is looked up in the table as it is now."""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Callable
from typing import Any, cast

import psycopg
import psycopg.sql
import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.autodetector import MigrationAutodetector as DjangoAutodetector
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.questioner import MigrationQuestioner
from django.db.migrations.state import ModelState

from pgbinding import rows
from pgbinding.capture import sql
from pgbinding.operations import MigrationAutodetector, RewriteCapturedChanges
from tests.conftest import ListenerHarness
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)


def execute(statement: str, params: list[Any] | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def test_a_rename_with_changes_pending_delivers_the_logged_values(
    make_listener: Callable[..., ListenerHarness],
) -> None:
    """Listener down; a bound column changes twice; the column is renamed (as the migration
    that makemigrations writes for a RenameField does it); listener up: the events carry the
    logged 2 and 3, not the 100 the table holds now."""
    item = Item.objects.create(name="r", value=1)
    make_listener().stop()  # caught up, position saved
    Item.objects.filter(pk=item.pk).update(value=2)
    Item.objects.filter(pk=item.pk).update(value=3)
    forward, reverse = sql.rename_column_sql("testapp_item", "value", "amount")
    field = Item._meta.get_field("value")
    execute('ALTER TABLE testapp_item RENAME COLUMN "value" TO "amount"')
    execute(forward[0])
    field.column = field.db_column = "amount"
    rows.forget_types()
    try:
        Item.objects.filter(pk=item.pk).update(value=100)
        harness = make_listener(start=False)
        values = harness.collect("itemvalues")
        harness.start()
        harness.sync()
        assert [p["data"]["value"] for p in values.payloads()] == [2, 3, 100]
    finally:
        execute(reverse[0])
        execute('ALTER TABLE testapp_item RENAME COLUMN "amount" TO "value"')
        field.db_column = None
        field.column = "value"
        rows.forget_types()


def test_a_column_missing_from_logged_rows_gets_the_default_never_a_lookup(
    make_listener: Callable[..., ListenerHarness],
) -> None:
    """Logged rows without a field's column (the column was added, or renamed without the
    rewrite): the field gets its default. Nothing is read from the table: the row is deleted
    by then, and a lookup would have dropped the changes (DoesNotExist)."""
    item = Item.objects.create(name="r", value=1)
    make_listener().stop()
    Item.objects.filter(pk=item.pk).update(name="s")
    Item.objects.filter(pk=item.pk).update(name="t")
    field = Item._meta.get_field("value")
    execute('ALTER TABLE testapp_item RENAME COLUMN "value" TO "amount"')
    field.column = field.db_column = "amount"
    rows.forget_types()
    try:
        Item.objects.filter(pk=item.pk).delete()
        harness = make_listener(start=False)
        items = harness.collect("items")
        harness.start()
        harness.sync()
        assert [(p["action"], p["data"]["name"], p["data"]["value"]) for p in items.payloads()] == [
            ("update", "s", 0),
            ("update", "t", 0),
            ("delete", "t", 1),  # logged after the rename: it has the column
        ]
    finally:
        execute('ALTER TABLE testapp_item RENAME COLUMN "amount" TO "value"')
        field.db_column = None
        field.column = "value"
        rows.forget_types()


def test_a_deleted_row_and_a_dropped_column_with_changes_pending(
    make_listener: Callable[..., ListenerHarness],
) -> None:
    item = Item.objects.create(name="gone", value=1)
    make_listener().stop()
    Item.objects.filter(pk=item.pk).update(value=2)
    execute("ALTER TABLE testapp_item ADD COLUMN scratch integer DEFAULT 7")
    Item.objects.filter(pk=item.pk).update(value=3)
    execute("ALTER TABLE testapp_item DROP COLUMN scratch")
    Item.objects.filter(pk=item.pk).delete()
    rows.forget_types()
    harness = make_listener(start=False)
    items = harness.collect("items")
    harness.start()
    harness.sync()
    # The pending updates of a row deleted since are delivered with their logged values.
    assert [(p["action"], p["data"]["value"]) for p in items.payloads()] == [
        ("update", 2),
        ("update", 3),
        ("delete", 3),
    ]


def test_makemigrations_writes_the_log_rewrite_after_a_rename_of_a_bound_field() -> None:
    loader = MigrationLoader(connection)
    before = loader.project_state()
    after = before.clone()
    state: ModelState = after.models["testapp", "item"]
    state.fields["amount"] = state.fields.pop("value")
    after.reload_model("testapp", "item")
    questioner = MigrationQuestioner(defaults={"ask_rename": True})
    changes = MigrationAutodetector(before, after, questioner).changes(graph=loader.graph)
    ops = [op for migration in changes["testapp"] for op in migration.operations]
    names = [type(op).__name__ for op in ops]
    assert names == ["RenameField", "RewriteCapturedChanges"], names
    rewrite = ops[1]
    assert isinstance(rewrite, RewriteCapturedChanges)
    assert (rewrite.sql, rewrite.reverse_sql) == sql.rename_column_sql(
        "testapp_item", "value", "amount"
    )
    # Django's own autodetector, for comparison, writes the RenameField alone.
    plain = DjangoAutodetector(before, after, questioner).changes(graph=loader.graph)
    assert [type(op).__name__ for m in plain["testapp"] for op in m.operations] == ["RenameField"]


def test_makemigrations_moves_logged_changes_and_keeps_triggers_when_a_model_is_renamed() -> None:
    loader = MigrationLoader(connection)
    before = loader.project_state()
    after = before.clone()
    state = after.models.pop(("testapp", "counter"))
    state.name = "Tally"
    after.models["testapp", "tally"] = state
    after.reload_model("testapp", "tally")
    questioner = MigrationQuestioner(defaults={"ask_rename_model": True})
    changes = MigrationAutodetector(before, after, questioner).changes(graph=loader.graph)
    ops = [op for m in changes["testapp"] for op in m.operations]
    assert [type(op).__name__ for op in ops] == ["RenameModel", "RewriteCapturedChanges"]
    rewrite = cast(RewriteCapturedChanges, ops[1])  # its type is checked by name just above
    assert rewrite.sql == sql.rename_table_sql("testapp_counter", "testapp_tally")[0]


@pytest.mark.parametrize(
    "session",
    [
        "SET search_path = pg_catalog",
        "CREATE SCHEMA IF NOT EXISTS elsewhere; SET search_path = elsewhere",
    ],
)
def test_writers_with_another_search_path_are_captured(
    listener: ListenerHarness, raw_conninfo: str, session: str
) -> None:
    values = listener.collect("itemvalues")
    with psycopg.connect(raw_conninfo, autocommit=True) as conn:
        schema = cast(tuple[Any, ...], conn.execute("SELECT current_schema()").fetchone())[0]
        conn.execute(session)
        table = psycopg.sql.Identifier(schema, "testapp_item")
        conn.execute(
            psycopg.sql.SQL(
                "INSERT INTO {} (name, value, status, price, uid, extra, body, secret)"
                " VALUES ('sp', 41, 'open', 0, gen_random_uuid(), '{{}}', '', '')"
            ).format(table)
        )
    listener.sync()
    assert [p["data"]["value"] for p in values.payloads()] == [41]


def test_upgrade_from_v1_with_changes_pending_delivers_everything(
    make_listener: Callable[..., ListenerHarness], raw_conninfo: str
) -> None:
    """A database with the v1 triggers (as the previous release installed them) and changes
    logged by v1 from sessions with odd settings, the listener down; then `migrate` moves the
    triggers to v2: every pending change is delivered, with the values the ORM reads."""
    call_command("migrate", "testapp", "0001", verbosity=0)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'pgbinding_update_v1'"
                " AND tgrelid = 'testapp_item'::regclass"
            )
            assert cast(tuple[Any, ...], cursor.fetchone())[0] == 1  # count(*): one row
        item = Item.objects.create(name="old", value=1)
        make_listener().stop()
        due = datetime.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=datetime.UTC)
        with psycopg.connect(raw_conninfo, autocommit=True) as conn:
            conn.execute("SET TimeZone = 'America/New_York'")
            conn.execute(
                "UPDATE testapp_item SET value = 2, due = %s, price = 12.5 WHERE id = %s",
                [due, item.pk],
            )
    finally:
        call_command("migrate", verbosity=0)
    Item.objects.filter(pk=item.pk).update(value=3)
    harness = make_listener(start=False)
    items = harness.collect("items")
    harness.start()
    harness.sync()
    payloads = items.payloads()
    assert [p["data"]["value"] for p in payloads] == [2, 3]
    fresh = Item.objects.get(pk=item.pk)
    assert fresh.due == due and fresh.price == decimal.Decimal("12.5")
    # Logged by v1 from a New York session: still the ORM's UTC value.
    assert payloads[0]["data"]["due"] == "2026-03-04T05:06:07.890Z"
    assert payloads[0]["data"]["price"] == "12.5000"
