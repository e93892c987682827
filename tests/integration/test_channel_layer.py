"""The channel layer pgbinding configures for Redis (``pgbinding.layers.RedisChannelLayer``)
loses no message when a socket of the process closes: not the socket's own, not another's.

channels-redis receives every process-local channel through one ``BZPOPMIN`` at a time, made
by whichever consumer holds the process's receive lock, for whichever local channel the next
message is. When a socket closes, Channels cancels its consumer's ``receive``. If Redis had
already popped a message for *another* socket into that ``BZPOPMIN``'s answer, redis-py drops
the connection with the answer unread and the message is gone (channels#1683,
channels_redis#366). The first test makes that moment certain: the closing socket's receive is
waiting for the answer, the message is sent from another thread while this event loop is held,
and the receive is cancelled before the loop reads the answer. channels-redis 4.3's own layer
lost the message in 20 tries of 20; tests/faults/test_slow_client.py's reading socket lost one
100-change message that way under load, when the never-reading socket was closed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from django.utils.module_loading import import_string

from devservers.common import free_port
from pgbinding.conf import channel_layers
from pgbinding.layers import RedisChannelLayer

pytestmark = pytest.mark.redis

TRIES = 10


def make_layer(redis_url: str) -> Any:
    config = channel_layers(redis_url)["default"]
    return import_string(config["BACKEND"])(**config["CONFIG"])


def test_channel_layers_configures_pgbindings_layer(redis_url: str) -> None:
    assert isinstance(make_layer(redis_url), RedisChannelLayer)


def awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The names of the coroutines ``task`` is suspended in, outermost first."""
    names = []
    awaited: Any = task.get_coro()
    while awaited is not None and hasattr(awaited, "cr_code"):
        names.append(awaited.cr_code.co_name)
        awaited = awaited.cr_await
    return names


def bzpopmin_waits() -> bool:
    """Whether some task of this loop waits for the answer of the process's BZPOPMIN."""
    return any(
        "_brpop_with_clean" in names and "read_response" in names
        for names in map(awaiting, asyncio.all_tasks())
    )


def send_from_another_thread(redis_url: str, channel: str, message: dict[str, Any]) -> None:
    """Send with a layer of its own in another thread, holding this thread (and its event loop)
    until Redis has the message and has had time to answer the process's BZPOPMIN with it: the
    loop cannot read that answer meanwhile."""
    sender = make_layer(redis_url)

    async def send() -> None:
        await sender.send(channel, message)
        await sender.close_pools()

    thread = threading.Thread(target=asyncio.run, args=(send(),))
    thread.start()
    thread.join()
    time.sleep(0.05)


async def until(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


async def close_while_its_receive_holds_anothers_message(redis_url: str) -> list[int]:
    layer = make_layer(redis_url)
    got: list[int] = []
    try:
        for n in range(TRIES):
            steady = await layer.new_channel()
            closing = await layer.new_channel()
            receiving = asyncio.create_task(layer.receive(closing))
            # Until the process's BZPOPMIN waits for Redis's answer (in whichever task makes it).
            await until(bzpopmin_waits)
            await asyncio.sleep(0.02)
            send_from_another_thread(redis_url, steady, {"type": "change", "n": n})
            receiving.cancel()  # the socket closes, before this loop has read the answer
            await asyncio.gather(receiving, return_exceptions=True)
            try:
                got.append((await asyncio.wait_for(layer.receive(steady), 5))["n"])
            except TimeoutError:
                pass
    finally:
        await layer.flush()
    return got


def test_a_closing_socket_loses_no_message_of_another_socket(redis_url: str) -> None:
    got = asyncio.run(close_while_its_receive_holds_anothers_message(redis_url))
    missing = sorted(set(range(TRIES)) - set(got))
    assert not missing, f"{len(missing)} of {TRIES} messages lost: {missing}"
    assert got == list(range(TRIES))


async def a_timed_out_receive_keeps_the_message(redis_url: str) -> list[int]:
    """``wait_for(receive(), t)`` timing out just as the message comes: the next receive gets
    it (channels-redis dropped a message its buffer had handed to a cancelled receive)."""
    layer = make_layer(redis_url)
    got: list[int] = []
    try:
        channel = await layer.new_channel()
        for n in range(TRIES):
            receiving = asyncio.create_task(layer.receive(channel))
            await until(bzpopmin_waits)
            send_from_another_thread(redis_url, channel, {"type": "change", "n": n})
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)
            got.append((await asyncio.wait_for(layer.receive(channel), 5))["n"])
    finally:
        await layer.flush()
    return got


def test_a_cancelled_receive_loses_no_message_of_its_own_socket(redis_url: str) -> None:
    assert asyncio.run(a_timed_out_receive_keeps_the_message(redis_url)) == list(range(TRIES))


async def group_messages_while_sockets_come_and_go(redis_url: str) -> tuple[list[int], int]:
    """One socket reads a group's 500 messages while, for each, another socket joins, reads
    and closes (its receive cancelled at whatever point it is): what the first receives, in
    order, and how many receive tasks are left waiting afterwards."""
    layer = make_layer(redis_url)
    steady = await layer.new_channel()
    await layer.group_add("g", steady)
    got: list[int] = []

    async def read_steady() -> None:
        while len(got) < 500:
            got.append((await layer.receive(steady))["n"])

    reader = asyncio.create_task(read_steady())
    try:
        for n in range(500):
            other = await layer.new_channel()
            await layer.group_add("g", other)
            receiving = asyncio.create_task(layer.receive(other))
            await layer.group_send("g", {"type": "change", "n": n})
            await asyncio.sleep(0.001 * (n % 3))
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)
            await layer.group_discard("g", other)
        await asyncio.wait_for(reader, 20)
    finally:
        reader.cancel()
        await layer.flush()
    return got, sum(layer._waiting.values())


def test_a_socket_gets_every_group_message_in_order_while_others_close(redis_url: str) -> None:
    got, waiting = asyncio.run(group_messages_while_sockets_come_and_go(redis_url))
    assert got == list(range(500))
    assert waiting == 0


async def receive_from_a_redis_that_is_gone(port: int) -> list[str]:
    layer = RedisChannelLayer(hosts=[{"address": f"redis://127.0.0.1:{port}/0"}])
    layer.connection(0)  # nothing listens on that port
    channels = [f"{layer.client_prefix}!{n}" for n in range(3)]
    results = await asyncio.gather(
        *(asyncio.wait_for(layer.receive(c), 30) for c in channels), return_exceptions=True
    )
    return [type(r).__name__ for r in results]


def test_every_waiting_socket_is_told_when_redis_fails() -> None:
    # Each consumer closes its socket with 4012 on such an error (the fault tests' Redis kill).
    assert asyncio.run(receive_from_a_redis_that_is_gone(free_port())) == ["ConnectionError"] * 3


async def flush_under_a_waiting_receive(redis_url: str) -> tuple[bool, int]:
    """flush() while a socket's receive waits: the pump it cancels is done, and the receive goes
    on waiting and gets a message sent after the flush."""
    layer = make_layer(redis_url)
    channel = await layer.new_channel()
    receiving = asyncio.create_task(layer.receive(channel))
    await until(bzpopmin_waits)
    pump = layer._pump
    await layer.flush()
    await layer.send(channel, {"type": "change", "n": 7})
    try:
        message = await asyncio.wait_for(receiving, 10)
    finally:
        await layer.flush()
    return bool(pump.done()), message["n"]


def test_flush_stops_the_pump_and_a_waiting_receive_goes_on(redis_url: str) -> None:
    assert asyncio.run(flush_under_a_waiting_receive(redis_url)) == (True, 7)


async def a_burst_to_many_sockets(redis_url: str) -> dict[str, list[int]]:
    """1,000 messages to each of 20 sockets of the process, sent before any of them receives:
    what each socket receives, in order."""
    layer = make_layer(redis_url)
    try:
        channels = [await layer.new_channel() for _ in range(20)]
        for n in range(1000):
            for channel in channels:
                await layer.send(channel, {"type": "change", "n": n})
        return {c: [(await layer.receive(c))["n"] for _ in range(1000)] for c in channels}
    finally:
        await layer.flush()


def test_a_burst_reaches_every_socket_in_order(redis_url: str) -> None:
    got = asyncio.run(a_burst_to_many_sockets(redis_url))
    assert all(received == list(range(1000)) for received in got.values())
