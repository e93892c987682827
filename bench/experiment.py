"""EXPERIMENTS, measured next to the released capture with ``--experiment NAME``.

Nothing here is installed by pgbinding or changes its SQL templates. Each experiment runs on its
own 10,000-row table; the ones that need a capture function install a copy under another name
(``bench_capture_*``) that writes to the same ``pgbinding_change`` log, so the same listener
reads it.

trigger-only    the released schema_v1/trigger_v1, with NO listener running (stopped cleanly,
                so the ``sleeping`` flag is false and the triggers never NOTIFY): the
                cost of the trigger alone, without the listener's reads, position saves and CPU.
async-listener  the released trigger, with the listener's own connection set to
                ``synchronous_commit=off`` (a libpq ``options`` in its conninfo, no code change):
                its position saves stop waiting for a WAL flush each.
paced-listener  the released trigger, with the listener's reads paced (a wrapper around
                ChangeLog.read installed in the listener's process only, see
                bench/consumers.py:pace_reads): after a short batch it waits PACE seconds
                before reading again, and it retries an empty read LINGER times before it
                counts as idle and marks itself asleep. Fewer, bigger batches: fewer position
                saves (each a durable commit) and fewer sleep/wake flips (each one lets writers
                NOTIFY again), for up to PACE seconds of added delivery latency.
stmt-once       the released statement-level function with one change to its UPDATE branch:
                each transition row is turned into jsonb once (OFFSET 0 subqueries stop the
                planner from inlining to_jsonb(t) into the join key, the filter and every
                output column, where it is recomputed several times per row).
rowlevel        a row-level variant of the capture function (FOR EACH ROW triggers for INSERT,
                UPDATE and DELETE; TRUNCATE stays statement-level), same log rows, same
                wake-up rule, with the normal listener.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from pgbinding.sql import schema_sql, trigger_sql

ROWLEVEL_FUNCTION = """
CREATE OR REPLACE FUNCTION bench_capture_rowlevel() RETURNS trigger
LANGUAGE plpgsql AS $body$
DECLARE
    pk_col text := TG_ARGV[0];
    o jsonb;
    n jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        n := to_jsonb(NEW);
        INSERT INTO pgbinding_change (table_name, op, pk, old, new)
        VALUES (TG_TABLE_NAME, 'I', n ->> pk_col, NULL, n);
    ELSIF TG_OP = 'UPDATE' THEN
        o := to_jsonb(OLD);
        n := to_jsonb(NEW);
        IF o = n THEN
            RETURN NULL;  -- a row that did not change is not logged
        ELSIF (o -> pk_col) = (n -> pk_col) THEN
            INSERT INTO pgbinding_change (table_name, op, pk, old, new)
            VALUES (TG_TABLE_NAME, 'U', n ->> pk_col, o, n);
        ELSE  -- the key changed: a delete plus an insert, as the released function logs it
            INSERT INTO pgbinding_change (table_name, op, pk, old, new)
            VALUES (TG_TABLE_NAME, 'D', o ->> pk_col, o, NULL),
                   (TG_TABLE_NAME, 'I', n ->> pk_col, NULL, n);
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        o := to_jsonb(OLD);
        INSERT INTO pgbinding_change (table_name, op, pk, old, new)
        VALUES (TG_TABLE_NAME, 'D', o ->> pk_col, o, NULL);
    END IF;
    IF (SELECT sleeping FROM {wakeup_table}) THEN
        PERFORM pg_notify('pgbinding', '');
    END IF;
    RETURN NULL;
END
$body$;
"""

ROWLEVEL_TRIGGERS = """
CREATE TRIGGER bench_rowlevel AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION bench_capture_rowlevel('id');
CREATE TRIGGER bench_rowlevel_truncate AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION pgbinding_capture_v1('id');
"""


PACE = 0.005
LINGER = 4

_V1_UPDATE_FROM = """        FROM (SELECT to_jsonb(t) AS j FROM pgbinding_old t) o
        FULL JOIN (SELECT to_jsonb(t) AS j FROM pgbinding_new t) n
          ON (o.j -> pk_col) = (n.j -> pk_col)"""
_ONCE_UPDATE_FROM = """        FROM (SELECT j, j -> pk_col AS k
              FROM (SELECT to_jsonb(t) AS j FROM pgbinding_old t OFFSET 0) x) o
        FULL JOIN (SELECT j, j -> pk_col AS k
              FROM (SELECT to_jsonb(t) AS j FROM pgbinding_new t OFFSET 0) x) n
          ON o.k = n.k"""


def stmt_once_function() -> str:
    """The released pgbinding_capture_v1, renamed, with only its UPDATE join rewritten."""
    v1 = schema_sql()[0]
    function = v1[v1.index("CREATE FUNCTION pgbinding_capture_v1") :]
    if _V1_UPDATE_FROM not in function:
        raise RuntimeError("schema_v1.sql changed: update bench/experiment.py's stmt-once")
    return function.replace(
        "CREATE FUNCTION pgbinding_capture_v1", "CREATE OR REPLACE FUNCTION bench_capture_stmt_once"
    ).replace(_V1_UPDATE_FROM, _ONCE_UPDATE_FROM)


STMT_ONCE_TRIGGERS = """
CREATE TRIGGER bench_once_insert AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS pgbinding_new
    FOR EACH STATEMENT EXECUTE FUNCTION bench_capture_stmt_once('id');
CREATE TRIGGER bench_once_update AFTER UPDATE ON {table}
    REFERENCING OLD TABLE AS pgbinding_old NEW TABLE AS pgbinding_new
    FOR EACH STATEMENT EXECUTE FUNCTION bench_capture_stmt_once('id');
CREATE TRIGGER bench_once_delete AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS pgbinding_old
    FOR EACH STATEMENT EXECUTE FUNCTION bench_capture_stmt_once('id');
CREATE TRIGGER bench_once_truncate AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION bench_capture_stmt_once('id');
"""


@dataclass(frozen=True)
class Experiment:
    description: str
    #: "default", "async", "paced" or "off": how the pgbinding listener must run during it.
    listener: str
    function_sql: str | None = None
    triggers_sql: str | None = None


EXPERIMENTS: dict[str, Experiment] = {
    "trigger-only": Experiment("released trigger, no listener running", "off"),
    "async-listener": Experiment("released trigger, listener synchronous_commit=off", "async"),
    "paced-listener": Experiment(
        f"released trigger, listener reads paced {PACE * 1000:.0f} ms", "paced"
    ),
    "stmt-once": Experiment(
        "statement-level, to_jsonb once per row", "default", None, STMT_ONCE_TRIGGERS
    ),
    "rowlevel": Experiment(
        "row-level copy of the capture function", "default", ROWLEVEL_FUNCTION, ROWLEVEL_TRIGGERS
    ),
}


def install_experiment(conn: psycopg.Connection[Any], name: str, table: str) -> None:
    exp = EXPERIMENTS[name]
    if name == "stmt-once":
        conn.execute(stmt_once_function())
    elif exp.function_sql is None:
        for statement in trigger_sql(table, "id")[0]:
            conn.execute(statement)
        return
    else:
        from .common import wakeup_table

        conn.execute(exp.function_sql.replace("{wakeup_table}", wakeup_table(conn)))
    assert exp.triggers_sql is not None
    conn.execute(exp.triggers_sql.format(table=table))
