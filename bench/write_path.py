"""Write-path cost of change capture: single-row UPDATE and INSERT throughput under pgbench.

    python -m bench.write_path [--seconds 4] [--clients 1,8,32] [--runs 3] [--dsn URL]
    python -m bench.write_path --quick          # 3 s, 1 run: a smoke check

Variants, measured side by side in one run on identical 10,000-row tables, interleaved (the
order of the variants is rotated from run to run), reported as medians over the runs:

  plain      no trigger.
  pgbinding  pgbinding's capture as the migrations install it (schema_v1 + trigger_v1), with a
             real pgbinding Listener running in its own process, reading and discarding the log
             (empty Registry). Under load the listener is busy, so the triggers skip NOTIFY.
  notify     a hand-written row-level AFTER trigger that calls pg_notify with the row as JSON
             (old and new, like django-pgpubsub's Notify trigger), with one LISTENing
             connection, in its own process, draining and parsing the notifications.
  logical    pgbinding's logical capture backend (``PGBINDING["CAPTURE"] = "logical"``): no
             trigger; the table set up as the logical capture migrations do it (REPLICA
             IDENTITY FULL, in the publication, a pgoutput slot: pgbinding.capture.logical's
             SQL), with a real pgbinding Listener with CAPTURE = "logical" in its own process:
             its pump reads the slot and writes the log while pgbench runs, and the listener
             reads the log (empty Registry). ``--no-logical`` leaves this variant out.

Only the measured variant's listener is busy. The trigger listener runs (idle, asleep on
NOTIFY) for the other variants; it is stopped, and the logical listener started, for each
logical measurement, and the logical listener is stopped again before the next one: its pump
decodes all WAL, so it would be busy during the other variants. While it is stopped, the bench
moves the slot past the WAL of the other variants and of its own resets (as the triggers are
off for the resets), so its pump never decodes them during a measurement.

With the logical variant in the run, the server runs with ``wal_level = logical`` (and
``max_replication_slots``, ``max_wal_senders``) for every variant, so the ratios compare like
with like; the wal_level is printed and kept in the JSON. A ``--dsn`` server must have it.

WAL bytes and Postgres CPU (every Postgres process: the backends of pgbench, the listener
(which reads the slot through SQL functions, so there is no walsender) and the drainer) are
reported per transaction twice: during the load, and from its start until the consumer had
read everything (the logical backend writes the log after the commits, in the drain too).

The load generator is pgbench (C, ``-c N -j min(N,2) -T S -n -f script``), not Python. The server
is a private embedded Postgres started with fsync, synchronous_commit and full_page_writes ON
(the embedded helper's test defaults turn them off), unless ``--dsn`` names another server.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.sql

from . import common, module, slot
from .consumers import (
    LISTENER_APPLICATION,
    LISTENER_NAME,
    NOTIFY_CHANNEL,
    run_drainer,
    run_listener,
)
from .experiment import EXPERIMENTS, install_experiment

ROWS = 10_000

NOTIFY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION bench_notify_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload jsonb;
BEGIN
    -- The common hand-written approach (the shape of django-pgpubsub's Notify trigger):
    -- one NOTIFY per row, carrying the row(s) as JSON.
    payload := jsonb_build_object(
        'table', TG_TABLE_NAME, 'op', TG_OP,
        'old', CASE WHEN TG_OP <> 'INSERT' THEN row_to_json(OLD) END,
        'new', CASE WHEN TG_OP <> 'DELETE' THEN row_to_json(NEW) END);
    PERFORM pg_notify('{NOTIFY_CHANNEL}', payload::text);
    RETURN NULL;
END $$;
"""


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    table: str
    #: How the pgbinding listener must run while this variant is measured ("default": as
    #: shipped, trigger capture; "logical": with CAPTURE = "logical"; "off": not running;
    #: None: as it happens to be, idle).
    listener: str | None = None

    @property
    def captures(self) -> bool:
        """Whether this variant writes pgbinding's change log."""
        return self.key in ("pgbinding", "logical") or self.key.startswith("exp:")


BASE_VARIANTS = [
    Variant("plain", "no trigger", "t_plain"),
    Variant("pgbinding", "pgbinding", "t_pgbinding", "default"),
    Variant("notify", "row notify", "t_notify"),
]
LOGICAL_VARIANT = Variant("logical", "pgbinding logical", "t_logical", "logical")

SCRIPTS = {
    "update": "\\set id random(1, {rows})\n"
    "UPDATE {table} SET value = value + 1, updated_at = now() WHERE id = :id;\n",
    "insert": "INSERT INTO {table} (name, value, updated_at) VALUES ('bench', 1, now());\n",
}


def with_params(dsn: str, **params: str) -> str:
    parts = urlsplit(dsn)
    query = "&".join(q for q in (parts.query, urlencode(params, quote_via=quote)) if q)
    return urlunsplit(parts._replace(query=query))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = module.Parser("write_path", __doc__, quick="3 s, 1 run")
    p.add_argument(
        "--seconds", type=int, default=4, help="length of each pgbench run (4; --quick 3)"
    )
    p.set_quick_defaults(seconds=3)
    p.add_list("--clients", "client_list", "1,8,32", "client counts (1,8,32)", item=int)
    p.add_list("--workloads", "workload_list", "update,insert", "update,insert", choices=SCRIPTS)
    p.add_argument(
        "--experiment",
        action="append",
        default=[],
        choices=sorted(EXPERIMENTS),
        help="also measure an experimental capture function (see bench/experiment.py)",
    )
    p.add_argument(
        "--no-logical",
        dest="logical",
        action="store_false",
        help="leave out the logical capture variant (then the server keeps its wal_level)",
    )
    p.add_quiet()
    p.add_argument(
        "--max-other",
        type=float,
        default=0.5,
        help="repeat a measurement (up to --retries times, keeping the cleanest) when other "
        "work on the machine used more than this many cores during it (0.5)",
    )
    p.add_argument("--retries", type=int, default=1)
    return p.parse(argv)


class Bench:
    def __init__(self, args: argparse.Namespace, dsn: str) -> None:
        self.args = args
        self.machine: list[str] = []
        self.settings: list[str] = []
        self.dsn = dsn
        self.conn = psycopg.connect(
            with_params(dsn, application_name="bench-driver"), autocommit=True
        )
        self.variants = BASE_VARIANTS + ([LOGICAL_VARIANT] if args.logical else [])
        self.variants += [
            Variant(
                f"exp:{name}",
                f"EXP {name}",
                f"t_exp_{name.replace('-', '_')}",
                EXPERIMENTS[name].listener,
            )
            for name in args.experiment
        ]
        self.pgbench = common.pgbench_path()
        self.tmp = Path(tempfile.mkdtemp(prefix="pgbinding-bench-scripts-"))
        self.ctx = mp.get_context("spawn")
        self.listener: Any = None
        self.listener_stop: Any = None
        self.drainer: Any = None
        self.listener_mode = "off"
        self.results: list[dict[str, Any]] = []
        self.logical = args.logical
        self.wal_level = ""
        self.waited = 0.0
        self.retried = 0

    # -- setup --------------------------------------------------------------------------------

    def header(self) -> None:
        self.machine = common.announce_server(self.conn)
        self.settings = common.settings_report(self.conn)
        self.wal_level = slot.wal_level(self.conn)
        if self.logical and self.wal_level != "logical":
            raise SystemExit(
                f"the logical variant needs wal_level = logical; this server has "
                f"{self.wal_level!r}: set it (and max_replication_slots, max_wal_senders) or "
                "pass --no-logical"
            )
        print(f"== wal_level = {self.wal_level} for every variant")
        a = self.args
        n = a.runs * len(a.workload_list) * len(a.client_list) * len(self.variants)
        print(
            f"== plan: {n} pgbench runs of {a.seconds} s ({a.runs} run(s) x workloads "
            f"{a.workload_list} x clients {a.client_list} x {len(self.variants)} variants), "
            f"about {n * (a.seconds + 1.5) / 60:.1f} min"
        )
        print(f"   pgbench: {self.pgbench} -n -f SCRIPT -c N -j min(N,2) -T {a.seconds}")
        sys.stdout.flush()

    def setup(self) -> None:
        c = self.conn
        for v in self.variants:
            common.create_table(c, v.table, ROWS)
        common.install_pgbinding_schema(c)
        self.wakeup_table = common.wakeup_table(c)
        common.install_pgbinding_trigger(c, "t_pgbinding")
        c.execute(NOTIFY_FUNCTION)
        c.execute(
            "CREATE TRIGGER bench_notify AFTER INSERT OR UPDATE OR DELETE ON t_notify"
            " FOR EACH ROW EXECUTE FUNCTION bench_notify_row()"
        )
        for v in self.variants:
            if v.key.startswith("exp:"):
                install_experiment(c, v.key[4:], v.table)
        if self.logical:
            slot.install(c, [LOGICAL_VARIANT.table])
        c.execute("VACUUM ANALYZE")
        for v in self.variants:
            for w in self.args.workload_list:
                path = self.tmp / f"{w}_{v.table}.sql"
                path.write_text(SCRIPTS[w].format(table=v.table, rows=ROWS))

    def start_consumers(self) -> None:
        self.postmaster = common.postmaster_pid(self.conn)
        self.drainer_stop = self.ctx.Event()
        ready = self.ctx.Event()
        self.notified = self.ctx.Value("q", 0, lock=False)
        self.wakeups = self.ctx.Value("q", 0, lock=False)
        self.drainer = self.ctx.Process(
            target=run_drainer,
            name="bench-drainer",
            args=(
                with_params(self.dsn, application_name="bench-drainer"),
                ready,
                self.drainer_stop,
                self.notified,
                self.wakeups,
            ),
        )
        self.drainer.start()
        if not ready.wait(60):
            raise SystemExit("the drainer process did not start")
        self.ensure_listener("default")
        print(
            f"== consumers: listener pid {self.listener.pid} (backend "
            f"{self.backend_pid(LISTENER_APPLICATION)}), drainer pid {self.drainer.pid} (backend "
            f"{self.backend_pid('bench-drainer')}); load generator: pgbench, a child of this "
            "process"
        )

    def backend_pid(self, application_name: str) -> int | None:
        row = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        ).fetchone()
        return int(row[0]) if row else None

    def listener_mode_for(self, v: Variant) -> str | None:
        """How the listener runs while ``v`` is measured. "As it happens to be" (None) means
        idle, which the logical listener is not under another variant's load (its pump
        decodes all WAL): then the trigger listener, idle, takes its place."""
        if v.listener is None and self.listener_mode == "logical":
            return "default"
        return v.listener

    def ensure_listener(self, mode: str | None) -> None:
        """Run the listener the way a variant needs it (restarting it if need be)."""
        if mode is None or mode == self.listener_mode:
            return
        if self.listener is not None:
            self.listener_stop.set()
            self.listener.join(30)
            if self.listener.is_alive():
                self.listener.terminate()
                self.listener.join(5)
            self.listener = None
        self.listener_mode = mode
        if mode != "off":
            params = {"application_name": "bench-listener"}  # pgbinding renames its session
            self.listener_stop = self.ctx.Event()
            ready = self.ctx.Event()
            capture = "logical" if mode == "logical" else "trigger"
            self.listener = self.ctx.Process(
                target=run_listener,
                name="bench-listener",
                args=(with_params(self.dsn, **params), ready, self.listener_stop, capture),
            )
            self.listener.start()
            if not ready.wait(180):
                raise SystemExit(
                    f"the listener process did not start within 180 s (exit code "
                    f"{self.listener.exitcode}); BENCH_LISTENER_LOG=INFO shows its log"
                )
            self.wait_listener_caught_up(30)
            if mode == "logical":
                self.wait_slot_passed(slot.flush_lsn(self.conn), 60)
        others: dict[str, int] = {"drainer_py": self.drainer.pid}
        pid = self.backend_pid("bench-drainer")
        if pid:
            others["drainer_pg"] = pid
        if self.listener is not None:
            others["listener_py"] = self.listener.pid
            pid = self.backend_pid(LISTENER_APPLICATION)
            if pid:
                others["listener_pg"] = pid
        self.meter = common.CpuMeter(self.postmaster, others)
        #: The same, from the start of the load until the consumer has read everything.
        self.meter_all = common.CpuMeter(self.postmaster, others)

    def stop_consumers(self) -> None:
        if self.listener is not None:
            self.ensure_listener("off")
        if self.drainer is not None:
            self.drainer_stop.set()
            self.drainer.join(20)
            if self.drainer.is_alive():
                self.drainer.terminate()
                self.drainer.join(5)

    # -- one measurement ----------------------------------------------------------------------

    def listener_state(self) -> tuple[int, int, bool]:
        row = self.conn.execute(
            "SELECT (SELECT coalesce(max(id), 0) FROM pgbinding_change), l.position,"
            " l.pending = '[]'::jsonb FROM pgbinding_listener l WHERE l.name = %s",
            [LISTENER_NAME],
        ).fetchone()
        return (int(row[0]), int(row[1]), bool(row[2])) if row else (0, -1, False)

    def wait_listener_caught_up(self, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            top, pos, clean = self.listener_state()
            if pos >= top and clean:
                return time.monotonic() - start
            if self.listener is None or not self.listener.is_alive():
                raise SystemExit("the listener process died")
            time.sleep(0.01)
        raise SystemExit(f"the listener did not catch up within {timeout} s")

    def wait_drained(self, target: int, timeout: float) -> float:
        start = time.monotonic()
        while self.notified.value < target:
            if time.monotonic() - start > timeout:
                raise SystemExit(f"the drainer got {self.notified.value} of {target} notifications")
            time.sleep(0.01)
        return time.monotonic() - start

    def wal_lsn(self) -> int:
        row = self.conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
        return int(row[0]) if row else 0

    def wait_slot_passed(self, lsn: int, timeout: float) -> float:
        """Wait until the logical listener's pump has read the slot up to ``lsn``."""
        start = time.monotonic()
        while slot.read_lsn(self.conn) < lsn:
            if time.monotonic() - start > timeout:
                raise SystemExit(f"the pump did not read the slot up to {lsn} in {timeout} s")
            if self.listener is None or not self.listener.is_alive():
                raise SystemExit("the logical listener process died")
            time.sleep(0.01)
        return time.monotonic() - start

    def wait_logical_drained(self, xacts: int, wal_end: int, timeout: float) -> float:
        """Wait until the pump has written every transaction of the load into the log (one
        row each; or, should pgbench's count be off, the slot read past the load's WAL) and
        the listener has read it."""
        start = time.monotonic()
        while slot.log_rows(self.conn) < xacts and slot.read_lsn(self.conn) < wal_end:
            if time.monotonic() - start > timeout:
                raise SystemExit(f"the pump wrote {slot.log_rows(self.conn)} of {xacts} rows")
            if self.listener is None or not self.listener.is_alive():
                raise SystemExit("the logical listener process died")
            time.sleep(0.01)
        self.wait_listener_caught_up(max(1.0, timeout - (time.monotonic() - start)))
        return time.monotonic() - start

    def reset(self) -> None:
        """Same starting state for every measurement: 10,000 rows, an empty log, no dead rows,
        a fresh checkpoint (so no measurement pays for another's dirty pages)."""
        c = self.conn
        c.execute("SET session_replication_role = replica")  # no triggers fire
        for v in self.variants:
            c.execute(f"DELETE FROM {v.table} WHERE id > {ROWS}")  # noqa: S608 - own name
        c.execute("RESET session_replication_role")
        c.execute("TRUNCATE pgbinding_change")
        if self.listener is None:
            # Nobody reads the log now: move the stopped listener's position past what was
            # truncated, so that it does not wait on a huge gap when it comes back.
            c.execute(
                "UPDATE pgbinding_listener SET position = coalesce(pg_sequence_last_value("
                "pg_get_serial_sequence('pgbinding_change', 'id')::regclass), 0),"
                " pending = '[]' WHERE name = %s",
                [LISTENER_NAME],
            )
        tables = [v.table for v in self.variants]
        tables += ["pgbinding_change", self.wakeup_table, "pgbinding_listener"]
        if self.logical:
            tables.append("pgbinding_slot")
        c.execute(f"VACUUM (ANALYZE) {', '.join(tables)}")
        if self.logical and self.listener_mode != "logical":
            slot.skip(self.conn)
        c.execute("CHECKPOINT")
        if self.logical and self.listener_mode != "logical":
            slot.skip(self.conn)

    def triggers_only_on(self, v: Variant) -> None:
        """Only the measured variant's table has its triggers enabled. The others' fire for
        no write of this measurement either way, but the logical listener writes the log
        durably while any capture trigger is enabled (it could draw log ids at any moment),
        so with t_pgbinding's enabled the logical variant would measure the durable write."""
        for u in self.variants:
            action = "ENABLE" if u is v else "DISABLE"
            self.conn.execute(
                psycopg.sql.SQL("ALTER TABLE {} {} TRIGGER USER").format(
                    psycopg.sql.Identifier(u.table), psycopg.sql.SQL(action)
                )
            )

    def measure(self, run: int, workload: str, clients: int, v: Variant) -> dict[str, Any]:
        mode = self.listener_mode_for(v)
        if mode == "logical":
            # A fresh logical listener after the reset, whose WAL the slot skips (as the
            # triggers are off for it): its pump decodes nothing but this measurement's load.
            self.ensure_listener("off")
            self.reset()
            self.ensure_listener("logical")
        else:
            self.ensure_listener(mode)
            self.reset()
        self.triggers_only_on(v)
        waited, idle_busy = 0.0, float("nan")
        if self.args.quiet_cores > 0:
            waited, idle_busy = common.wait_quiet(self.args.quiet_cores, self.args.quiet_wait)
            self.waited += waited
        script = self.tmp / f"{workload}_{v.table}.sql"
        notified0, wakeups0 = self.notified.value, self.wakeups.value
        wal0 = self.wal_lsn()
        self.meter_all.start()
        self.meter.start()
        res = common.run_pgbench(
            self.pgbench,
            with_params(self.dsn, application_name="bench-pgbench"),
            script,
            clients,
            self.args.seconds,
        )
        load_end = time.monotonic()
        wal_end = self.wal_lsn()
        cpu = self.meter.stop()
        wal = wal_end - wal0
        # The drain is counted from the end of the load: meter.stop() waits for pgbench's
        # backends to be reaped first (usually 0.2-0.5 s), which is its resolution.
        drain = float("nan")
        if v.key == "logical":
            self.wait_logical_drained(res.xacts, wal_end, 300)
            drain = time.monotonic() - load_end
        elif v.captures and self.listener is not None:
            self.wait_listener_caught_up(120)
            drain = time.monotonic() - load_end
        elif v.key == "notify":
            self.wait_drained(notified0 + res.xacts, 120)
            drain = time.monotonic() - load_end
        cpu_all = self.meter_all.stop()
        wal_all = self.wal_lsn() - wal0
        time.sleep(0.25)  # let the drainer report the wake-ups it got
        if v.key == "notify":
            seen = self.notified.value - notified0
        else:
            seen = self.wakeups.value - wakeups0
        return {
            "run": run,
            "workload": workload,
            "clients": clients,
            "variant": v.key,
            "label": v.label,
            "tps": res.tps,
            "xacts": res.xacts,
            "failed": res.failed,
            "latency_ms": res.latency_ms,
            "drain_s": drain,
            "cpu": cpu,
            "cpu_all": cpu_all,
            "notifies": seen,
            "wal_per_xact": wal / res.xacts if res.xacts else float("nan"),
            "pg_us_per_xact": cpu["postgres"] * cpu["wall"] / res.xacts * 1e6
            if res.xacts
            else float("nan"),
            # From the start of the load until the consumer had read everything.
            "wal_per_xact_all": wal_all / res.xacts if res.xacts else float("nan"),
            "pg_us_per_xact_all": cpu_all["postgres"] * cpu_all["wall"] / res.xacts * 1e6
            if res.xacts
            else float("nan"),
            # Changes captured and read per second: the load's transactions over the time from
            # its start until the consumer had read the last (NaN without a consumer, and for
            # the experiments: log-floor sends no wake-up, so its listener reads at keep-alive).
            "captured_per_s": res.xacts / (cpu["wall"] + drain)
            if drain == drain and not v.key.startswith("exp:")
            else float("nan"),
            "idle_busy": idle_busy,
            "waited_s": waited,
        }

    def run(self) -> None:
        a = self.args
        n = len(self.variants)
        started = time.monotonic()
        for run in range(a.runs):
            order = [self.variants[(i + run) % n] for i in range(n)]
            print(f"== run {run + 1}/{a.runs}: order {[v.key for v in order]}")
            for workload in a.workload_list:
                for clients in a.client_list:
                    line = []
                    for v in order:
                        r = self.measure(run, workload, clients, v)
                        for _ in range(a.retries):
                            if r["cpu"]["other"] <= a.max_other:
                                break
                            self.retried += 1
                            again = self.measure(run, workload, clients, v)
                            if again["cpu"]["other"] < r["cpu"]["other"]:
                                r = again
                        self.results.append(r)
                        other = r["cpu"]["other"]
                        flag = f" (other work {other:.1f} cores)" if other > 0.3 else ""
                        line.append(f"{v.key} {r['tps']:.0f}{flag}")
                    print(f"   {workload:6} c={clients:<3} " + "  ".join(line), flush=True)
        print(
            f"== measured in {(time.monotonic() - started) / 60:.1f} min (of which "
            f"{self.waited:.0f} s waiting for other work on the machine to quieten; "
            f"{self.retried} measurement(s) repeated because of it; "
            f"{sum(r['cpu']['other'] > a.max_other for r in self.results)} kept with more "
            f"than {a.max_other} cores of other work)"
        )

    # -- report -------------------------------------------------------------------------------

    def report(self) -> None:
        a = self.args
        med = common.median
        width = max(len(v.label) for v in self.variants)
        print()
        print(
            f"== results: median tps over {a.runs} run(s) of {a.seconds} s; ratio = median "
            "tps / median no-trigger tps; ratio range = min-max of the per-run ratios"
        )
        hdr = (
            f"{'workload':8} {'clients':>7}  {'variant':{width}} {'median tps':>10} "
            f"{'min-max tps':>15} {'ratio':>6} {'ratio range':>12}"
        )
        print(hdr)
        print("-" * len(hdr))
        for workload in a.workload_list:
            for clients in a.client_list:
                base = self.pick(workload, clients, "plain")
                base_med = med([r["tps"] for r in base])
                for v in self.variants:
                    rs = self.pick(workload, clients, v.key)
                    tps = [r["tps"] for r in rs]
                    ratios = [r["tps"] / b["tps"] for r, b in zip(rs, base, strict=True)]
                    ratio = med(tps) / base_med if base_med else float("nan")
                    rng = f"{min(ratios):.2f}-{max(ratios):.2f}"
                    print(
                        f"{workload:8} {clients:>7}  {v.label:{width}} {med(tps):>10.0f} "
                        f"{min(tps):>7.0f}-{max(tps):<7.0f} {ratio:>6.2f} {rng:>12}"
                    )
                print()
        print(
            f"== where the time went (medians; CPU in cores = CPU seconds per second, of "
            f"{common.NCPU})"
        )
        hdr = (
            f"{'workload':8} {'clients':>7}  {'variant':{width}} {'pgbench':>7} "
            f"{'postgres':>8} {'consumer':>8} {'busy%':>5} {'iowt%':>5} {'pg us/tx':>8} "
            f"{'WAL B/tx':>8} {'lat ms':>6} {'drain s':>7} {'us/tx+d':>7} {'B/tx+d':>7} "
            f"{'chg/s':>6} {'NOTIFYs':>7} {'other':>5}"
        )
        print(hdr)
        print("-" * len(hdr))
        for workload in a.workload_list:
            for clients in a.client_list:
                for v in self.variants:
                    rs = self.pick(workload, clients, v.key)

                    def m(key: str, rs: list[dict[str, Any]] = rs) -> float:
                        return med([r["cpu"].get(key, 0.0) for r in rs])

                    def f(key: str, rs: list[dict[str, Any]] = rs) -> float:
                        return med([r[key] for r in rs])

                    if v.key == "notify":
                        consumer = med(
                            [
                                r["cpu"].get("drainer_py", 0) + r["cpu"].get("drainer_pg", 0)
                                for r in rs
                            ]
                        )
                    elif not v.captures or v.listener == "off":
                        consumer = float("nan")
                    else:
                        consumer = med(
                            [
                                r["cpu"].get("listener_py", 0) + r["cpu"].get("listener_pg", 0)
                                for r in rs
                            ]
                        )
                    wake = f("notifies") if v.key != "plain" else float("nan")
                    print(
                        f"{workload:8} {clients:>7}  {v.label:{width}} {m('loadgen'):>7.2f} "
                        f"{m('postgres'):>8.2f} {consumer:>8.2f} {100 * m('busy'):>5.0f} "
                        f"{100 * m('iowait'):>5.0f} {f('pg_us_per_xact'):>8.0f} "
                        f"{f('wal_per_xact'):>8.0f} {f('latency_ms'):>6.2f} "
                        f"{f('drain_s'):>7.2f} {f('pg_us_per_xact_all'):>7.0f} "
                        f"{f('wal_per_xact_all'):>7.0f} "
                        f"{common.fmt(f('captured_per_s'), '.0f'):>6} "
                        f"{wake:>7.0f} {m('other'):>5.2f}"
                    )
        print(
            "  pgbench  = the load generator's CPU; postgres = all Postgres processes' CPU "
            "(the consumers' backends too);\n"
            "  consumer = CPU of the listener (pgbinding) or the drainer (notify): its Python "
            "process plus its backend;\n"
            "  busy%/iowt% = whole machine; pg us/tx = Postgres CPU per transaction; WAL B/tx = "
            "WAL bytes per transaction,\n"
            "  all sessions (the listener's position saves too); lat ms = pgbench's average "
            "latency;\n"
            "  drain s = time from the end of the load until the consumer had read everything;\n"
            "  us/tx+d, B/tx+d = Postgres CPU and WAL per transaction from the start of the load "
            "until then (the logical\n"
            "  backend's pump writes the log after the commits); chg/s = transactions / (load + "
            "drain): changes captured and read per second;\n"
            "  NOTIFYs = notifications received (pgbinding: wake-ups on channel 'pgbinding'; "
            "notify: one per row);\n"
            "  other = cores busy with anything else during the measurement (other people's "
            "work on a shared machine: noise)."
        )
        params = {
            "seconds": a.seconds,
            "runs": a.runs,
            "clients": a.client_list,
            "workloads": a.workload_list,
            "variants": [[v.key, v.label] for v in self.variants],
            "wal_level": self.wal_level,
        }
        module.finish(a, params, self.machine, self.results, settings=self.settings)

    def pick(self, workload: str, clients: int, key: str) -> list[dict[str, Any]]:
        return sorted(
            (
                r
                for r in self.results
                if r["workload"] == workload and r["clients"] == clients and r["variant"] == key
            ),
            key=lambda r: r["run"],
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    extra = slot.SERVER_SETTINGS if args.logical else None
    with common.server(args.dsn, extra=extra) as dsn:
        bench = Bench(args, dsn)
        try:
            bench.header()
            bench.setup()
            bench.start_consumers()
            bench.run()
            bench.report()
        finally:
            bench.stop_consumers()
            bench.conn.close()
            shutil.rmtree(bench.tmp, ignore_errors=True)


# -- the report's section (bench/report.py) ----------------------------------------------------

TARGETS = {1: 0.85, 8: 0.75, 32: 0.6}
#: The logical backend's targets (issue 14): tps / no-capture tps at each client count.
LOGICAL_TARGETS = {1: 0.9, 8: 0.9, 32: 0.9}
NAN = float("nan")


def _pick(data: dict[str, Any], workload: str, clients: int, key: str) -> list[dict[str, Any]]:
    return sorted(
        (
            r
            for r in data["results"]
            if r["workload"] == workload and r["clients"] == clients and r["variant"] == key
        ),
        key=lambda r: r["run"],
    )


def _consumer_cpu(r: dict[str, Any]) -> float:
    cpu = r["cpu"]
    if r["variant"] == "notify":
        return float(cpu.get("drainer_py", 0) + cpu.get("drainer_pg", 0))
    return float(cpu.get("listener_py", 0) + cpu.get("listener_pg", 0))


def summary(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (workload, clients, variant): medians and the ratio to no trigger."""
    med = common.median
    p = data["params"]
    rows = []
    for workload in p["workloads"]:
        for clients in p["clients"]:
            base = med([r["tps"] for r in _pick(data, workload, clients, "plain")])
            for key, label in p["variants"]:
                rs = _pick(data, workload, clients, key)
                if not rs:
                    continue
                tps = med([r["tps"] for r in rs])
                rows.append(
                    {
                        "workload": workload,
                        "clients": clients,
                        "variant": key,
                        "label": label,
                        "tps": tps,
                        "ratio": tps / base if base else float("nan"),
                        "ratios": [
                            r["tps"] / b["tps"]
                            for r, b in zip(
                                rs, _pick(data, workload, clients, "plain"), strict=False
                            )
                        ],
                        "consumer": med([_consumer_cpu(r) for r in rs])
                        if key != "plain"
                        else float("nan"),
                        "loadgen": med([r["cpu"].get("loadgen", 0.0) for r in rs]),
                        "postgres": med([r["cpu"].get("postgres", 0.0) for r in rs]),
                        "pg_us": med([r["pg_us_per_xact"] for r in rs]),
                        "wal": med([r["wal_per_xact"] for r in rs]),
                        # Older JSON has no figures up to the end of the drain.
                        "pg_us_all": med([r.get("pg_us_per_xact_all", NAN) for r in rs]),
                        "wal_all": med([r.get("wal_per_xact_all", NAN) for r in rs]),
                        "drain": med([r.get("drain_s", NAN) for r in rs]),
                        "captured": med([r.get("captured_per_s", NAN) for r in rs]),
                        "notifies": med([r["notifies"] for r in rs]),
                        "other": med([r["cpu"].get("other", 0.0) for r in rs]),
                    }
                )
    return rows


def targets(data: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(what, target, measured, met) for the summary table of docs/benchmarks.md."""
    rows = summary(data)
    out = []
    for r in rows:
        if r["variant"] == "logical":
            out += _logical_targets(r, rows)
        if r["variant"] != "pgbinding" or r["clients"] not in TARGETS:
            continue
        want = TARGETS[r["clients"]]
        out.append(
            (
                f"write path, {r['workload']}, {r['clients']} client(s): ratio to no trigger",
                f">= {want:.2f}",
                f"{r['ratio']:.2f}",
                r["ratio"] >= want,
            )
        )
        if r["clients"] >= 8:
            notify = next(
                (
                    n
                    for n in rows
                    if n["variant"] == "notify"
                    and n["workload"] == r["workload"]
                    and n["clients"] == r["clients"]
                ),
                None,
            )
            if notify is not None:
                out.append(
                    (
                        f"write path, {r['workload']}, {r['clients']} clients: ahead of the "
                        "row notify trigger",
                        "pgbinding > notify",
                        f"{r['ratio']:.2f} vs {notify['ratio']:.2f}",
                        r["ratio"] > notify["ratio"],
                    )
                )
    return out


def _logical_targets(r: dict[str, Any], rows: list[dict[str, Any]]) -> list[module.Target]:
    """The logical backend's rows: its ratio to no capture, and its capture rate (changes
    captured and read per second, load and drain) against the trigger listener's."""
    out: list[module.Target] = []
    if r["clients"] in LOGICAL_TARGETS:
        want = LOGICAL_TARGETS[r["clients"]]
        out.append(
            (
                f"write path, logical capture, {r['workload']}, {r['clients']} client(s): "
                "ratio to no capture",
                f">= {want:.2f}",
                f"{r['ratio']:.2f}",
                r["ratio"] >= want,
            )
        )
    trigger = next(
        (
            t
            for t in rows
            if t["variant"] == "pgbinding"
            and t["workload"] == r["workload"]
            and t["clients"] == r["clients"]
        ),
        None,
    )
    if trigger is not None and r["captured"] == r["captured"]:
        out.append(
            (
                f"write path, logical capture, {r['workload']}, {r['clients']} client(s): "
                "changes captured and read per second (load + drain)",
                ">= the trigger listener's",
                f"{r['captured']:.0f} vs {trigger['captured']:.0f}",
                r["captured"] >= trigger["captured"],
            )
        )
    return out


def markdown(data: dict[str, Any]) -> str:
    p = data["params"]
    lines = [
        f"pgbench, one single-row statement per transaction, {p['seconds']} s per measurement, "
        f"{p['runs']} runs with the variants' order rotated; tps is the median of the runs, "
        "ratio = median tps / median no-trigger tps, and the range is the spread of the "
        "per-run ratios (each run's variants were measured back to back).",
        "",
        f"The server ran with `wal_level = {p.get('wal_level', '?')}` for every variant"
        + (
            " (the logical variant needs it, so the others pay for it too: like with like)."
            if any(key == "logical" for key, _ in p["variants"])
            else "."
        ),
        "",
        "| workload | clients | variant | median tps | ratio | per-run ratios | listener/drainer "
        "CPU (cores) | Postgres µs/tx | WAL B/tx | drain s | Postgres µs/tx to drained | "
        "WAL B/tx to drained | changes/s captured and read | NOTIFYs |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary(data):
        rng = f"{min(r['ratios']):.2f}-{max(r['ratios']):.2f}" if r["ratios"] else ""
        consumer = "" if r["variant"] == "plain" else f"{r['consumer']:.2f}"
        notifies = "" if r["variant"] == "plain" else f"{r['notifies']:.0f}"
        f = common.fmt
        lines.append(
            f"| {r['workload']} | {r['clients']} | {r['label']} | {r['tps']:.0f} | "
            f"{r['ratio']:.2f} | {rng} | {consumer} | {r['pg_us']:.0f} | {r['wal']:.0f} | "
            f"{f(r['drain'], '.2f')} | {f(r['pg_us_all'], '.0f')} | {f(r['wal_all'], '.0f')} | "
            f"{f(r['captured'], '.0f')} | {notifies} |"
        )
    loadgen = [r["loadgen"] for r in summary(data)]
    lines += [
        "",
        f"The load generator is pgbench (C); it used {min(loadgen):.2f}-{max(loadgen):.2f} "
        "cores. The pgbinding listener and the notify drainer each run in their own process; "
        "their CPU (Python process plus Postgres backend) is the listener/drainer column. "
        "NOTIFYs: pgbinding's wake-ups (sent only while the listener sleeps) or, for the notify "
        "trigger, one per row.",
        "",
        "Postgres µs/tx is the CPU of every Postgres process (pgbench's backends, the "
        "listener's, the drainer's) per transaction during the load; WAL B/tx is all WAL "
        "written during it. *To drained*: the same from the start of the load until the "
        "consumer had read everything (drain s after the load ended, with a resolution of a few "
        "tenths of a second), which counts the logical backend's log writes: its pump decodes "
        "the slot and writes the log after the commits. *Changes/s captured and read* = "
        "transactions / (load + drain). The logical listener reads the slot through SQL "
        "functions in its own backend: no walsender runs.",
    ]
    if any(key == "logical" for key, _ in p["variants"]):
        lines += [
            "",
            '*pgbinding logical*: `PGBINDING["CAPTURE"] = "logical"`, no trigger; the '
            "table is REPLICA IDENTITY FULL and in the publication, with a pgoutput slot (as "
            "the migrations set it up), and a pgbinding Listener with that setting in its own "
            "process: its pump writes the log while pgbench runs. Only the measured variant's "
            "listener is busy: the logical listener runs only during its own measurements (its "
            "pump decodes all WAL), and the slot is moved past the other variants' WAL before "
            "it starts.",
        ]
    return "\n".join(lines)


def plots(data: dict[str, Any], outdir: Path) -> list[Path]:
    plt = module.pyplot()

    rows = summary(data)
    p = data["params"]
    out = []
    fig, axes = plt.subplots(1, len(p["workloads"]), figsize=(5 * len(p["workloads"]), 3.6))
    axes = axes if len(p["workloads"]) > 1 else [axes]
    for ax, workload in zip(axes, p["workloads"], strict=True):
        for key, label in p["variants"]:
            if key == "plain":
                continue
            xs = [r["clients"] for r in rows if r["workload"] == workload and r["variant"] == key]
            ys = [r["ratio"] for r in rows if r["workload"] == workload and r["variant"] == key]
            ax.plot(xs, ys, marker="o", label=label)
        tx = sorted(c for c in TARGETS if c in p["clients"])
        ax.plot(tx, [TARGETS[c] for c in tx], "k--", lw=1, label="target")
        if any(key == "logical" for key, _ in p["variants"]):
            tx = sorted(c for c in LOGICAL_TARGETS if c in p["clients"])
            ax.plot(tx, [LOGICAL_TARGETS[c] for c in tx], "k:", lw=1, label="logical target")
        ax.set_xscale("log")
        ax.set_xticks(p["clients"], [str(c) for c in p["clients"]])
        ax.set_ylim(0, 1.1)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("tps / tps without trigger")
        ax.set_title(f"single-row {workload}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path = module.save(fig, outdir / "write_path.png")
    out.append(path)
    return out


if __name__ == "__main__":
    main()
