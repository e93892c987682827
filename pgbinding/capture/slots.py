"""The logical capture's replication slot, for operators: ``manage.py pgbinding create-slot``,
``drop-slot``, and the slot's line in ``status``.

A logical slot keeps every WAL segment from its ``restart_lsn`` on until its reader confirms
it. The listener does, as it writes the slot's changes into the log; a slot whose listener is
gone (or that a long transaction holds back) retains WAL until the disk is full. Set
``max_slot_wal_keep_size`` in postgresql.conf to cap it (Postgres then invalidates the slot
instead: its ``wal_status`` becomes ``lost`` and changes are lost, which the listener and
``status`` report), watch ``status``'s retained WAL, and drop a slot that is no longer read.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import CommandError
from django.db import OperationalError, connections
from psycopg import errors

from ..conf import pgbinding_settings
from . import logical


def describe(capture: str, slot: dict[str, Any] | None) -> str:
    """One line of ``status`` about the slot."""
    name = pgbinding_settings.SLOT_NAME
    if slot is None:
        return f"Capture: {capture}; replication slot {name!r}: none"
    reader = f"read by backend pid {slot['active_pid']}" if slot["active"] else "not being read"
    return (
        f"Capture: {capture}; replication slot {slot['name']!r} ({reader}): retains "
        f"{slot['retained_bytes'] / 1e6:.1f} MB of WAL (warning at "
        f"{pgbinding_settings.SLOT_WAL_WARNING_BYTES / 1e6:.0f} MB), wal_status "
        f"{slot['wal_status']}, confirmed up to {slot['confirmed_flush_lsn']}; "
        f"max_slot_wal_keep_size {slot['max_slot_wal_keep_size']}"
    )


def command(what: str, force: bool = False, timeout: float = 10.0) -> str:
    """Run ``create-slot`` or ``drop-slot``; the message to print (CommandError: refused)."""
    s = pgbinding_settings
    name = str(s.SLOT_NAME)
    connection = connections[str(s.DATABASE)]
    with connection.cursor() as cursor:
        if what == "create-slot":
            try:
                created = logical.ensure_slot(cursor, name)
            except logical.CaptureError as exc:
                raise CommandError(str(exc)) from exc
            return f"Created replication slot {name!r}." if created else f"Slot {name!r} exists."
        found = logical.slot_info(cursor, name)
        if found is None:
            return f"There is no replication slot {name!r}."
        cursor.execute(
            "SELECT count(*) FROM pg_publication_rel r JOIN pg_publication p"
            " ON p.oid = r.prpubid WHERE p.pubname = %s",
            [str(s.PUBLICATION_NAME)],
        )
        published = int(cursor.fetchone()[0])
        if published and not force:
            raise CommandError(
                f"Replication slot {name!r} captures the changes of {published} bound "
                f"table(s) (publication {s.PUBLICATION_NAME!r}). Dropping it loses the changes "
                "not yet written into the log, and captures nothing until a new slot exists "
                "(the listener and `migrate` create one). Move the tables back to triggers "
                "first (CAPTURE = 'trigger', makemigrations, migrate), or pass --force."
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                logical.drop_slot(cursor, name)
                break
            except OperationalError as exc:
                if not isinstance(exc.__cause__, errors.ObjectInUse):
                    raise
                # A listener polling the slot holds it for a moment; one streaming it, as long
                # as it runs: end its stream.
                cursor.execute(logical.RELEASE_SLOT_SQL, [name])
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"Replication slot {name!r} stayed in use for {timeout:.0f} s "
                        f"(backend pid {found.active_pid}): stop the listener, then retry."
                    ) from None
                time.sleep(0.05)
    return (
        f"Dropped replication slot {name!r}; it retained "
        f"{found.retained_bytes / 1e6:.1f} MB of WAL, which Postgres can now remove."
    )
