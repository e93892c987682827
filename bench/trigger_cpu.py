"""CPU cost of the capture trigger per single-row statement, without commits or clients.

    python -m bench.trigger_cpu [--statements 10000] [--repeat 3] [--dsn URL]

Runs ``--statements`` single-row UPDATEs (then INSERTs) inside one DO block, so one transaction
and no network: what remains is the executor's work per statement, trigger included. Compared:
no trigger, pgbinding's released capture (with the ``sleeping`` flag false, as under load), the
log-floor, rowlevel, lean, rowlean, noset, guarded and onerow experiments (bench/experiment.py)
and the row-level pg_notify trigger (whose real cost, the commit lock, does not show here at
all). Median of ``--repeat``.

Each variant runs in a session of its own (``TimeZone`` set to ``UTC``, as Django sets it with
``USE_TZ``) that first does what a busy application session may do: 10 single-row statements,
then, after an ``ANALYZE pgbinding_change`` (autovacuum's, on a busy log: it invalidates every
session's plans), one statement over all 10,000 rows. ``pgbinding, auto plans`` is the
released function as schema v3 left it, with Postgres' default ``plan_cache_mode``: after that
prelude it plans its INSERT anew for every statement (schema v4 forces the generic plan;
tests/integration/test_capture_plans.py).

Table names in the SQL below are this module's own constants, never input.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from pgbinding.capture.sql import TRIGGER_VERSION

from . import common, module
from .experiment import install_experiment
from .write_path import NOTIFY_FUNCTION

VARIANTS = [
    ("plain", "no trigger"),
    ("pgbinding", f"pgbinding {TRIGGER_VERSION}"),
    ("pgbinding_auto", f"pgbinding {TRIGGER_VERSION}, auto plans"),
    ("log_floor", "EXP log-floor"),
    ("rowlevel", "EXP rowlevel"),
    ("lean", "EXP lean"),
    ("rowlean", "EXP rowlean"),
    ("noset", "EXP noset"),
    ("guarded", "EXP guarded"),
    ("onerow", "EXP onerow"),
    ("notify", "row notify"),
]
ROWS = 10_000
#: Schema v3's function (Postgres' default plan_cache_mode), and schema v4's.
AUTO_PLANS = "RESET plan_cache_mode"
GENERIC_PLANS = "SET plan_cache_mode = force_generic_plan"


def main(argv: list[str] | None = None) -> None:
    p = module.Parser("trigger_cpu", __doc__, quick="2,000 statements, 1 repeat", runs=None)
    p.add_argument(
        "--statements", type=int, default=10_000, help="per DO block (10000; --quick 2000)"
    )
    p.add_argument("--repeat", type=int, default=3, help="medians of this many (3; --quick 1)")
    p.set_quick_defaults(statements=2000, repeat=1)
    args = p.parse(argv)
    with common.server(args.dsn) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        machine = common.machine_report(conn)
        print("\n".join(machine))
        common.install_pgbinding_schema(conn)
        wakeup = common.wakeup_table(conn)
        conn.execute(f"UPDATE {wakeup} SET sleeping = false")  # noqa: S608 - own name
        conn.execute(NOTIFY_FUNCTION)
        for key, _ in VARIANTS:
            table = f"c_{key}"
            common.create_table(conn, table, ROWS)
            if key.startswith("pgbinding"):
                common.install_pgbinding_trigger(conn, table)
            elif key in ("log_floor", "rowlevel", "lean", "rowlean", "noset", "guarded", "onerow"):
                install_experiment(conn, key.replace("_", "-"), table)
            elif key == "notify":
                conn.execute(
                    f"CREATE TRIGGER bench_notify AFTER INSERT OR UPDATE OR DELETE ON {table}"
                    " FOR EACH ROW EXECUTE FUNCTION bench_notify_row()"
                )
        conn.execute("VACUUM ANALYZE")
        n = args.statements
        #: (one row, every row): the session's statements before the measured loop
        preludes = {
            "update": ("UPDATE {t} SET value = value + 1 WHERE id = 1", "UPDATE {t} SET value = 0"),
            "insert": (
                "INSERT INTO {t} (name, value, updated_at) VALUES ('bench', 0, now())",
                "INSERT INTO {t} (name, value, updated_at)"
                " SELECT 'bench', i, now() FROM generate_series(1, {rows}) i",
            ),
        }
        loops = {
            "update": "FOR i IN 1..{n} LOOP UPDATE {t} SET value = value + 1, "
            "updated_at = now() WHERE id = 1 + (i * 7919) % {rows}; END LOOP;",
            "insert": "FOR i IN 1..{n} LOOP INSERT INTO {t} (name, value, updated_at) "
            "VALUES ('bench', i, now()); END LOOP;",
        }
        print(
            f"== microseconds per single-row statement, {n} statements in one transaction, "
            f"median of {args.repeat}"
        )
        print(f"{'variant':16} {'update':>8} {'insert':>8}")
        results: dict[tuple[str, str], list[float]] = {}
        for rep in range(args.repeat):
            for workload, body in loops.items():
                for key, _ in VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]:
                    table = f"c_{key}"
                    conn.execute("TRUNCATE pgbinding_change")
                    conn.execute(f"DELETE FROM {table} WHERE id > {ROWS}")  # noqa: S608
                    conn.execute(f"VACUUM {table}, pgbinding_change")
                    sql = "DO $$ BEGIN " + body.format(n=n, t=table, rows=ROWS) + " END $$"
                    conn.execute(
                        f"ALTER FUNCTION pgbinding_capture_{TRIGGER_VERSION}() "
                        + (AUTO_PLANS if key == "pgbinding_auto" else GENERIC_PLANS)
                    )
                    with psycopg.connect(dsn, autocommit=True) as session:
                        # As Django's connections have it (USE_TZ = True).
                        session.execute("SET TimeZone = 'UTC'")
                        one, every = (q.format(t=table, rows=ROWS) for q in preludes[workload])
                        for _ in range(10):
                            session.execute(one)
                        conn.execute("ANALYZE pgbinding_change")
                        session.execute(every)
                        t0 = time.perf_counter()
                        session.execute(sql)
                        results.setdefault((key, workload), []).append(
                            (time.perf_counter() - t0) / n * 1e6
                        )
        rows = []
        for key, label in VARIANTS:
            u = common.median(results[(key, "update")])
            i = common.median(results[(key, "insert")])
            print(f"{label:16} {u:>8.1f} {i:>8.1f}")
            rows.append({"variant": key, "label": label, "update_us": u, "insert_us": i})
        module.finish(args, {"statements": n, "repeat": args.repeat}, machine, rows)


def markdown(data: dict[str, Any]) -> str:
    p = data["params"]
    base = {r["variant"]: r for r in data["results"]}["plain"]
    lines = [
        f"{p['statements']:,} single-row statements in one `DO` block (one transaction, no "
        f"commits, no network): the executor's CPU per statement, trigger included. Median of "
        f"{p['repeat']}. `EXP log-floor` is not a capture: a row-level trigger that inserts only "
        "(table, op, key) into the log, the least any log-table capture does. Each variant runs "
        "in a fresh session (`TimeZone` UTC, as Django sets it) after 10 single-row statements, an "
        "`ANALYZE pgbinding_change` (as "
        "autovacuum does on a busy log) and one statement over all 10,000 rows; `auto plans` is "
        "the released function without schema v4's `plan_cache_mode = force_generic_plan`, which "
        "after that prelude plans its INSERT anew for every statement.",
        "",
        "| variant | update µs | + vs no trigger | insert µs | + vs no trigger |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['label']} | {r['update_us']:.1f} | {r['update_us'] - base['update_us']:+.1f} "
            f"| {r['insert_us']:.1f} | {r['insert_us'] - base['insert_us']:+.1f} |"
        )
    return "\n".join(lines)


def plots(data: dict[str, Any], outdir: Path) -> list[Path]:
    return []


def targets(data: dict[str, Any]) -> list[module.Target]:
    return []


if __name__ == "__main__":
    main()
