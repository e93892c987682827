"""pgbinding's settings: one ``PGBINDING`` dict in the Django settings.

Every key, its type and its default are declared once, in :class:`Settings`. Read the current
values through ``pgbinding_settings.NAME``; unknown keys, wrong types and negative values are
an error at first use, and the values are re-read when a test changes the setting
(``setting_changed``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed


@dataclass(frozen=True, slots=True)
class Settings:
    """Every ``PGBINDING`` key, with its type and default, declared once. Read the current
    values through :data:`pgbinding_settings` (``pgbinding_settings.BATCH_SIZE``)."""

    #: Which Django database holds the bound tables and the change log.
    DATABASE: str = "default"
    #: Which channel layer (CHANNEL_LAYERS alias) the listener sends to.
    CHANNEL_LAYER: str = "default"
    #: Name of the listener; its position is stored under this name. Listeners with the same
    #: name take turns (one active, the others stand by).
    LISTENER_NAME: str = "default"
    #: How many log entries the listener reads per round trip.
    BATCH_SIZE: int = 500
    #: Seconds between keep-alive reads while the listener is asleep.
    KEEPALIVE: float = 30.0
    #: Longest wait between reconnect attempts, in seconds (the wait doubles from 0.5 s).
    RECONNECT_MAX_DELAY: float = 30.0
    #: How often a standby listener tries to take over, in seconds.
    STANDBY_RETRY: float = 1.0
    #: Seconds a leader's claim on its name lasts without renewal. The leader renews it while it
    #: makes progress; a leader that stalls (stopped, or stuck on a channel layer that does not
    #: answer) loses the lead to a standby within LEASE + STANDBY_RETRY seconds. One whose
    #: Postgres connection drops loses it within STANDBY_RETRY.
    LEASE: float = 5.0
    #: Seconds a channel-layer send may take before it counts as failed and is retried (the
    #: batch is kept and the position not saved past it). Keep it under LEASE.
    SEND_TIMEOUT: float = 2.0
    #: A listener name none of whose listeners has led for this many seconds is stale: pruning
    #: stops waiting for it (its position no longer holds the log), a warning says so, and the
    #: status command shows it.
    STALE_LISTENER_AFTER: float = 3600.0
    #: How long an entry stays in the change log after it was written, in seconds; clients can
    #: resume from positions still in the log. Pruning only removes delivered entries.
    RETENTION: float = 24 * 3600.0
    #: Seconds between pruning rounds (0 turns pruning off).
    PRUNE_INTERVAL: float = 60.0
    #: Seconds between "N changes behind" log lines while the listener is catching up.
    LAG_LOG_INTERVAL: float = 10.0
    #: While waiting for in-progress transactions that may still fill a gap in the log ids,
    #: re-check this often (seconds).
    GAP_POLL_INTERVAL: float = 0.02
    #: After a batch shorter than BATCH_SIZE, wait this long (seconds) before reading again, so
    #: the next read carries several changes. At most this much added delivery latency.
    READ_PAUSE: float = 0.002
    #: When the log runs dry, keep polling (every READ_PAUSE) this long before going to sleep
    #: and having writers NOTIFY: under load (commits well under this apart) the listener never
    #: pays for sleeping and waking; slower writes wake it by NOTIFY at once, which is quicker
    #: than a poll (bench/latency: 1 client p50 2.45 -> 1.45 ms going from 0.05 to 0.005).
    IDLE_LINGER: float = 0.005
    #: Save the listener's position at most this often (seconds) while changes flow, and always
    #: when it goes idle or stops. After a crash, up to this much is sent again (consumers drop
    #: repeats by position).
    SAVE_INTERVAL: float = 0.25
    #: Inbound frames larger than this get an error reply (413); the socket stays open.
    MAX_FRAME_BYTES: int = 64 * 1024
    #: Frames larger than this close the socket with code 4009 (message too big; the
    #: application range of RFC 1009, which servers do not let applications send).
    CLOSE_FRAME_BYTES: int = 512 * 1024
    #: Per-socket request rate limit: RATE_LIMIT a second on average, bursts of RATE_BURST.
    RATE_LIMIT: float = 50.0
    RATE_BURST: float = 100.0
    #: Most live subscriptions one socket may hold.
    MAX_SUBSCRIPTIONS: int = 50
    #: Most changes a resuming subscription is replayed; more, and it is told to resync.
    MAX_REPLAY: int = 10_000
    #: Seconds a snapshot or replay query may run before Postgres cancels it (the client is
    #: asked to retry, or told to resync).
    REPLAY_TIMEOUT: float = 5.0
    #: Worker processes each server process builds long replays in (decoding, judging and
    #: encoding every replayed change), so its event loop and other sockets keep their share of
    #: the GIL: started at the first long replay; 0 builds every replay on the database
    #: threads (docs/deploy.md, "Resume replays").
    REPLAY_PROCESSES: int = 1
    #: Replays of at least this many changes go to a worker process; shorter ones cost less
    #: than the hand-over and are built on a database thread.
    REPLAY_IN_PROCESS_FROM: int = 1000
    #: Threads each process runs pgbinding's ORM work in (the sockets' snapshots, replays,
    #: actions and per-user judging; the listener's message building): a long replay holds
    #: one, the others keep serving. Each may hold a database connection (CONN_MAX_AGE).
    DATABASE_THREADS: int = 4
    #: Bytes of outbound frames a socket may have waiting because its client does not read
    #: fast enough; past it the socket is closed with code 4008 and the client resumes with
    #: `since`.
    MAX_OUTBOUND_BYTES: int = 4 * 1024 * 1024
    #: Register read-only Django admin pages for the listeners' state and the recent change log
    #: (off by default: the log holds whole rows).
    ADMIN: bool = False
    #: How changes are captured. "trigger": statement-level triggers write every change into
    #: the log inside the writer's transaction (any Postgres >= 13). "logical": logical
    #: decoding; the listener reads a replication slot (pgoutput) and writes the log itself,
    #: off the writers' path (needs wal_level = logical). makemigrations writes the migration
    #: that moves the bound tables from one to the other (README, "Logical capture").
    CAPTURE: str = "trigger"
    #: Logical capture: the replication slot the listener reads (lower-case letters, digits,
    #: underscores). A slot nobody reads keeps WAL until the disk is full: see README.
    SLOT_NAME: str = "pgbinding"
    #: Logical capture: the publication of the bound tables (what the slot's decoding sends).
    PUBLICATION_NAME: str = "pgbinding"
    #: Logical capture: warn in the listener's log (and flag in `status`) once the slot retains
    #: more WAL than this many bytes.
    SLOT_WAL_WARNING_BYTES: int = 1024**3
    #: Logical capture: how often (seconds) the listener looks for new WAL while changes flow
    #: (the look runs inside Postgres, in pgbinding_wait_wal, not as a round trip).
    LOGICAL_POLL_INTERVAL: float = 0.001
    #: Logical capture: after LOGICAL_IDLE_AFTER seconds without a change, look this often
    #: instead (the first change after a quiet spell waits up to this long; less CPU while
    #: idle: docs/design-notes.md, "Logical capture").
    LOGICAL_IDLE_POLL_INTERVAL: float = 0.01
    LOGICAL_IDLE_AFTER: float = 1.0
    #: Logical capture: how the listener reads the slot. "stream": over a replication
    #: connection (the walsender pushes each transaction as it commits: no looking, and no
    #: decoding pass per look); needs a free walsender (max_wal_senders) and no connection
    #: pooler that refuses replication connections, and falls back to "poll" (with a
    #: warning) without them. "poll": the slot's SQL functions, LOGICAL_POLL_INTERVAL apart.
    LOGICAL_READER: str = "stream"

    @classmethod
    def load(cls, user: Any) -> Settings:
        """Settings from a ``PGBINDING`` dict, checked: unknown keys, wrong types and values
        out of range are an error that quotes the value and says what is expected."""
        if not isinstance(user, dict):
            raise ImproperlyConfigured(
                f"settings.PGBINDING must be a dict, got {type(user).__name__}: {user!r}"
            )
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(user) - set(known))
        if unknown:
            raise ImproperlyConfigured(
                f"Unknown key(s) in settings.PGBINDING: {', '.join(map(repr, unknown))}. "
                f"Known keys: {', '.join(sorted(known))}."
            )
        values: dict[str, Any] = {}
        for name, value in user.items():
            kind = known[name].type
            if kind == "bool":
                ok = isinstance(value, bool)
                expected = "True or False"
            elif kind == "str":
                ok = isinstance(value, str) and value != ""
                expected = "a non-empty string"
            elif kind == "int":
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
                expected = "a whole number >= 0"
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                ok = ok and value >= 0
                expected = "a number of seconds >= 0" if name not in _RATES else "a number >= 0"
                value = float(value) if ok else value
            if ok and name in _CHOICES:
                ok, expected = value in _CHOICES[name], " or ".join(map(repr, _CHOICES[name]))
            elif ok and name in _SLOT_NAMES:
                ok = bool(re.fullmatch(r"[a-z0-9_]{1,63}", value))
                expected = "lower-case letters, digits and underscores (at most 63)"
            if not ok:
                raise ImproperlyConfigured(
                    f"settings.PGBINDING[{name!r}] is {value!r}; expected {expected}."
                )
            values[name] = value
        return cls(**values)


#: Settings that are rates, not durations (for error messages).
_RATES = frozenset({"RATE_LIMIT", "RATE_BURST"})
#: Settings with a fixed set of values.
_CHOICES = {"CAPTURE": ("trigger", "logical"), "LOGICAL_READER": ("stream", "poll")}
#: Settings that name a replication slot or a publication (stored unquoted by Postgres).
_SLOT_NAMES = frozenset({"SLOT_NAME", "PUBLICATION_NAME"})
#: Every key and its default (read-only view; the defaults are declared in :class:`Settings`).
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Settings)}


class PgBindingSettings:
    """Attribute access to the current :class:`Settings` (``settings.PGBINDING`` with
    defaults), re-read when a test changes the setting."""

    def __init__(self) -> None:
        self._cache: Settings | None = None

    @property
    def current(self) -> Settings:
        if self._cache is None:
            self._cache = Settings.load(getattr(settings, "PGBINDING", {}) or {})
        return self._cache

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in DEFAULTS:
            raise AttributeError(f"pgbinding has no setting {name!r}")
        return getattr(self.current, name)

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

    Without ``redis_url``: the in-memory layer (one process). With it: channels-redis's core
    layer as :class:`pgbinding.layers.RedisChannelLayer` (a socket closing cannot lose another
    socket's message), with ``socket_timeout=None`` (redis-py 8 otherwise drops idle consumers
    after 5 s, channels_redis#422) and ``capacity`` raised from the default 100 per channel,
    which silently drops bursts.
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
            "BACKEND": "pgbinding.layers.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": redis_url, "socket_timeout": None}],
                "capacity": capacity,
                "expiry": expiry,
            },
        }
    }
