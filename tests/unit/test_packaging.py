"""The wheel holds the library and nothing else: ``pgbinding/...`` and its metadata, none of
the checkout's development code (the private servers of ``devservers/``, the tests, the
benchmarks, the example)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: What a build never reads: virtualenvs, caches, the output of earlier builds and runs.
NOT_SOURCES = {".git", ".hypothesis", ".test-artifacts", ".pgbinding-demo", "node_modules"}
NOT_SOURCES |= {"build", "dist", "__pycache__"}


def _not_sources(directory: str, names: list[str]) -> set[str]:
    return {
        name
        for name in names
        if name in NOT_SOURCES or name.startswith(".venv") or name.endswith(("_cache", ".egg-info"))
    }


def test_wheel_ships_only_the_library(tmp_path: Path) -> None:
    # Built from a copy: pip builds in the source tree (build/, *.egg-info).
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=_not_sources, symlinks=True)
    assert (source / "devservers").is_dir() and (source / "tests").is_dir()
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = dist.glob("pgbinding-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    assert "pgbinding/__init__.py" in names
    assert "pgbinding/py.typed" in names
    metadata = re.compile(r"pgbinding-[^/]+\.dist-info/")
    assert [n for n in names if not n.startswith("pgbinding/") and not metadata.match(n)] == []
    development = re.compile(r"embedded|devservers|(^|/)(tests?|bench|example)(/|\.py$)")
    assert [n for n in names if development.search(n)] == []
