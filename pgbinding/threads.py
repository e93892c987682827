"""Where pgbinding's ORM work runs: a small thread pool of its own per process.

The sockets' snapshots, replays, actions and per-user judging, and the listener's building of
messages (a binding's ``group_names`` may use the ORM), run here.

Channels' ``database_sync_to_async`` is thread-sensitive: under daphne and uvicorn, every call
of the process runs on one and the same thread. A 10,000-change replay (over a second of
Python work) then held up every other socket's ``list``, ``retrieve``, writes and subscribes
(bench/replay.py measured a 12 ms ``list`` taking 1.4 s). pgbinding's calls are
self-contained (each opens, uses and ends its own transaction), so they run on a pool of
``PGBINDING["DATABASE_THREADS"]`` threads instead: a long replay holds one of them, and the
others keep serving.

Like ``database_sync_to_async``, each call closes its thread's database connections before and
after when they are past ``CONN_MAX_AGE`` or broken, but from inside the call: asgiref (3.13)
runs the function in a copy of the caller's context, and channels' ``DatabaseSyncToAsync``
closes connections outside it; with a thread pool of our own, that close did not see the
connection the call opened, and it stayed open (tests/e2e/test_database_threads.py found it).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from .conf import pgbinding_settings

P = ParamSpec("P")
R = TypeVar("R")

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(1, pgbinding_settings.current.DATABASE_THREADS),
                thread_name_prefix="pgbinding-db",
            )
        return _pool


def in_thread(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``func`` as a coroutine function that runs it on pgbinding's database threads."""

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(call, thread_sensitive=False, executor=_executor())
