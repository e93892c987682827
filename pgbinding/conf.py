"""pgbinding's settings: one ``PGBINDING`` dict in the Django settings.

Read them through ``pgbinding_settings.NAME``; unknown keys are an error, and the values are
re-read when a test changes the setting (``setting_changed``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Which Django database holds the bound tables and the change log.
    "DATABASE": "default",
    # Which channel layer (CHANNEL_LAYERS alias) the listener sends to.
    "CHANNEL_LAYER": "default",
    # Name of the listener; its position is stored under this name. Listeners with the same
    # name take turns (one active, the others stand by).
    "LISTENER_NAME": "default",
    # How many log entries the listener reads per round trip.
    "BATCH_SIZE": 500,
    # Seconds between keep-alive reads while the listener is asleep.
    "KEEPALIVE": 30.0,
    # Longest wait between reconnect attempts, in seconds (the wait doubles from 0.5 s).
    "RECONNECT_MAX_DELAY": 30.0,
    # How often a standby listener tries to take over, in seconds.
    "STANDBY_RETRY": 1.0,
    # Seconds a leader's claim on its name lasts without renewal. The leader renews it while it
    # makes progress; a leader that stalls (stopped, or stuck on a channel layer that does not
    # answer) loses the lead to a standby within LEASE + STANDBY_RETRY seconds. One whose
    # Postgres connection drops loses it within STANDBY_RETRY.
    "LEASE": 5.0,
    # Seconds a channel-layer send may take before it counts as failed and is retried (the
    # batch is kept and the position not saved past it). Keep it under LEASE.
    "SEND_TIMEOUT": 2.0,
    # A listener name none of whose listeners has led for this many seconds is stale: pruning
    # stops waiting for it (its position no longer holds the log), a warning says so, and the
    # status command shows it.
    "STALE_LISTENER_AFTER": 3600.0,
    # How long an entry stays in the change log after it was written, in seconds; clients can
    # resume from positions still in the log. Pruning only removes delivered entries.
    "RETENTION": 24 * 3600.0,
    # Seconds between pruning rounds (0 turns pruning off).
    "PRUNE_INTERVAL": 60.0,
    # Seconds between "N changes behind" log lines while the listener is catching up.
    "LAG_LOG_INTERVAL": 10.0,
    # While waiting for in-progress transactions that may still fill a gap in the log ids,
    # re-check this often (seconds).
    "GAP_POLL_INTERVAL": 0.02,
    # After a batch shorter than BATCH_SIZE, wait this long (seconds) before reading again, so
    # the next read carries several changes. At most this much added delivery latency.
    "READ_PAUSE": 0.002,
    # When the log runs dry, keep polling (every READ_PAUSE) this long before going to sleep
    # and having writers NOTIFY: under load (commits well under this apart) the listener never
    # pays for sleeping and waking; slower writes wake it by NOTIFY at once, which is quicker
    # than a poll (bench/latency: 1 client p50 2.45 -> 1.45 ms going from 0.05 to 0.005).
    "IDLE_LINGER": 0.005,
    # Save the listener's position at most this often (seconds) while changes flow, and always
    # when it goes idle or stops. After a crash, up to this much is sent again (consumers drop
    # repeats by position).
    "SAVE_INTERVAL": 0.25,
    # Inbound frames larger than this get an error reply (413); the socket stays open.
    "MAX_FRAME_BYTES": 64 * 1024,
    # Frames larger than this close the socket with code 4009 (message too big; the
    # application range of RFC 1009, which servers do not let applications send).
    "CLOSE_FRAME_BYTES": 512 * 1024,
    # Per-socket request rate limit: RATE_LIMIT a second on average, bursts of RATE_BURST.
    "RATE_LIMIT": 50.0,
    "RATE_BURST": 100.0,
    # Most live subscriptions one socket may hold.
    "MAX_SUBSCRIPTIONS": 50,
    # Most changes a resuming subscription is replayed; more, and it is told to resync.
    "MAX_REPLAY": 10_000,
    # Seconds a snapshot or replay query may run before Postgres cancels it (the client is
    # asked to retry, or told to resync).
    "REPLAY_TIMEOUT": 5.0,
    # Bytes of outbound frames a socket may have waiting because its client does not read
    # fast enough; past it the socket is closed with code 4008 and the client resumes with
    # `since`.
    "MAX_OUTBOUND_BYTES": 4 * 1024 * 1024,
}


class PgBindingSettings:
    """Attribute access to ``settings.PGBINDING`` with defaults."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        user = getattr(settings, "PGBINDING", {}) or {}
        if not isinstance(user, dict):
            raise ImproperlyConfigured(
                f"settings.PGBINDING must be a dict, got {type(user).__name__}: {user!r}"
            )
        unknown = sorted(set(user) - set(DEFAULTS))
        if unknown:
            raise ImproperlyConfigured(
                f"Unknown key(s) in settings.PGBINDING: {', '.join(map(repr, unknown))}. "
                f"Known keys: {', '.join(sorted(DEFAULTS))}."
            )
        return {**DEFAULTS, **user}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in DEFAULTS:
            raise AttributeError(f"pgbinding has no setting {name!r}")
        if self._cache is None:
            self._cache = self._load()
        return self._cache[name]

    def reload(self) -> None:
        self._cache = None


pgbinding_settings = PgBindingSettings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "PGBINDING":
        pgbinding_settings.reload()


setting_changed.connect(_reload)


def channel_layers(
    redis_url: str | None = None, *, capacity: int = 100_000, expiry: int = 60
) -> dict[str, Any]:
    """A ``CHANNEL_LAYERS`` setting with the defaults pgbinding's guarantees need.

    Without ``redis_url``: the in-memory layer (one process). With it: channels-redis, with
    ``socket_timeout=None`` (redis-py 8 otherwise drops idle consumers after 5 s,
    channels_redis#422) and ``capacity`` raised from the default 100 per channel, which
    silently drops bursts.
    """
    if not redis_url:
        return {
            "default": {
                "BACKEND": "channels.layers.InMemoryChannelLayer",
                "CONFIG": {"capacity": capacity, "expiry": expiry},
            }
        }
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": redis_url, "socket_timeout": None}],
                "capacity": capacity,
                "expiry": expiry,
            },
        }
    }
