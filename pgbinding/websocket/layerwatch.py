"""Watching the channel layer's Redis from each ASGI process, so sockets learn of lost messages.

channels-redis recovers from a Redis outage by itself, and says nothing about what it lost:

* a **restarted** Redis (it keeps nothing on disk in most deployments) has forgotten every
  group membership and every queued message: the core layer's consumers keep waiting, joined to
  groups that no longer exist, and receive nothing more;
* the **pub/sub** layer re-subscribes after a reconnect, and whatever was published while it
  was disconnected is gone.

Either way a socket would stay open and silently miss changes. So each process runs one small
task per Redis host (``PING`` and the server's ``run_id`` every :data:`INTERVAL` seconds). When
the server restarted (a new ``run_id``), or, with the pub/sub layer, as soon as it does not
answer, every pgbinding socket of the process is closed with 4012: its client reconnects,
joins its groups again and resubscribes with ``since``, and is replayed exactly what it missed.
A core-layer outage without a restart loses nothing (messages wait in Redis, the listener
retries its sends), so it closes nothing.

The core layer also forgets a group member ``group_expiry`` seconds (a day by default) after
it joined, even while its socket is open and well. So the same task has every socket of the
process join its groups again every quarter of ``group_expiry``: a socket open for a week
still receives every change.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("pgbinding.layerwatch")

#: Seconds between two looks at each Redis server.
INTERVAL = 1.0
#: Seconds a look may take before the server counts as unreachable.
TIMEOUT = 1.0

Callback = Callable[[str], Awaitable[None]]


class _Watch:
    """The sockets of one event loop, and the tasks watching the layer's Redis hosts."""

    def __init__(
        self, hosts: list[dict[str, Any]], lossy_outages: bool, group_expiry: float | None
    ) -> None:
        self.hosts = hosts
        self.lossy_outages = lossy_outages
        self.group_expiry = group_expiry
        self.sockets: weakref.WeakSet[Any] = weakref.WeakSet()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._watch(host)) for host in self.hosts]
        if self.group_expiry:
            self.tasks.append(loop.create_task(self._rejoin(self.group_expiry / 4)))

    async def _rejoin(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            sockets = list(self.sockets)
            logger.debug("Joining the groups of %d socket(s) again", len(sockets))
            for socket in sockets:
                try:
                    await socket.pgbinding_rejoin_groups()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the layer is down: the next round tries again
                    logger.info("Could not join a socket's groups again: %s", exc)
                    break

    async def _watch(self, host: dict[str, Any]) -> None:
        import redis.asyncio as aioredis

        kwargs = {k: v for k, v in host.items() if k != "address"}
        kwargs.update(socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
        client = (
            aioredis.Redis.from_url(host["address"], **kwargs)
            if "address" in host
            else aioredis.Redis(**kwargs)
        )
        name = host.get("address") or f"{host.get('host')}:{host.get('port')}"
        run_id: str | None = None
        outage = False
        try:
            while True:
                try:
                    info = await asyncio.wait_for(client.info("server"), TIMEOUT * 2)
                    now = str(info.get("run_id"))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not outage:
                        logger.warning(
                            "Redis %s does not answer (%s: %s); watching for its return",
                            name,
                            type(exc).__name__,
                            exc,
                        )
                        if self.lossy_outages:
                            # Pub/sub drops what is published meanwhile: say so at once.
                            await self._lost(f"Redis {name} is unreachable (pub/sub layer)")
                    outage = True
                    await asyncio.sleep(INTERVAL)
                    continue
                restarted = run_id is not None and now != run_id
                if restarted:
                    await self._lost(
                        f"Redis {name} restarted (its groups and queued messages are gone)"
                    )
                elif outage:
                    logger.info("Redis %s answers again; nothing was lost", name)
                run_id, outage = now, False
                await asyncio.sleep(INTERVAL)
        finally:
            await client.aclose()

    async def _lost(self, reason: str) -> None:
        sockets = list(self.sockets)
        logger.warning(
            "%s: closing this process's %d pgbinding socket(s) with 4012 so their clients "
            "reconnect and resume",
            reason,
            len(sockets),
        )
        for socket in sockets:
            try:
                await socket.pgbinding_layer_lost({"error": reason, "quiet": True})
            except Exception:  # a socket closing at the same moment
                logger.debug("Could not close a socket", exc_info=True)


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watch] = weakref.WeakKeyDictionary()


def _hosts(layer: Any) -> tuple[list[dict[str, Any]], bool, float | None] | None:
    """(the Redis hosts of a channels-redis layer, whether an outage loses messages, after how
    many seconds it forgets a group member), or None for layers this cannot watch (in-memory:
    nothing to watch; sentinels)."""
    # The channels-redis class the layer is (pgbinding.layers subclasses the core one).
    module = next(
        (c.__module__ for c in type(layer).__mro__ if c.__module__.startswith("channels_redis")),
        None,
    )
    if module is None:
        return None
    from channels_redis.utils import decode_hosts

    hosts = (
        getattr(layer, "hosts", None)  # core
        or (getattr(layer, "_kwargs", None) or {}).get("hosts")  # pub/sub
        or _config_hosts(layer)
    )
    decoded = [dict(h) for h in decode_hosts(hosts)]
    if any("sentinels" in h or "master_name" in h for h in decoded):
        return None
    pubsub = module.endswith("pubsub")
    expiry = None if pubsub else getattr(layer, "group_expiry", None)
    return decoded, pubsub, float(expiry) if expiry else None


def _config_hosts(layer: Any) -> Any:
    from django.conf import settings

    from ..conf import pgbinding_settings

    for alias in {str(pgbinding_settings.CHANNEL_LAYER), "default"}:
        entry = getattr(settings, "CHANNEL_LAYERS", {}).get(alias, {})
        if entry.get("BACKEND", "").startswith(("channels_redis", "pgbinding.layers")):
            return entry.get("CONFIG", {}).get("hosts")
    return None


def watch(socket: Any, layer: Any) -> None:
    """Count ``socket`` (a consumer with ``pgbinding_layer_lost``) among those to close when
    ``layer``'s Redis loses messages; start watching on first use in this event loop."""
    loop = asyncio.get_running_loop()
    found = _watches.get(loop)
    if found is None:
        hosts = _hosts(layer)
        if hosts is None:
            return
        found = _watches[loop] = _Watch(*hosts)
        found.start()
    found.sockets.add(socket)


def unwatch(socket: Any) -> None:
    try:
        found = _watches.get(asyncio.get_running_loop())
    except RuntimeError:
        return
    if found is not None:
        found.sockets.discard(socket)
