"""The benchmark report: run every benchmark, then write docs/benchmarks.md with its plots.

    scripts/bench                      # everything, default lengths (about 85 min on 2 cores)
    scripts/bench --quick              # smoke run of everything (about 10 min)
    scripts/bench --only latency,memory
    scripts/bench --render-only        # rewrite the document from the last run's JSON

Each benchmark is a module of this package (bench/module.py says what one is) run as its own
process (``python -m bench.NAME --json bench/out/NAME.json``), one after the other, each on a
private Postgres (and Redis) it starts itself, so no two measurements share the machine. The
console output of each run is kept in ``bench/out/NAME.txt``. The document is rebuilt from those
JSON files: each module's ``markdown(data)`` gives its section, ``plots(data, outdir)`` its
PNGs, and ``targets(data)`` its rows of the summary table; a benchmark with no JSON here
(bench/out is not versioned) keeps its section and its targets rows from the document as it was,
marked as kept. ``bench/analysis.md`` (hand-written: profiles, before/after of the fixes, why a
missed target is missed) is appended as it is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .module import load

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "benchmarks"
ANALYSIS = ROOT / "bench" / "analysis.md"

#: The trigger alone (no listener) and the least a log-table capture costs: they say how much
#: of the write-path cost is the listener, the jsonb capture, and the log insert itself.
WRITE_PATH_EXPERIMENTS = ["--experiment", "trigger-only", "--experiment", "log-floor"]

#: (module, title, arguments of a full run, arguments of a quick run), in report order.
BENCHMARKS: list[tuple[str, str, list[str], list[str]]] = [
    (
        "write_path",
        "1. Write-path cost",
        ["--runs", "3", "--seconds", "5", *WRITE_PATH_EXPERIMENTS],
        ["--quick", *WRITE_PATH_EXPERIMENTS],
    ),
    ("trigger_cpu", "1b. Trigger CPU per statement", [], ["--quick"]),
    (
        "bulk",
        "2. Bulk statement",
        ["--experiment", "log-floor", "--experiment", "stmt-floor"],
        ["--quick"],
    ),
    ("throughput", "3. Capture throughput", [], ["--quick"]),
    ("latency", "4. Latency", ["--writes", "500,300,60"], ["--quick"]),
    ("logical_capture", "4b. Latency and idle cost, logical capture backend", [], ["--quick"]),
    ("memory", "5. Memory per connection", [], ["--quick"]),
    ("peers", "6. Peers, same workload, same run", [], ["--quick"]),
    ("fanout", "7. Authorized fan-out", [], ["--quick"]),
    ("replay", "8. Resume replay", [], ["--quick"]),
]

#: How the "what" of each benchmark's rows in the targets table begins: a section kept from the
#: previous document (its JSON is not here, see ``kept_sections``) keeps its rows by this.
TARGET_PREFIXES: dict[str, tuple[str, ...]] = {
    "write_path": ("write path",),
    "bulk": ("bulk ",),
    "throughput": ("capture throughput",),
    "latency": ("latency,",),
    "logical_capture": ("logical capture,",),
    "memory": ("memory per ",),
    "peers": ("changes delivered by pgbinding",),
    "fanout": ("fan-out,",),
    "replay": ("resume replay", "other sockets' "),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run of every benchmark")
    p.add_argument(
        "--only",
        help="comma-separated benchmarks to run (the rest are rendered "
        "from their last JSON, if any): " + ",".join(b[0] for b in BENCHMARKS),
    )
    p.add_argument("--render-only", action="store_true", help="run nothing; rebuild the doc")
    p.add_argument("--dsn", help="use this Postgres server for every benchmark")
    args = p.parse_args(argv)
    known = {b[0] for b in BENCHMARKS}
    args.selected = set(args.only.split(",")) if args.only else known
    unknown = args.selected - known
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {sorted(known)}")
    return args


def run_one(name: str, extra: list[str], dsn: str | None) -> tuple[int, float]:
    """Run ``bench.NAME``, teeing its output to bench/out/NAME.txt."""
    cmd = [sys.executable, "-m", f"bench.{name}", "--json", str(OUT / f"{name}.json"), *extra]
    if dsn:
        cmd += ["--dsn", dsn]
    print(f"\n== {' '.join(cmd[1:])}", flush=True)
    started = time.monotonic()
    with (OUT / f"{name}.txt").open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    return code, time.monotonic() - started


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            # The report's own output does not count as a change to what was measured.
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!docs/benchmarks.md",
                ":!docs/benchmarks",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


KEPT_NOTE = "*Kept from the previous document"
_WRITTEN = re.compile(r"Written by `[^`]*` \(bench/report\.py\) on (.+? UTC), from commit (.+?)\. ")


def kept_sections(doc: str) -> tuple[dict[str, str], list[tuple[str, str, str, bool]]]:
    """The sections of an existing docs/benchmarks.md by title (up to the next ``## ``), each
    saying where it comes from, and the rows of its targets table."""
    sections: dict[str, str] = {}
    rows: list[tuple[str, str, str, bool]] = []
    written = _WRITTEN.search(doc)
    origin = f", written on {written[1]} from commit {written[2]}" if written else ""
    parts = doc.split("\n## ")
    for part in parts[1:]:
        title, _, body = part.partition("\n")
        body = body.strip("\n")
        if not body.startswith(KEPT_NOTE):
            note = f"{KEPT_NOTE}{origin}: its JSON was not in bench/out when this was written.*"
            body = f"{note}\n\n{body}"
        sections[title.strip()] = f"## {title}\n\n{body}\n"
        if title.strip() == "Targets":
            for line in body.splitlines():
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if len(cells) == 4 and cells[0] not in ("what", "---"):
                    rows.append((cells[0], cells[1], cells[2], cells[3] == "yes"))
    return sections, rows


def render(args: argparse.Namespace, timings: dict[str, float], failed: list[str]) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    target_rows: list[tuple[str, str, str, bool]] = []
    machine: list[str] = []
    # A benchmark whose JSON is not here (bench/out is not versioned: another checkout ran it)
    # keeps its section and its targets rows from the document as it is, rather than losing
    # them to "Not run".
    old_sections, old_rows = kept_sections(DOC.read_text()) if DOC.exists() else ({}, [])
    kept: list[str] = []
    for name, title, _, _ in BENCHMARKS:
        path = OUT / f"{name}.json"
        if not path.exists():
            if title in old_sections:
                sections.append(old_sections[title])
                prefixes = TARGET_PREFIXES.get(name, ())
                target_rows += [r for r in old_rows if prefixes and r[0].startswith(prefixes)]
                kept.append(name)
                continue
            sections.append(f"## {title}\n\nNot run (no `bench/out/{name}.json`).\n")
            continue
        data: dict[str, Any] = json.loads(path.read_text())
        module = load(name)
        machine = machine or list(data.get("machine", []))
        body = [f"## {title}", ""]
        took = f"; took {timings[name] / 60:.1f} min" if name in timings else ""
        command = str(data.get("command", "python -m bench." + name)).replace(f"{ROOT}/", "")
        body.append(f"Command: `{command}` (from the repository root){took}.")
        body.append("")
        if name in failed:
            body += ["**This run failed**; the figures below are from its partial output.", ""]
        body.append(module.markdown(data))
        for png in module.plots(data, IMG):
            body += ["", f"![{png.stem}](benchmarks/{png.name})"]
        sections.append("\n".join(body) + "\n")
        target_rows += module.targets(data)

    mode = " --quick" if args.quick else ""
    head = [
        "# Benchmarks",
        "",
        "Written by `scripts/bench" + mode + "` (bench/report.py) on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, from commit {git_commit()}. "
        "Every figure is a median of several runs; where there is a baseline it was measured "
        "in the same run, interleaved, and the ratio is given next to the absolute number. "
        "The machine is shared with other work, so only differences well above the per-run "
        "spread mean anything."
        + (
            f" Sections {', '.join(kept)} are kept from the previous document (each says when "
            "it was written): their JSON was not in bench/out."
            if kept
            else ""
        ),
        "",
        "**Machine:**",
        "",
        *[f"    {line}" for line in machine],
        f"    Python {platform.python_version()}",
        "",
        "Rerun: `scripts/bench` (all, about 85 min on this machine), `scripts/bench --quick` "
        "(smoke run), `scripts/bench --only NAME`; each benchmark also runs alone as "
        "`PYTHONPATH=. .venv-bench/bin/python -m bench.NAME --help`. bench/README.md explains "
        "the suite: what each benchmark does, how the load generators are kept apart, noise.",
        "",
        "## Targets",
        "",
        "| what | target | measured | met |",
        "|---|---|---|---|",
        *[
            f"| {what} | {want} | {got} | {'yes' if ok else '**no**'} |"
            for what, want, got, ok in target_rows
        ],
        "",
        "Why each missed target is missed, and what was changed to get closer, is under "
        "[Analysis](#analysis) at the end.",
        "",
    ]
    analysis = ANALYSIS.read_text() if ANALYSIS.exists() else ""
    DOC.write_text("\n".join(head) + "\n" + "\n".join(sections) + "\n" + analysis)
    print(
        f"\n== wrote {DOC.relative_to(ROOT)} and {len(list(IMG.glob('*.png')))} plot(s) in "
        f"{IMG.relative_to(ROOT)}/"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    # How long each benchmark took, kept across runs so --render-only and --only can say it.
    timings_file = OUT / "timings.json"
    timings: dict[str, float] = (
        json.loads(timings_file.read_text()) if timings_file.exists() else {}
    )
    failed: list[str] = []
    if not args.render_only:
        for name, _, full, quick in BENCHMARKS:
            if name not in args.selected:
                continue
            code, took = run_one(name, quick if args.quick else full, args.dsn)
            timings[name] = took
            timings_file.write_text(json.dumps(timings, indent=1))
            if code != 0:
                failed.append(name)
                print(f"== bench.{name} exited with {code}", flush=True)
    render(args, timings, failed)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
