"""The channel layer's receive side alone: how long a burst of messages takes to reach the
sockets of one process, with channels-redis's own core layer and with
``pgbinding.layers.RedisChannelLayer`` (its pump). Not a benchmark of the
whole path (no daphne, no listener, no sockets): a harness for the layer's before/after.

    PYTHONPATH=. .venv-bench/bin/python -m bench.layer_burst [--sockets 1000] [--runs 5]

One process (this one), one event loop, ``--sockets`` receivers (each as a consumer does:
``receive`` in a loop), on a private Redis. Two bursts, each timed from the first send to the
last receipt, and a backlog:

- ``one group``: every socket is in group ``all``; ``--messages`` group sends (channels-redis
  stores one message per process for them, naming every local socket);
- ``a group each``: each socket is in a group of its own, and one message goes to every group
  (a change that many users' groups receive): ``--sockets`` messages in the process's key;
- ``backlog, a group each``: the same messages sent while no socket receives, timed from the
  sockets' start (the receive side alone, as after a stall of the process).

Variants are interleaved within each run; medians over ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from channels_redis.core import RedisChannelLayer as StockLayer

from bench import live
from pgbinding import layers

VARIANTS = ("channels-redis", "pgbinding")


def make(variant: str, url: str) -> Any:
    cls = StockLayer if variant == "channels-redis" else layers.RedisChannelLayer
    prefix = f"burst{time.monotonic_ns()}"
    return cls(hosts=[{"address": url, "socket_timeout": None}], capacity=100_000, prefix=prefix)


async def burst(variant: str, url: str, sockets: int, messages: int) -> dict[str, float]:
    layer = make(variant, url)
    channels = [await layer.new_channel() for _ in range(sockets)]
    for n, channel in enumerate(channels):
        await layer.group_add("all", channel)
        await layer.group_add(f"own{n}", channel)
    expected = [0]
    done = asyncio.Event()
    received = [0]

    async def consume(channel: str) -> None:
        while True:
            await layer.receive(channel)
            received[0] += 1
            if received[0] == expected[0]:
                done.set()

    tasks = [asyncio.create_task(consume(c)) for c in channels]
    await asyncio.sleep(0.5)  # every receiver waiting
    timings: dict[str, float] = {}
    for name, sends in (
        ("one group", [("all", n) for n in range(messages)]),
        ("a group each", [(f"own{n}", n) for n in range(sockets)]),
    ):
        received[0] = 0
        expected[0] = sockets * messages if name == "one group" else sockets
        done.clear()
        start = time.perf_counter()
        for group, n in sends:
            await layer.group_send(group, {"type": "change", "n": n})
        await asyncio.wait_for(done.wait(), 120)
        timings[name] = (time.perf_counter() - start) * 1000
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # A backlog: one message to every socket's group while nothing receives, then the sockets
    # start: from their start to the last receipt (the receive side alone).
    for n in range(sockets):
        await layer.group_send(f"own{n}", {"type": "change", "n": n})
    received[0], expected[0] = 0, sockets
    done.clear()
    start = time.perf_counter()
    tasks = [asyncio.create_task(consume(c)) for c in channels]
    await asyncio.wait_for(done.wait(), 120)
    timings["backlog, a group each"] = (time.perf_counter() - start) * 1000
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await layer.flush()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20, help="group sends to group 'all'")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    with live.redis() as url:
        for run in range(args.runs):
            for variant in VARIANTS:
                timings = asyncio.run(burst(variant, url, args.sockets, args.messages))
                for name, ms in timings.items():
                    results[variant].setdefault(name, []).append(ms)
                print(
                    f"run {run + 1} {variant:24} "
                    + "  ".join(f"{name} {ms:8.1f} ms" for name, ms in timings.items())
                )
    print(f"\nmedians of {args.runs} ({args.sockets} sockets in one process; ms)")
    for variant in VARIANTS:
        print(
            f"{variant:24} "
            + "  ".join(
                f"{name} {statistics.median(v):8.1f}" for name, v in results[variant].items()
            )
        )


if __name__ == "__main__":
    main()
