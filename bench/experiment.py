"""EXPERIMENTS, measured next to the released capture with ``--experiment NAME``.

(Earlier experiments, ``stmt-once``: to_jsonb() once per row in the UPDATE branch, and
``paced-listener``: fewer, bigger listener batches, became the released code; their before and
after figures are in bench/analysis.md, the end of docs/benchmarks.md.)

Nothing here is installed by pgbinding or changes its SQL templates. Each experiment runs on its
own 10,000-row table; the ones that need a capture function install a copy under another name
(``bench_capture_*``) that writes to the same ``pgbinding_change`` log, so the same listener
reads it.

trigger-only    the released schema_v1/trigger_v1, with NO listener running (stopped cleanly,
                so the ``sleeping`` flag is false and the triggers never NOTIFY): the
                cost of the trigger alone, without the listener's reads, position saves and CPU.
log-floor       the least any log-table capture must do: a row-level trigger that inserts one
                row per changed row into pgbinding_change with only the table, the operation
                and the key (no jsonb of old and new, no wake-up). Not a usable capture; it
                shows how much of the write-path cost is the extra log insert itself.
stmt-floor      the same, statement-level: one INSERT ... SELECT of (table, op, key) from the
                statement's transition table. The least a statement-level log capture does.
rowlevel        a row-level variant of the capture function (FOR EACH ROW triggers for INSERT,
                UPDATE and DELETE; TRUNCATE stays statement-level), same log rows, same
                wake-up rule, with the normal listener.
lean            the leaner trigger tried for issue 14 (bench/analysis.md, "A leaner trigger"):
                statement-level like the released one, but an UPDATE of up to 100 rows logs in
                ``old`` only the old values of the columns it changed (a reader would rebuild
                the old row as ``new || old``; the released listener does not, so events of
                this table carry partial old rows: measure, do not deliver). Pinned settings
                as the released function, plus ``plan_cache_mode = force_generic_plan``.
rowlean         the same log rows from a row-level function (no pinned settings).
noset           the released v2 function without its pinned settings (only schema v4's
                ``plan_cache_mode``): what setting six settings on every call costs. Not
                usable: its log rows depend on the writer's session settings.
guarded         the released v2 function without per-call settings but plan_cache_mode: it
                compares the session's five rendering settings with the pinned values in one
                expression (DateStyle's output style only: Postgres' default ``ISO, MDY``
                renders as ``ISO, YMD`` does) and only when one differs sets them for the
                transaction
                (set_config) and puts them back before it returns (an error rolls them back
                with the statement's transaction or savepoint). Same log rows; what pinning
                would cost if writers' sessions already match (Django's do, with USE_TZ).
onerow          the released v2 function (settings pinned, generic plans) with a fast path
                for a single-row UPDATE: two one-row SELECTs and an INSERT ... VALUES instead
                of the full join of the transition tables; statements of more rows, and a
                row whose key changed, go the released way. Same log rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from pgbinding.capture.logical import SESSION_SETTINGS
from pgbinding.capture.sql import template, trigger_sql

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


LEAN_FUNCTION = """
CREATE OR REPLACE FUNCTION bench_capture_lean() RETURNS trigger
LANGUAGE plpgsql
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres'
SET bytea_output = 'hex'
SET extra_float_digits = 1
SET plan_cache_mode = force_generic_plan
AS $body$
DECLARE
    pk_col text := TG_ARGV[0];
    captured bigint;
    whole_old boolean;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pgbinding_change (table_name, op, pk, old, new)
        SELECT TG_TABLE_NAME, 'I', n.j ->> pk_col, NULL, n.j
        FROM (SELECT to_jsonb(t) AS j FROM pgbinding_new t) n;
    ELSIF TG_OP = 'UPDATE' THEN
        whole_old := EXISTS (SELECT FROM pgbinding_new OFFSET 100);
        INSERT INTO pgbinding_change (table_name, op, pk, old, new)
        SELECT TG_TABLE_NAME,
               CASE WHEN o.j IS NULL THEN 'I' WHEN n.j IS NULL THEN 'D' ELSE 'U' END,
               coalesce(n.j ->> pk_col, o.j ->> pk_col),
               CASE WHEN o.j IS NULL OR n.j IS NULL OR whole_old THEN o.j
                    ELSE (SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(o.j) e
                           WHERE (n.j -> e.key) IS DISTINCT FROM e.value) END,
               n.j
        FROM (SELECT j, j -> pk_col AS k
                FROM (SELECT to_jsonb(t) AS j FROM pgbinding_old t OFFSET 0) x) o
        FULL JOIN (SELECT j, j -> pk_col AS k
                FROM (SELECT to_jsonb(t) AS j FROM pgbinding_new t OFFSET 0) x) n
          ON o.k = n.k
        WHERE o.j IS DISTINCT FROM n.j;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pgbinding_change (table_name, op, pk, old, new)
        SELECT TG_TABLE_NAME, 'D', o.j ->> pk_col, o.j, NULL
        FROM (SELECT to_jsonb(t) AS j FROM pgbinding_old t) o;
    END IF;
    GET DIAGNOSTICS captured = ROW_COUNT;
    IF captured > 0 AND (SELECT sleeping FROM {wakeup_table}) THEN
        PERFORM pg_notify('pgbinding', '');
    END IF;
    RETURN NULL;
END
$body$;
"""

LEAN_TRIGGERS = """
CREATE TRIGGER bench_lean_i AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS pgbinding_new
    FOR EACH STATEMENT EXECUTE FUNCTION bench_capture_lean('id');
CREATE TRIGGER bench_lean_u AFTER UPDATE ON {table}
    REFERENCING OLD TABLE AS pgbinding_old NEW TABLE AS pgbinding_new
    FOR EACH STATEMENT EXECUTE FUNCTION bench_capture_lean('id');
CREATE TRIGGER bench_lean_d AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS pgbinding_old
    FOR EACH STATEMENT EXECUTE FUNCTION bench_capture_lean('id');
"""


ROWLEAN_FUNCTION = """
CREATE OR REPLACE FUNCTION bench_capture_rowlean() RETURNS trigger
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
            RETURN NULL;
        ELSIF (o -> pk_col) = (n -> pk_col) THEN
            INSERT INTO pgbinding_change (table_name, op, pk, old, new)
            VALUES (TG_TABLE_NAME, 'U', n ->> pk_col,
                    (SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(o) e
                      WHERE (n -> e.key) IS DISTINCT FROM e.value), n);
        ELSE
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

ROWLEAN_TRIGGERS = """
CREATE TRIGGER bench_rowlean AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION bench_capture_rowlean('id');
"""


FLOOR_FUNCTION = """
CREATE OR REPLACE FUNCTION bench_capture_floor() RETURNS trigger
LANGUAGE plpgsql AS $body$
BEGIN
    INSERT INTO pgbinding_change (table_name, op, pk)
    VALUES (TG_TABLE_NAME, left(TG_OP, 1), CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id
                                             END::text);
    RETURN NULL;
END
$body$;
"""

FLOOR_TRIGGERS = """
CREATE TRIGGER bench_floor AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION bench_capture_floor();
"""


STMT_FLOOR_FUNCTION = """
CREATE OR REPLACE FUNCTION bench_capture_stmt_floor() RETURNS trigger
LANGUAGE plpgsql AS $body$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO pgbinding_change (table_name, op, pk)
        SELECT TG_TABLE_NAME, 'D', o.id::text FROM old_rows o;
    ELSE
        INSERT INTO pgbinding_change (table_name, op, pk)
        SELECT TG_TABLE_NAME, left(TG_OP, 1), n.id::text FROM new_rows n;
    END IF;
    RETURN NULL;
END
$body$;
"""

STMT_FLOOR_TRIGGERS = """
CREATE TRIGGER bench_stmt_floor_i AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION bench_capture_stmt_floor();
CREATE TRIGGER bench_stmt_floor_u AFTER UPDATE ON {table}
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION bench_capture_stmt_floor();
CREATE TRIGGER bench_stmt_floor_d AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION bench_capture_stmt_floor();
"""


def _v2_body(fast_path: str = "") -> str:
    """The released v2 function's body, as schema_v2.sql has it, with ``fast_path`` first in
    its UPDATE branch (and the variables that needs)."""
    text = template("schema_v2")
    body = text[text.index("AS $body$") + len("AS $body$") : text.index("$body$;")]
    if fast_path:
        body = body.replace("captured bigint;", "captured bigint;\n    news jsonb[];\n    o jsonb;")
        branch = "ELSIF TG_OP = 'UPDATE' THEN\n"
        body = body.replace(branch, branch + fast_path, 1)
    return body


#: A single-row UPDATE logged with two one-row SELECTs and an INSERT ... VALUES.
_ONEROW_PATH = """        SELECT array_agg(j) INTO news
          FROM (SELECT to_jsonb(t) AS j FROM pgbinding_new t LIMIT 2) x;
        IF cardinality(news) = 1 THEN
            SELECT to_jsonb(t) INTO o FROM pgbinding_old t;
            IF o IS NOT DISTINCT FROM news[1] THEN
                RETURN NULL;
            ELSIF (o -> pk_col) = (news[1] -> pk_col) THEN
                INSERT INTO pgbinding_change (table_name, op, pk, old, new)
                VALUES (TG_TABLE_NAME, 'U', news[1] ->> pk_col, o, news[1]);
                IF (SELECT sleeping FROM {wakeup_table}) THEN
                    PERFORM pg_notify('pgbinding', '');
                END IF;
                RETURN NULL;
            END IF;
        END IF;
"""

#: The settings v2 pins for rendering (search_path aside), and their pinned values: the same
#: ones the logical backend pins for pgoutput's text.
_PINNED = SESSION_SETTINGS
#: DateStyle's second part (MDY, YMD ...) only orders input; ISO output is the same for all.
_DIFFERS = " OR ".join(
    "split_part(current_setting('DateStyle'), ',', 1) <> 'ISO'"
    if k == "DateStyle"
    else f"current_setting('{k}') <> '{v}'"
    for k, v in _PINNED.items()
)
_SAVE = ", ".join(f"current_setting('{k}')" for k in _PINNED)
_PIN = ", ".join(f"set_config('{k}', '{v}', true)" for k, v in _PINNED.items())
_RESTORE = ", ".join(f"set_config('{k}', saved[{i + 1}], true)" for i, k in enumerate(_PINNED))


def _guarded_body() -> str:
    body = _v2_body().replace("captured bigint;", "captured bigint;\n    saved text[];")
    body = body.replace(
        "BEGIN\n",
        f"BEGIN\n    IF {_DIFFERS} THEN\n        saved := ARRAY[{_SAVE}];\n"
        f"        PERFORM {_PIN};\n    END IF;\n",
        1,
    )
    tail = "    RETURN NULL;\nEND"
    assert body.count(tail) == 1
    return body.replace(
        tail, f"    IF saved IS NOT NULL THEN\n        PERFORM {_RESTORE};\n    END IF;\n{tail}"
    )


GUARDED_FUNCTION = (
    "CREATE OR REPLACE FUNCTION bench_capture_guarded() RETURNS trigger LANGUAGE plpgsql"
    " SET plan_cache_mode = force_generic_plan AS $body$" + _guarded_body() + "$body$;"
)

NOSET_FUNCTION = (
    "CREATE OR REPLACE FUNCTION bench_capture_noset() RETURNS trigger LANGUAGE plpgsql"
    " SET plan_cache_mode = force_generic_plan AS $body$" + _v2_body() + "$body$;"
)

ONEROW_FUNCTION = (
    "CREATE OR REPLACE FUNCTION bench_capture_onerow() RETURNS trigger LANGUAGE plpgsql"
    " SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres'"
    " SET bytea_output = 'hex' SET extra_float_digits = 1"
    " SET plan_cache_mode = force_generic_plan SET search_path = pg_catalog, public, pg_temp"
    " AS $body$" + _v2_body(_ONEROW_PATH) + "$body$;"
)


def _v2_triggers(name: str) -> str:
    """The released trigger_v2 statements, calling bench_capture_<name>."""
    return "\n".join(
        f"CREATE TRIGGER bench_{name}_{op} AFTER {op.upper()} ON {{table}} {ref}"
        f" FOR EACH STATEMENT EXECUTE FUNCTION bench_capture_{name}('id');"
        for op, ref in (
            ("insert", "REFERENCING NEW TABLE AS pgbinding_new"),
            ("update", "REFERENCING OLD TABLE AS pgbinding_old NEW TABLE AS pgbinding_new"),
            ("delete", "REFERENCING OLD TABLE AS pgbinding_old"),
        )
    )


@dataclass(frozen=True)
class Experiment:
    description: str
    #: "default" or "off": how the pgbinding listener must run during it.
    listener: str
    function_sql: str | None = None
    triggers_sql: str | None = None


EXPERIMENTS: dict[str, Experiment] = {
    "trigger-only": Experiment("released trigger, no listener running", "off"),
    "log-floor": Experiment(
        "row-level insert of (table, op, key) only", "default", FLOOR_FUNCTION, FLOOR_TRIGGERS
    ),
    "stmt-floor": Experiment(
        "statement-level insert of (table, op, key) only",
        "default",
        STMT_FLOOR_FUNCTION,
        STMT_FLOOR_TRIGGERS,
    ),
    "rowlevel": Experiment(
        "row-level copy of the capture function", "default", ROWLEVEL_FUNCTION, ROWLEVEL_TRIGGERS
    ),
    "lean": Experiment(
        "statement-level, UPDATE logs only changed old values",
        "default",
        LEAN_FUNCTION,
        LEAN_TRIGGERS,
    ),
    "rowlean": Experiment(
        "row-level, UPDATE logs only changed old values",
        "default",
        ROWLEAN_FUNCTION,
        ROWLEAN_TRIGGERS,
    ),
    "noset": Experiment(
        "the released function without its pinned settings",
        "default",
        NOSET_FUNCTION,
        _v2_triggers("noset"),
    ),
    "guarded": Experiment(
        "the released function, settings pinned only when the session differs",
        "default",
        GUARDED_FUNCTION,
        _v2_triggers("guarded"),
    ),
    "onerow": Experiment(
        "the released function with a single-row UPDATE fast path",
        "default",
        ONEROW_FUNCTION,
        _v2_triggers("onerow"),
    ),
}


def install_experiment(conn: psycopg.Connection[Any], name: str, table: str) -> None:
    exp = EXPERIMENTS[name]
    if exp.function_sql is None:
        for statement in trigger_sql(table, "id")[0]:
            conn.execute(statement)
        return
    else:
        from .common import wakeup_table

        conn.execute(exp.function_sql.replace("{wakeup_table}", wakeup_table(conn)))
    assert exp.triggers_sql is not None
    conn.execute(exp.triggers_sql.format(table=table))
