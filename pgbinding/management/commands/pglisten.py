"""``manage.py pglisten``: run the listener that turns captured changes into group sends."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.utils.module_loading import import_string

from pgbinding.conf import pgbinding_settings
from pgbinding.delivery.listener import Listener, ensure_logging
from pgbinding.registry import registry


class Command(BaseCommand):
    help = (
        "Deliver captured database changes to the channel layer. Run one per deployment (more "
        "stand by and take over); stop it with SIGTERM or Ctrl-C."
    )
    listener_class: type[Listener] = Listener

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", help="listener name (default: PGBINDING LISTENER_NAME)")
        parser.add_argument(
            "--listener-class", help="dotted path of a Listener subclass to run instead"
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            help="serve Prometheus metrics on this port (http://0.0.0.0:PORT/metrics)",
        )
        parser.add_argument(
            "--allow-in-memory-layer",
            action="store_true",
            help="run even though the channel layer is in-process (only tests want this)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        ensure_logging(logging.DEBUG if int(options.get("verbosity", 1)) > 1 else logging.INFO)
        if not registry.all():
            raise CommandError(
                "No bindings are registered. Declare a WebsocketBinding in <app>/bindings.py "
                "of an app in INSTALLED_APPS."
            )
        alias = pgbinding_settings.DATABASE
        if connections[alias].vendor != "postgresql":
            raise CommandError(f"Database {alias!r} is not PostgreSQL; pgbinding needs Postgres.")
        if not options.get("allow_in_memory_layer"):
            _refuse_in_process_layer()
        _refuse_missing_triggers(alias)
        if options.get("metrics_port"):
            from pgbinding import metrics

            metrics.serve(options["metrics_port"])
        cls = self.listener_class
        if options.get("listener_class"):
            cls = import_string(options["listener_class"])
        overrides = {"name": options["name"]} if options.get("name") else {}
        try:
            listener = cls.from_settings(**overrides)
        except Exception as exc:
            raise CommandError(str(exc)) from exc
        # The checks above opened a Django connection in this thread; the listener keeps its
        # own psycopg connections, so do not leave this one idle for the life of the process.
        connections.close_all()
        asyncio.run(_run(listener))


def _refuse_in_process_layer() -> None:
    from channels.layers import InMemoryChannelLayer, get_channel_layer

    alias = pgbinding_settings.CHANNEL_LAYER
    if isinstance(get_channel_layer(alias), InMemoryChannelLayer):
        raise CommandError(
            f"CHANNEL_LAYERS[{alias!r}] is the in-memory layer, which only reaches sockets of "
            "the process it lives in: pglisten would deliver to nobody. With several processes, "
            "use channels-redis (CHANNEL_LAYERS = pgbinding.conf.channel_layers(REDIS_URL)). "
            "With one ASGI process, do not run pglisten: wrap your application with "
            "pgbinding.asgi.with_listener instead."
        )


def _refuse_missing_triggers(alias: str) -> None:
    from pgbinding import status

    wrong = [t for t in status.triggers(alias) if t.state != "installed"]
    if wrong:
        raise CommandError(
            "Changes to these bound models would never be captured: "
            + "; ".join(
                f"{t.model} ({t.table}): trigger {t.state}"
                + (f" (version {t.version})" if t.version else "")
                for t in wrong
            )
            + ". Run `manage.py makemigrations` and `manage.py migrate`."
        )


async def _run(listener: Listener) -> None:
    loop = asyncio.get_running_loop()
    presses = 0

    def on_signal(signum: int) -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            logging.getLogger("pgbinding.listener").warning("Second signal: exiting now")
            raise SystemExit(1)
        logging.getLogger("pgbinding.listener").info(
            "Received %s; finishing the batch in hand, then stopping",
            signal.Signals(signum).name,
        )
        listener.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    await listener.run()
