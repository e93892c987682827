"""Running the listener inside the ASGI process, for one-process setups (and the demo).

Wrap your ASGI application::

    from pgbinding.asgi import with_listener
    application = with_listener(ProtocolTypeRouter({...}))

The listener starts on the server's event loop with the first connection (or at ASGI lifespan
startup, with servers that send it) and stops at lifespan shutdown. Use this with the
in-memory channel layer; with several server processes, run ``manage.py pglisten`` once instead
(a second in-process listener would only stand by).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .listener import Listener, ensure_logging

logger = logging.getLogger("pgbinding.listener")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ListenerApp:
    """ASGI middleware that keeps one :class:`Listener` running on the server's loop."""

    def __init__(self, app: ASGIApp, listener_factory: Callable[[], Listener] | None = None):
        self.app = app
        self.listener_factory = listener_factory or Listener.from_settings
        self.listener: Listener | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None or self.task.done():
            # uvicorn configures only its own loggers: say what the listener does anyway.
            ensure_logging()
            self.listener = self.listener_factory()
            self.task = asyncio.get_running_loop().create_task(self.listener.run())
            self.task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        if self.listener is not None and self.task is not None:
            self.listener.stop()
            await self.task

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        self.start()
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("The in-process listener crashed", exc_info=task.exception())


def with_listener(app: ASGIApp) -> ListenerApp:
    """Wrap ``app`` so the pgbinding listener runs inside this ASGI process."""
    return ListenerApp(app)
