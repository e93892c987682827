"""docs/deploy.md shows the files of docs/deploy/ as they are, and the unit files say what the
guide promises (restarted whatever happens, the processes the guide runs). The files
themselves run in tests/deploy/test_nginx.py."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "deploy.md"
DEPLOY = ROOT / "docs" / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_the_guide_shows_every_file_as_it_is() -> None:
    guide = GUIDE.read_text()
    files = sorted(DEPLOY.iterdir())
    assert {f.name for f in files} >= {
        "pglisten.service",
        "daphne@.service",
        "uvicorn@.service",
        "nginx.conf",
    }
    for path in files:
        language = "nginx" if path.suffix == ".conf" else "ini"
        block = f"```{language}\n{path.read_text()}```\n"
        assert block in guide, (
            f"docs/deploy.md does not show {path.relative_to(ROOT)} as it is: copy the file into "
            "its code block again"
        )


@pytest.mark.parametrize("path", UNITS, ids=[p.name for p in UNITS])
def test_units_restart_always_and_run_as_the_site_user(path: Path) -> None:
    service = unit(path)["Service"]
    assert service["Restart"] == "always"
    assert unit(path)["Unit"]["StartLimitIntervalSec"] == "0"  # never give up restarting
    assert service["User"] == "mysite"
    assert service["EnvironmentFile"] == "/etc/mysite/env"
    assert service["KillSignal"] == "SIGTERM"


def test_pglisten_unit_runs_the_listener() -> None:
    command = unit(DEPLOY / "pglisten.service")["Service"]["ExecStart"].split()
    assert command[1:] == ["manage.py", "pglisten"], command


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own check of the unit files, where systemd is installed (the programs they
    start are stand-ins here: the guide's paths do not exist on the test machine)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "daphne", "uvicorn"):
        (bin_dir / name).symlink_to(shutil.which("true") or "/bin/true")
    checked = []
    for path in UNITS:
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace("/srv/mysite/venv/bin/", f"{bin_dir}/"))
        checked.append(str(copy))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *checked],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr + result.stdout
