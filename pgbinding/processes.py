"""Where pgbinding's long CPU work runs: worker processes of each server process.

A resuming subscription may be replayed up to ``MAX_REPLAY`` changes: each decoded from the
log, judged for the subscriber and encoded, about half a second of Python for 10,000. On a
database thread (:mod:`pgbinding.threads`) that Python holds the server process's GIL, and
every other socket of the process waits behind it: bench/replay.py measured the other sockets'
``list`` at 35/123 ms (p50/p99) during such a replay against 9/12 ms without. So replays of at
least ``REPLAY_IN_PROCESS_FROM`` changes are built in a worker process instead (another core,
another GIL), and come back as JSON text the server only has to send.

Each server process starts ``PGBINDING["REPLAY_PROCESSES"]`` workers the first time it has a
long replay to build, and builds that one itself while they start (a second or so). A worker
is ``python -m pgbinding.processes``, with the server's ``sys.path``: it sets Django up with the
server's settings module and every setting as the server has it (that pickles; tests change
some at run time), which imports every app's ``bindings.py`` as the server did, and then runs
the jobs it is sent over a pipe (a pickled module-level function and its arguments; the result
or the exception comes back pickled). It is not started with :mod:`multiprocessing`, whose
``spawn`` re-imports the server's main script in the child, and would start a second server
from a script without an ``if __name__ == "__main__"`` guard.

When a job cannot go to a worker (its arguments do not pickle, e.g. a binding class defined
inside a function) or its worker dies, the caller builds the replay on its own thread, as
before: nothing is lost either way. A worker that exits (killed, out of memory) is reaped at
once and another started. A worker ends when the server process does (its pipe closes).
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

from django.conf import settings
from django.core.signals import setting_changed

from .conf import pgbinding_settings

logger = logging.getLogger("pgbinding.processes")

R = TypeVar("R")

#: How much lower the workers' CPU priority is than the server's (``nice``).
WORKER_NICENESS = 10
#: Seconds after a worker failed to start before another is tried.
RETRY_START = 60.0
_HEADER = struct.Struct("!BQ")  # kind (0: result, 1: exception), length of the pickle
_RESULT, _ERROR = 0, 1


class _Worker:
    """One worker process and the two pipes to it."""

    def __init__(self, config: bytes) -> None:
        from_parent, to_child = os.pipe()
        from_child, to_parent = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pgbinding.processes", str(from_parent), str(to_parent)],
            pass_fds=(from_parent, to_parent),
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # the terminal's Ctrl-C is the server's to handle
        )
        os.close(from_parent)
        os.close(to_parent)
        self.send: BinaryIO = os.fdopen(to_child, "wb")
        self.receive: BinaryIO = os.fdopen(from_child, "rb")
        self.pid = self.process.pid
        _write(self.send, _RESULT, config)

    def call(self, job: bytes) -> tuple[int, bytes]:
        """Send one job and wait for its answer; EOFError when the worker is gone."""
        _write(self.send, _RESULT, job)
        return _read(self.receive)

    def close(self) -> None:
        for pipe in (self.send, self.receive):
            try:
                pipe.close()
            except OSError:
                pass
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _write(pipe: BinaryIO, kind: int, data: bytes) -> None:
    pipe.write(_HEADER.pack(kind, len(data)))
    pipe.write(data)
    pipe.flush()


def _read(pipe: BinaryIO) -> tuple[int, bytes]:
    header = pipe.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    kind, length = _HEADER.unpack(header)
    data = pipe.read(length)
    if len(data) < length:
        raise EOFError
    return kind, data


class _Pool:
    """The workers of this process: idle ones wait in a queue; starting ones join it once
    Django is set up in them."""

    def __init__(self, count: int) -> None:
        self.idle: queue.Queue[_Worker] = queue.Queue()
        self.workers: list[_Worker] = []
        self.starting = 0
        #: When a worker last failed to start (time.monotonic()), or None.
        self.failed_at: float | None = None
        self.closed = False
        self.lock = threading.Lock()
        self.config = pickle.dumps((_settings_module(), _settings()))
        for _ in range(count):
            self.start_one()

    def start_one(self) -> None:
        with self.lock:
            self.starting += 1
        # The thread starts the worker, then waits for it to exit (_watch).
        threading.Thread(target=self._start, name="pgbinding-replay-worker", daemon=True).start()

    def _start(self) -> None:
        worker = None
        try:
            worker = _Worker(self.config)
            kind, data = _read(worker.receive)  # sent once Django is set up
            if kind != _RESULT:
                raise RuntimeError(pickle.loads(data))
        except Exception as exc:  # cannot spawn, pass_fds unsupported, setup failed...
            logger.warning(
                "A replay worker process failed to start (%s); replays are built in threads, "
                "and the worker is tried again in %d s",
                str(exc) or "it exited before it was ready",
                RETRY_START,
            )
            if worker is not None:
                worker.close()
            with self.lock:
                self.starting -= 1
                self.failed_at = time.monotonic()
            return
        with self.lock:
            self.starting -= 1
            if self.closed:
                worker.close()
                return
            self.workers.append(worker)
        logger.info("Replay worker process %d ready", worker.pid)
        self.idle.put(worker)
        self._watch(worker)

    def _watch(self, worker: _Worker) -> None:
        """Wait for the worker to exit (this thread reaps it: no zombie is left), and when it
        was not closed on purpose, start another at once instead of at the next replay."""
        code = worker.process.wait()
        with self.lock:
            lost = worker in self.workers and not self.closed
            if lost:
                self.workers.remove(worker)
        if lost:
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            logger.warning(
                "Replay worker process %d exited (%s); starting another", worker.pid, how
            )
            worker.close()
            self.start_one()

    def call(self, job: bytes) -> tuple[int, bytes] | None:
        """Run a job on the next idle worker (waiting for one); None if the pool closed or the
        worker died."""
        while True:
            try:
                worker = self.idle.get(timeout=1)
            except queue.Empty:
                if self.closed or not self.workers:
                    return None
                continue
            with self.lock:
                if worker in self.workers:
                    break
            # It exited while idle (its watch has started another): skip it.
        try:
            answer = worker.call(job)
        except (OSError, EOFError, ValueError):  # ValueError: closed by close() meanwhile
            with self.lock:
                died = worker in self.workers and not self.closed
                if died:
                    self.workers.remove(worker)
                closed = self.closed
            worker.close()
            if not closed:
                logger.warning(
                    "Replay worker process %d died; building this replay in a thread",
                    worker.pid,
                )
            if died:  # (else its watch has started another)
                self.start_one()
            return None
        self.idle.put(worker)
        return answer

    def ready(self) -> bool:
        """Has a worker started? When none has, and the last start failed RETRY_START ago,
        start another."""
        with self.lock:
            if self.workers:
                return True
            if self.starting or self.failed_at is None:
                return False
            if time.monotonic() < self.failed_at + RETRY_START:
                return False
            self.failed_at = None
        self.start_one()
        return False

    def close(self) -> None:
        with self.lock:
            self.closed = True
            workers, self.workers = self.workers, []
        for worker in workers:
            worker.close()


_lock = threading.Lock()
_pool: _Pool | None = None


def run(func: Callable[..., R], *args: Any) -> R | None:
    """``func(*args)`` in a worker process, waiting for it; None when no worker is ready yet
    (they start now, for next time), the job does not pickle, or the worker died: the caller
    then does the work itself. ``func`` must be a module-level function. An exception
    ``func`` raises is raised here."""
    global _pool
    with _lock:
        if _pool is None:
            count = pgbinding_settings.current.REPLAY_PROCESSES
            if count >= 1:
                _pool = _Pool(count)
            return None
        pool = _pool
    if not pool.ready():
        return None
    try:
        job = pickle.dumps((func, args), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        logger.info("Building a replay in the server process: %s does not pickle (%s)", func, exc)
        return None
    answer = pool.call(job)
    if answer is None:
        return None
    kind, data = answer
    value = pickle.loads(data)
    if kind == _ERROR:
        raise value
    result: R = value
    return result


def worker_pids() -> list[int]:
    """The process ids of this process's ready workers."""
    with _lock:
        pool = _pool
    if pool is None:
        return []
    with pool.lock:
        return [w.pid for w in pool.workers]


def shutdown() -> None:
    """Stop the workers (the next long replay starts new ones)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


def _settings_module() -> str | None:
    # Under override_settings (tests), settings.SETTINGS_MODULE is None.
    return settings.SETTINGS_MODULE or os.environ.get("DJANGO_SETTINGS_MODULE")


def _settings() -> dict[str, Any]:
    """Every setting this process has set (its settings module's and overrides), that pickles;
    a worker loads the same module, so Django's defaults need no copy. Reading all of them
    made Django 6.1 warn about every deprecated email setting (``EMAIL_BACKEND``...) at each
    worker start, though the project had not set one."""
    out = {}
    for name in dir(settings):
        if not name.isupper() or name == "SETTINGS_MODULE":
            continue
        # is_overridden is Django's (Settings and UserSettingsHolder); the stubs lack it.
        if settings.is_overridden(name):  # type: ignore[misc]
            try:
                value = getattr(settings, name)
            except AttributeError:  # deleted by an override
                continue
            try:
                pickle.dumps(value)
            except Exception:
                continue
            out[name] = value
    return out


def _settings_changed(**kwargs: Any) -> None:
    shutdown()  # the next long replay starts workers with the settings as they are then


setting_changed.connect(_settings_changed)
atexit.register(shutdown)


# -- the worker's side ----------------------------------------------------------------------------


def _serve(receive: BinaryIO, send: BinaryIO) -> None:
    """Set Django up as the server has it, say so, then answer jobs until the pipe closes."""
    # A replay is background work next to the server's requests: on a busy machine the
    # scheduler gives the cores to those first.
    os.nice(WORKER_NICENESS)
    try:
        _, config = _read(receive)
        module, values = pickle.loads(config)
        if module:
            os.environ["DJANGO_SETTINGS_MODULE"] = module
        else:
            settings.configure()
        for name, value in values.items():  # before setup: pgbinding's ready() reads some
            setattr(settings, name, value)
        import django

        django.setup()
    except EOFError:
        return
    except Exception as exc:
        _write(send, _ERROR, pickle.dumps(f"{type(exc).__name__}: {exc}"))
        return
    _write(send, _RESULT, pickle.dumps(os.getpid()))
    while True:
        try:
            _, job = _read(receive)
        except EOFError:
            return
        try:
            func, args = pickle.loads(job)
            answer = _RESULT, pickle.dumps(func(*args), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            try:
                answer = _ERROR, pickle.dumps(exc)
            except Exception:
                answer = _ERROR, pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
        try:
            _write(send, *answer)
        except OSError:
            return  # the server is gone


if __name__ == "__main__":
    _serve(os.fdopen(int(sys.argv[1]), "rb"), os.fdopen(int(sys.argv[2]), "wb"))
