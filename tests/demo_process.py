"""Running ``example/run_demo.py`` from tests: its environment and its collected output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo_env() -> dict[str, str]:
    """This environment without what would point the demo elsewhere (our test settings, a
    database or Redis of the caller's)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Output:
    """The demo's stdout and stderr, collected by a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, proc: subprocess.Popen[str], timeout: float = 25) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text)
            if found:
                return found.group(1)
            if proc.poll() is not None:
                self.thread.join(2)
                found = re.search(pattern, self.text)
                if found:
                    return found.group(1)
                raise AssertionError(f"demo exited with {proc.returncode}:\n{self.text}")
            time.sleep(0.05)
        raise AssertionError(
            f"no {pattern!r} in the demo's output within {timeout} s:\n{self.text}"
        )


def start_demo(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], Output]:
    """``example/run_demo.py *args`` as a child process, its output collected."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "example" / "run_demo.py"), *args],
        cwd=ROOT,
        env=env if env is not None else demo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, Output(proc)
