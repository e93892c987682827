"""What an operator asks "why didn't my event arrive?": listeners, lag, the log, the triggers,
the channel layer. Used by ``manage.py pgbinding status`` (and by the system checks)."""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import connections

from .capture import logical, sql
from .conf import pgbinding_settings
from .registry import registry


@dataclass
class ListenerStatus:
    name: str
    #: "active" (a leader holds the lease), "stopped" (no leader; will resume when one starts),
    #: or "stale" (nobody has led it for STALE_LISTENER_AFTER: pruning no longer waits for it).
    state: str
    position: int
    behind: int
    #: Age in seconds of the oldest change it has not delivered (0: caught up).
    lag_seconds: float
    leader: str | None
    leader_pid: int | None
    lease_left: float | None
    last_seen_seconds: float


@dataclass
class TriggerStatus:
    model: str
    table: str
    #: "installed", "outdated" (an older version: run makemigrations and migrate), "missing"
    #: (run makemigrations and migrate).
    state: str
    version: str | None


@dataclass
class Report:
    listeners: list[ListenerStatus] = field(default_factory=list)
    triggers: list[TriggerStatus] = field(default_factory=list)
    log_rows: int = 0
    log_oldest_seconds: float | None = None
    pruned_through: int = 0
    retention: float = 0.0
    channel_layer: str = ""
    channel_layer_ok: bool = True
    #: "trigger" or "logical" (PGBINDING["CAPTURE"]), and the replication slot if there is one
    #: (its retained_bytes: WAL Postgres keeps for it, pg_current_wal_lsn() - restart_lsn).
    capture: str = "trigger"
    slot: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def triggers(alias: str | None = None) -> list[TriggerStatus]:
    """The capture triggers of every bound model, as installed in the database."""
    alias = alias or str(pgbinding_settings.DATABASE)
    out = []
    with connections[alias].cursor() as cursor:
        for model in registry.models():
            table = model._meta.db_table
            if pgbinding_settings.CAPTURE == "logical":
                out.append(_logical_status(cursor, model._meta.label_lower, table))
                continue
            cursor.execute(
                "SELECT t.tgname FROM pg_trigger t WHERE t.tgrelid = to_regclass(quote_ident(%s))"
                " AND t.tgname LIKE 'pgbinding\\_%%'",
                [table],
            )
            names = {r[0] for r in cursor.fetchall()}
            version = next(
                (v for v, wanted in sorted(sql.TRIGGER_NAMES.items()) if set(wanted) <= names),
                None,
            )
            if version is None:
                state = "missing"
            elif version != sql.TRIGGER_VERSION:
                state = "outdated"
            else:
                state = "installed"
            out.append(TriggerStatus(model._meta.label_lower, table, state, version))
    return out


def _logical_status(cursor: Any, model: str, table: str) -> TriggerStatus:
    """Logical capture: the table must be published with REPLICA IDENTITY FULL, and have no
    capture trigger left (it would log every change twice)."""
    state = logical.table_state(cursor, table, str(pgbinding_settings.PUBLICATION_NAME))
    cursor.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(quote_ident(%s))"
        " AND tgname LIKE 'pgbinding\\_%%'",
        [table],
    )
    if state == "installed" and cursor.fetchone()[0]:
        state = "outdated"
    return TriggerStatus(model, table, state, logical.VERSION if state != "missing" else None)


def report(max_lag: float = 60.0, check_layer: bool = True) -> Report:
    """Everything :class:`Report` holds, with ``problems`` saying in words what is wrong."""
    s = pgbinding_settings
    alias = str(s.DATABASE)
    out = Report(retention=float(s.RETENTION), capture=str(s.CAPTURE))
    with connections[alias].cursor() as cursor:
        found_slot = logical.slot_info(cursor, str(s.SLOT_NAME))
        out.slot = asdict(found_slot) if found_slot is not None else None
        cursor.execute(
            "SELECT coalesce(max(id), 0), count(*),"
            " extract(epoch FROM now() - min(created_at))::float8 FROM pgbinding_change"
        )
        top, count, oldest = cursor.fetchone()
        out.log_rows, out.log_oldest_seconds = int(count), oldest
        cursor.execute("SELECT pruned_through FROM pgbinding_state")
        row = cursor.fetchone()
        out.pruned_through = int(row[0]) if row else 0
        cursor.execute(
            "SELECT name, position, leader, leader_pid,"
            " extract(epoch FROM lease_until - now())::float8,"
            " extract(epoch FROM now() - coalesce(lease_until, updated_at))::float8,"
            " coalesce(extract(epoch FROM now() - (SELECT created_at FROM pgbinding_change c"
            "   WHERE c.id > l.position ORDER BY c.id LIMIT 1)), 0)::float8"
            " FROM pgbinding_listener l ORDER BY name"
        )
        for name, position, leader, pid, left, seen, lag in cursor.fetchall():
            active = leader is not None and left is not None and left > 0
            if active:
                state = "active"
            elif seen > float(s.STALE_LISTENER_AFTER):
                state = "stale"
            else:
                state = "stopped"
            out.listeners.append(
                ListenerStatus(
                    name=name,
                    state=state,
                    position=int(position),
                    behind=max(0, int(top) - int(position)),
                    lag_seconds=float(lag),
                    leader=leader if active else None,
                    leader_pid=int(pid) if active and pid is not None else None,
                    lease_left=float(left) if active else None,
                    last_seen_seconds=max(0.0, float(seen)),
                )
            )
    out.triggers = triggers(alias)
    if check_layer:
        out.channel_layer, out.channel_layer_ok = channel_layer_state()
    _problems(out, max_lag)
    return out


def channel_layer_state(timeout: float = 3.0) -> tuple[str, bool]:
    """(description, reachable) of the channel layer the listener sends to."""
    from channels.layers import InMemoryChannelLayer, get_channel_layer

    alias = str(pgbinding_settings.CHANNEL_LAYER)
    layer = get_channel_layer(alias)
    if layer is None:
        return f"no channel layer {alias!r} in CHANNEL_LAYERS", False
    kind = f"{type(layer).__module__}.{type(layer).__name__}"
    if isinstance(layer, InMemoryChannelLayer):
        return f"{kind} (in-process: only a listener inside the ASGI server can use it)", True

    async def ping() -> None:
        await layer.group_send("pgbinding.status", {"type": "pgbinding.status"})

    try:
        asyncio.run(asyncio.wait_for(ping(), timeout))
    except Exception as exc:
        return f"{kind}: unreachable ({type(exc).__name__}: {exc})", False
    return f"{kind}: reachable", True


def _problems(out: Report, max_lag: float) -> None:
    s = pgbinding_settings
    names = {entry.name: entry for entry in out.listeners}
    mine = names.get(str(s.LISTENER_NAME))
    if mine is None:
        out.problems.append(
            f"No listener named {s.LISTENER_NAME!r} has ever run: start `manage.py pglisten`."
        )
    elif mine.state != "active":
        out.problems.append(
            f"Listener {mine.name!r} is {mine.state} (last seen {mine.last_seen_seconds:.0f} s "
            "ago): start `manage.py pglisten` (or the in-process listener)."
        )
    for entry in out.listeners:
        if entry.state == "stale" and entry.name != str(s.LISTENER_NAME):
            out.problems.append(
                f"Listener name {entry.name!r} is stale (not run for "
                f"{datetime.timedelta(seconds=int(entry.last_seen_seconds))}); pruning no "
                "longer waits for it. Delete its row from pgbinding_listener if it is gone."
            )
        if entry.state == "active" and entry.lag_seconds > max_lag:
            out.problems.append(
                f"Listener {entry.name!r} is {entry.behind} change(s) behind; the oldest is "
                f"{entry.lag_seconds:.1f} s old (threshold {max_lag:.0f} s)."
            )
    for trigger in out.triggers:
        if trigger.state != "installed":
            out.problems.append(
                f"{trigger.model}: capture trigger {trigger.state}"
                f"{f' (version {trigger.version})' if trigger.version else ''}; run "
                "`manage.py makemigrations` and `manage.py migrate`."
            )
    _slot_problems(out)
    if not out.channel_layer_ok:
        out.problems.append(f"Channel layer: {out.channel_layer}.")


def _slot_problems(out: Report) -> None:
    s = pgbinding_settings
    slot = out.slot
    if out.capture == "logical" and slot is None:
        out.problems.append(
            f"Replication slot {s.SLOT_NAME!r} does not exist: nothing is captured. Run "
            "`manage.py migrate` (it creates it), or restart the listener."
        )
    if slot is None:
        return
    retained = f"{slot['retained_bytes'] / 1e6:.1f} MB of WAL"
    if out.capture != "logical":
        out.problems.append(
            f"Replication slot {slot['name']!r} exists but CAPTURE is {out.capture!r}: it "
            f"retains {retained} until it is dropped (`manage.py pgbinding drop-slot`)."
        )
    elif slot["wal_status"] == "lost":
        out.problems.append(
            f"Replication slot {slot['name']!r} lost WAL it needed (max_slot_wal_keep_size = "
            f"{slot['max_slot_wal_keep_size']}): changes were lost; drop it and migrate again."
        )
    elif slot["retained_bytes"] > int(s.SLOT_WAL_WARNING_BYTES):
        out.problems.append(
            f"Replication slot {slot['name']!r} retains {retained} (more than "
            f"SLOT_WAL_WARNING_BYTES): is the listener running? A slot nobody reads keeps WAL "
            "until the disk is full; see max_slot_wal_keep_size."
        )
