"""Consumers driven with WebsocketCommunicator, the listener running on the same loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from pgbinding.delivery.listener import Listener
from tests.conftest import log_max_id
from tests.routing import websocket_urls


class Live:
    def __init__(self, listener: Listener, task: asyncio.Task[None], layer: Any) -> None:
        self.listener = listener
        self.task = task
        self.layer = layer
        self.sockets: list[WebsocketCommunicator] = []

    async def start_listener(self) -> None:
        self.listener = Listener.from_settings(channel_layer=self.layer)
        self.task = asyncio.create_task(self.listener.run())
        while not self.listener.idle.is_set():
            assert not self.task.done(), self.task.exception()
            await asyncio.sleep(0.01)

    async def stop_listener(self) -> None:
        self.listener.stop()
        await self.task

    @contextlib.asynccontextmanager
    async def listener_down(self) -> AsyncIterator[None]:
        """Changes made inside are delivered only after it: the listener reads them as one
        backlog, as after an outage."""
        await self.settle()
        await self.stop_listener()
        try:
            yield
        finally:
            await self.start_listener()

    async def settle(self, within: float = 20) -> None:
        """Wait until everything committed so far has been sent to the channel layer."""
        target = await sync_to_async(log_max_id)()
        deadline = asyncio.get_running_loop().time() + within
        while not (
            self.listener.saved_position >= target
            and not self.listener.log.gaps
            and self.listener.idle.is_set()
        ):
            assert asyncio.get_running_loop().time() < deadline, "listener did not catch up"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)

    async def connect(self, path: str = "/binding/", user: Any = None) -> Socket:
        communicator = WebsocketCommunicator(URLRouter(websocket_urls), path)
        communicator.scope["user"] = user or AnonymousUser()
        connected, _ = await communicator.connect()
        assert connected
        self.sockets.append(communicator)
        return Socket(communicator, self)


class Socket:
    def __init__(self, communicator: WebsocketCommunicator, live: Live) -> None:
        self.c = communicator
        self.live = live
        self.counter = 0
        self.pending: list[dict[str, Any]] = []

    async def send(self, frame: Any) -> None:
        await self.c.send_json_to(frame)

    async def request(self, stream: str, action: str, **payload: Any) -> dict[str, Any]:
        self.counter += 1
        rid = f"r{self.counter}"
        await self.send(
            {"stream": stream, "payload": {"action": action, "request_id": rid, **payload}}
        )
        while True:
            frame = await self.c.receive_json_from(timeout=10)
            if frame["payload"].get("request_id") == rid:
                reply: dict[str, Any] = frame["payload"]
                return reply
            self.pending.append(frame)

    async def events(self, quiet: float = 0.3) -> list[dict[str, Any]]:
        """Every frame received so far (after letting the listener settle)."""
        await self.live.settle()
        frames, self.pending = self.pending, []
        # receive_nothing() waits without cancelling the app (a receive timeout would).
        while not await self.c.receive_nothing(quiet):
            frames.append(await self.c.receive_json_from())
        return frames

    async def raw(self, text: str) -> dict[str, Any]:
        await self.c.send_to(text_data=text)
        reply: dict[str, Any] = (await self.c.receive_json_from(timeout=10))["payload"]
        return reply


@pytest.fixture
async def live(transactional_db: None) -> AsyncIterator[Live]:
    layer = get_channel_layer()
    await layer.flush()
    listener = Listener.from_settings(channel_layer=layer)
    task = asyncio.create_task(listener.run())
    state = Live(listener, task, layer)
    while not listener.idle.is_set():
        assert not task.done(), task.exception()
        await asyncio.sleep(0.01)
    try:
        yield state
    finally:
        for socket in state.sockets:
            await socket.disconnect()
        state.listener.stop()
        await state.task
        await layer.flush()
