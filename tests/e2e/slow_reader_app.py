"""ASGI app for ``test_slow_reader.py``: a plain Channels consumer that, once connected, sends
text frames as fast as the event loop lets it, through :class:`pgbinding.outbound.OutboundQueue`
or straight to ``send`` (the unbounded behaviour the queue replaces).

Run by daphne or uvicorn in a child process (``tests.e2e.slow_reader_app:application``). It uses
no database and no channel layer, and needs nothing of pgbinding but ``outbound``. Each socket
reads its parameters from the query string:

- ``mode``: ``queue`` (default: ``await OutboundQueue.send(...)`` for every frame, as a
  consumer should) or ``direct`` (``await self.send(...)``: the ASGI send, unbounded);
- ``frames``: how many frames to send (default 60000); ``size``: bytes per frame (1024);
- ``max_bytes``: the queue's bound (default 4 MiB);
- ``burst``: ``1`` puts every frame (``OutboundQueue.put``) without yielding to the event loop
  in between: a socket that overflows at once, to check the close code with a client that
  reads;
- ``close``: ``1`` closes the socket (code 1000) after the last frame.

It prints one line per event on stdout (``slow-reader <event> key=value ...``) for the test.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any
from urllib.parse import parse_qs

import django
from django.conf import settings

if not os.environ.get("DJANGO_SETTINGS_MODULE") and not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="slow-reader-test",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["channels"],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",  # no database
        USE_TZ=True,
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.urls import path

from pgbinding.websocket.outbound import DEFAULT_MAX_OUTBOUND_BYTES, OutboundQueue


def report(event: str, **values: Any) -> None:
    fields = " ".join(f"{key}={value}" for key, value in values.items())
    print(f"slow-reader {event} {fields}".rstrip(), flush=True, file=sys.stdout)


class SlowReaderConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        query = {k: v[-1] for k, v in parse_qs(self.scope["query_string"].decode()).items()}
        self.mode = query.get("mode", "queue")
        self.frames = int(query.get("frames", 60_000))
        self.size = int(query.get("size", 1024))
        self.burst = query.get("burst") == "1"
        self.close_after = query.get("close") == "1"
        self.sent = 0
        await self.accept()
        self.outbound: OutboundQueue | None = None
        if self.mode == "queue":
            self.outbound = OutboundQueue(
                self.base_send,
                int(query.get("max_bytes", DEFAULT_MAX_OUTBOUND_BYTES)),
                on_overflow=self.too_slow,
            )
            self.outbound.start()
        report(
            "connected",
            mode=self.mode,
            backpressure=self.outbound.backpressure if self.outbound else "-",
        )
        self.producer = asyncio.create_task(self.produce())

    def frame(self, n: int) -> str:
        head = f'{{"n": {n}, "pad": "'
        return head + "x" * (self.size - len(head) - 2) + '"}'

    async def produce(self) -> None:
        try:
            for n in range(self.frames):
                text = self.frame(n)
                if self.outbound is not None:
                    # burst: put() only, so nothing leaves before the queue overflows
                    ok = self.outbound.put(text) if self.burst else await self.outbound.send(text)
                    if not ok:
                        break
                else:
                    await self.send(text_data=text)
                self.sent = n + 1
                if not self.burst:
                    await asyncio.sleep(0)  # like events arriving from the channel layer
            report("produced", frames=self.sent)
            if self.close_after and self.sent == self.frames:
                if self.outbound is not None:
                    self.outbound.put_close(1000)  # after the frames still queued
                else:
                    await self.close(1000)
        except asyncio.CancelledError:
            report("producer-cancelled", frames=self.sent)
            raise

    def too_slow(self) -> None:
        assert self.outbound is not None
        report("overflow", frames=self.sent, max_bytes=self.outbound.max_bytes)

    async def disconnect(self, code: int) -> None:
        self.producer.cancel()
        if self.outbound is not None:
            await self.outbound.close()
        report("disconnected", code=code, frames=self.sent)


# SessionMiddleware wraps send (the shape of AuthMiddlewareStack): the queue must see through it.
application = ProtocolTypeRouter(
    {
        "websocket": CookieMiddleware(
            SessionMiddleware(URLRouter([path("slow/", SlowReaderConsumer.as_asgi())]))
        )
    }
)
