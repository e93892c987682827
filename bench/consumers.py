"""The processes that consume changes during a benchmark, each in its own OS process.

They run in separate processes (``multiprocessing``, spawn) so that their Python work never
shares an interpreter or a GIL with the benchmark driver. The load generator is pgbench (C),
so no Python runs in the hot path of the writes at all.

- :func:`run_listener`: a real :class:`pgbinding.listener.Listener` with an empty binding
  registry: it reads every change from the log, saves its position, and sends nothing. With
  ``capture="logical"`` it is the logical backend's listener: its pump reads the replication
  slot and writes the log itself (slot and publication: pgbinding's defaults).
- :func:`run_drainer`: one connection that LISTENs on the row-notify channel and parses each
  notification's JSON payload, counting them. It also LISTENs on pgbinding's wake-up channel
  and counts those, so the benchmark can report how many wake-ups pgbinding's triggers sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from typing import Any

LISTENER_NAME = "bench"
NOTIFY_CHANNEL = "bench_rows"


def _ignore_sigint() -> None:
    # Ctrl-C in the terminal is for the driver, which stops us itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


#: The listener's Postgres session, as pgbinding names it in pg_stat_activity (its
#: ``application_name``, set by pgbinding.delivery.connection.connect: not the DSN's).
LISTENER_APPLICATION = f"pgbinding listener {LISTENER_NAME}"


def run_listener(dsn: str, ready: Any, stop: Any, capture: str = "trigger") -> None:
    _ignore_sigint()
    from django.conf import settings

    if not settings.configured:
        settings.configure(INSTALLED_APPS=[], USE_TZ=True)
    level = os.environ.get("BENCH_LISTENER_LOG", "WARNING")
    logging.basicConfig(level=level, format="listener %(asctime)s %(levelname)s %(message)s")

    from channels.layers import InMemoryChannelLayer

    from pgbinding.delivery.dispatch import Dispatcher
    from pgbinding.delivery.listener import Listener
    from pgbinding.registry import Registry

    listener = Listener(
        dsn,
        Dispatcher(InMemoryChannelLayer(), bindings=Registry()),
        name=LISTENER_NAME,
        capture=capture,
        prune_interval=0,  # the driver empties the log between measurements
        lag_log_interval=3600.0,
    )

    async def main() -> None:
        task = asyncio.create_task(listener.run())
        await listener.active.wait()
        ready.set()
        # ``stop`` is a multiprocessing Event, set by the driver process: poll it.
        while not stop.is_set() and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        listener.stop()
        await task

    asyncio.run(main())


def run_drainer(dsn: str, ready: Any, stop: Any, count: Any, wakeups: Any) -> None:
    _ignore_sigint()
    import psycopg

    from pgbinding.capture.sql import NOTIFY_CHANNEL as WAKEUP_CHANNEL

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        conn.execute(f"LISTEN {WAKEUP_CHANNEL}")
        ready.set()
        received = woken = 0
        while not stop.is_set():
            for notify in conn.notifies(timeout=0.2):
                if notify.channel == NOTIFY_CHANNEL:
                    json.loads(notify.payload)
                    received += 1
                    if received % 64 == 0:
                        count.value = received
                else:
                    woken += 1
            count.value = received
            wakeups.value = woken
