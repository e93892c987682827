"""The capture function's statement keeps one cheap plan, whatever the session did before.

PL/pgSQL caches its statements' plans per session, and with Postgres' default
``plan_cache_mode`` (``auto``) it re-plans the statement for every call whenever the generic
plan it built looked dearer than the custom plans before it. The capture function's INSERT is
re-planned that way from the moment the log is analyzed (autovacuum does this often to a busy
log: it invalidates every session's cached plan) if the session's next write is a big
statement: the generic plan is then built for thousands of rows. Every later single-row write in
that session paid for planning a join (bench: ~45 → ~150 µs of trigger per statement), until
the next invalidation. Schema v4 sets ``plan_cache_mode = force_generic_plan`` on the capture
functions. The plan in use is read from auto_explain (a custom plan has the function's
variables folded into constants, a generic one keeps them as parameters).
"""

from __future__ import annotations

import re

import psycopg
import pytest

from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)

#: What the INSERT of a custom plan outputs for TG_TABLE_NAME: the table's name as a constant.
CUSTOM = re.compile(r"'testapp_item'::text")
#: A generic plan keeps the function's variables as parameters ($1, $2 ...).
GENERIC = re.compile(r"Output: nextval\([^)]*\), [^\n]*\$\d+")


def capture_plan(conn: psycopg.Connection[object], statement: str, params: list[object]) -> str:
    """The plan auto_explain shows for the capture function's INSERT into pgbinding_change
    while ``statement`` runs."""
    plans: list[str] = []
    conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    conn.execute(statement, params)
    found = [p for p in plans if "INSERT INTO pgbinding_change" in p]
    assert len(found) == 1, plans
    return found[0]


def test_a_big_statement_after_the_log_is_analyzed_keeps_the_generic_plan(
    raw_conninfo: str,
) -> None:
    Item.objects.bulk_create([Item(name=f"i{n}", value=n) for n in range(2000)])
    ids = list(Item.objects.values_list("pk", flat=True))
    with (
        psycopg.connect(raw_conninfo, autocommit=True) as conn,
        psycopg.connect(raw_conninfo, autocommit=True) as other,
    ):
        try:
            conn.execute("LOAD 'auto_explain'")
        except psycopg.Error as exc:  # a server without contrib (PGBINDING_TEST_DATABASE_URL)
            pytest.skip(f"auto_explain is not available: {exc}")
        for n in ids[:10]:  # more than the 5 custom plans Postgres always tries first
            conn.execute("UPDATE testapp_item SET value = value + 1 WHERE id = %s", [n])
        other.execute("ANALYZE pgbinding_change")  # what autovacuum does to a busy log
        conn.execute("UPDATE testapp_item SET value = value + 1")  # 2,000 rows
        for setting in (
            "auto_explain.log_min_duration = 0",
            "auto_explain.log_nested_statements = on",
            "auto_explain.log_verbose = on",
            "auto_explain.log_level = notice",
        ):
            conn.execute(f"SET {setting}")
        plan = capture_plan(conn, "UPDATE testapp_item SET value = 0 WHERE id = %s", [ids[0]])
    assert not CUSTOM.search(plan), f"the capture INSERT was planned for this call:\n{plan}"
    assert GENERIC.search(plan), plan


def test_the_capture_functions_force_generic_plans(raw_conninfo: str) -> None:
    with psycopg.connect(raw_conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT proname, proconfig FROM pg_proc"
            " WHERE proname IN ('pgbinding_capture_v1', 'pgbinding_capture_v2') ORDER BY 1"
        ).fetchall()
    assert [name for name, _ in rows] == ["pgbinding_capture_v1", "pgbinding_capture_v2"]
    for name, config in rows:
        assert "plan_cache_mode=force_generic_plan" in (config or []), name
