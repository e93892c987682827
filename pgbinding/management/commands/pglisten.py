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
from pgbinding.delivery.listener import Listener
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

    def handle(self, *args: Any, **options: Any) -> None:
        _configure_logging(int(options.get("verbosity", 1)))
        if not registry.all():
            raise CommandError(
                "No bindings are registered. Declare a WebsocketBinding in <app>/bindings.py "
                "of an app in INSTALLED_APPS."
            )
        alias = pgbinding_settings.DATABASE
        if connections[alias].vendor != "postgresql":
            raise CommandError(f"Database {alias!r} is not PostgreSQL; pgbinding needs Postgres.")
        cls = self.listener_class
        if options.get("listener_class"):
            cls = import_string(options["listener_class"])
        overrides = {"name": options["name"]} if options.get("name") else {}
        try:
            listener = cls.from_settings(**overrides)
        except Exception as exc:
            raise CommandError(str(exc)) from exc
        asyncio.run(_run(listener))


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


def _configure_logging(verbosity: int) -> None:
    logger = logging.getLogger("pgbinding")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
