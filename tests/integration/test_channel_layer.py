"""The channel layer pgbinding configures keeps a socket's messages when another socket of the
same process closes while its receive is the one waiting in Redis.

channels-redis receives every process-local channel through one ``BZPOPMIN`` at a time, made
by whichever consumer holds the process's receive lock, for whichever local channel the next
message is. When a socket closes, Channels cancels its consumer's ``receive``. Channels#1683
and channels_redis#366 report messages lost for *other* sockets that way (popped from Redis,
never put in their buffers). This test closes, right after each group send, the socket whose
receive is in that ``BZPOPMIN``, and requires every message at the socket that stayed, once
and in order. With channels-redis 4.3 and redis-py 8 nothing is lost here: a receive cancelled
while it saves a popped message in the layer's backup queue leaves it there for the next receive
to restore; one cancelled while it waits for the BZPOPMIN's answer also lost nothing in 20 of 20
tries with Redis having popped the message first, for a reason not established.

It was written while looking for why tests/faults/test_slow_client.py's reading socket once
missed one 100-event message when the never-reading socket was closed; it did not reproduce
that loss, whose cause is still open (issue note, stop 19).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.utils.module_loading import import_string

from pgbinding.conf import channel_layers

pytestmark = pytest.mark.redis

MESSAGES = 200


def make_layer(redis_url: str) -> Any:
    config = channel_layers(redis_url)["default"]
    return import_string(config["BACKEND"])(**config["CONFIG"])


def awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The names of the coroutines ``task`` is suspended in, outermost first."""
    names = []
    awaited: Any = task.get_coro()
    while awaited is not None and hasattr(awaited, "cr_code"):
        names.append(awaited.cr_code.co_name)
        awaited = awaited.cr_await
    return names


async def lose_nothing_while_receivers_are_cancelled(layer: Any) -> list[int]:
    """A socket that reads its messages later, and, for each message sent to the group, another
    socket that joins, waits in the process's BZPOPMIN for it and closes right after the send
    (Channels cancels a closing consumer's receive), before the loop has run anything else:
    what the first socket then receives. The first socket joined the group first, so its copy
    of each message is the one that BZPOPMIN pops."""
    steady = await layer.new_channel()
    await layer.group_add("g", steady)

    async def consume(channel: str) -> None:  # as a consumer does, until its socket closes
        while True:
            await layer.receive(channel)

    for n in range(MESSAGES):
        other = await layer.new_channel()
        await layer.group_add("g", other)
        receiving = asyncio.create_task(consume(other))
        for _ in range(1000):  # until it makes the process's BZPOPMIN
            await asyncio.sleep(0.001)
            if "_brpop_with_clean" in awaiting(receiving):
                break
        await layer.group_send("g", {"type": "change", "n": n})
        receiving.cancel()
        await layer.group_discard("g", other)
    got: list[int] = []
    try:
        while len(got) < MESSAGES:
            got.append((await asyncio.wait_for(layer.receive(steady), 5))["n"])
    except TimeoutError:
        pass
    finally:
        await layer.flush()
    return got


def test_a_socket_misses_nothing_while_other_sockets_of_its_process_close(
    redis_url: str,
) -> None:
    got = asyncio.run(lose_nothing_while_receivers_are_cancelled(make_layer(redis_url)))
    missing = sorted(set(range(MESSAGES)) - set(got))
    assert not missing, f"{len(missing)} of {MESSAGES} messages lost, e.g. {missing[:10]}"
    assert got == list(range(MESSAGES)), "duplicated or out of order"
