"""Migration operations of logical capture, and what ``migrate`` does for them.

``makemigrations`` writes :class:`InstallLogicalCapture` for every bound model when
``PGBINDING["CAPTURE"]`` is ``"logical"`` (and :class:`RemoveBindingTrigger
<pgbinding.capture.operations.RemoveBindingTrigger>` for its triggers, in the same
migration); switching back writes :class:`RemoveLogicalCapture` and the trigger's install.
Either way the switch is one transaction: a change committed before it was captured by the
old backend, one committed after it by the new one.

* Installing needs the slot to exist before the table joins the publication, or the changes
  committed in between would be lost. Postgres creates a logical slot only in a transaction
  that has not written, so ``migrate`` creates it before it starts (:func:`create_slots`, on
  ``pre_migrate``); the operation creates it itself when it runs first in its migration.
* Uninstalling drains the slot first (:func:`drain`): the table's lock (ALTER TABLE) stops its
  writers, and every change committed before is written into the log in this transaction,
  so the triggers' changes that follow get higher log ids (per-row order holds).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import connections
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import ProjectState
from psycopg import errors

from . import logical, logrows, pgoutput
from .operations import STATE_KEY, _execute, _Toggle

logger = logging.getLogger("pgbinding.capture")


class _LogicalCapture(_Toggle):
    noun = "logical capture"
    name_prefix = "pgbinding_logical"

    def __init__(
        self,
        model: str,
        sql: list[str],
        reverse_sql: list[str],
        version: str,
        pk_column: str,
        publication: str,
        slot: str,
    ) -> None:
        super().__init__(model, sql, reverse_sql, version, pk_column)
        self.publication = publication
        self.slot = slot

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        name, args, kwargs = super().deconstruct()
        return name, args, {**kwargs, "publication": self.publication, "slot": self.slot}

    def _record(self, state: ProjectState, app_label: str, installed: bool) -> None:
        super()._record(state, app_label, installed)
        options = state.models.get(_key(self.model))
        if installed and options is not None and STATE_KEY in options.options:
            options.options[STATE_KEY].update(publication=self.publication, slot=self.slot)

    def _apply(self, schema_editor: BaseDatabaseSchemaEditor, install: bool) -> None:
        if schema_editor.collect_sql:  # sqlmigrate: show the pinned SQL only
            _execute(schema_editor, self.sql if install else self.reverse_sql)
            return
        with schema_editor.connection.cursor() as cursor:
            if install:
                if logical.ensure_slot(cursor, self.slot):
                    logger.info("Created replication slot %r (pgoutput)", self.slot)
                _execute(schema_editor, self.sql)
            else:
                _execute(schema_editor, self.reverse_sql)  # locks the table first
                drain(cursor, self.slot, self.publication)


def _key(model: str) -> tuple[str, str]:
    app_label, _, model_name = model.partition(".")
    return app_label, model_name


class InstallLogicalCapture(_LogicalCapture):
    """Capture one model's table by logical decoding: REPLICA IDENTITY FULL, and the table in
    pgbinding's publication (the slot is created if missing)."""

    installs = True


class RemoveLogicalCapture(_LogicalCapture):
    """Stop capturing one model's table by logical decoding (draining the slot first)."""

    installs = False


for _op in (InstallLogicalCapture, RemoveLogicalCapture):
    _op.__module__ = "pgbinding.operations"


def make_operation(
    install: bool, model: str, table: str, spec: dict[str, str]
) -> InstallLogicalCapture | RemoveLogicalCapture:
    """The operation ``makemigrations`` writes for one model (``generate_pgbinding_triggers``)."""
    forward, reverse = logical.capture_sql(table, spec["publication"], spec["version"])
    cls = InstallLogicalCapture if install else RemoveLogicalCapture
    return cls(
        model=model,
        sql=forward,
        reverse_sql=reverse,
        version=spec["version"],
        pk_column=spec["pk"],
        publication=spec["publication"],
        slot=spec["slot"],
    )


def drain(cursor: Any, slot: str, publication: str) -> int:
    """Write every change committed so far in ``slot`` into the log (in the caller's
    transaction, after the changes the listener has written), and record how far. The slot
    itself is advanced later, by the listener. Returns how many log rows were written."""
    if logical.slot_info(cursor, slot) is None:
        return 0
    cursor.execute(logical.ENSURE_ROW_SQL, {"slot": slot})
    cursor.execute(logical.LOCK_SQL, {"slot": slot})
    stored = int(cursor.fetchone()[0])
    cursor.execute("SELECT current_setting('server_version_num')::integer")
    flush_wal = logical.flush_wal_sql(int(cursor.fetchone()[0]))
    names = list(logical.SESSION_SETTINGS)
    cursor.execute("SELECT " + ", ".join(f"current_setting('{n}')" for n in names))
    before = dict(zip(names, cursor.fetchone(), strict=True))
    for name, value in logical.SESSION_SETTINGS.items():
        cursor.execute("SELECT set_config(%s, %s, true)", [name, value])
    try:
        # This transaction's WAL (its ALTER TABLEs) is not flushed, and decoding waits for the
        # record it is in the middle of: flush it (Postgres >= 17; older ones wait for the WAL
        # writer).
        if flush_wal is not None:
            cursor.execute(flush_wal)
        cursor.execute(logical.FLUSH_SQL)
        upto = int(cursor.fetchone()[0])
        params = {"slot": slot, "upto": logical.lsn_text(upto), "publication": publication}
        messages = [pgoutput.parse(bytes(row[0])) for row in _peek(cursor, params)]
    finally:
        for name, value in before.items():
            cursor.execute("SELECT set_config(%s, %s, true)", [name, value])
    transactions = [t for t in pgoutput.Transactions().feed(messages) if t.end_lsn > stored]
    converter = logrows.Converter()
    for relid in converter.missing(transactions):
        cursor.execute(logical.RELATION_SQL, [relid])
        converter.learn(relid, cursor.fetchall())
    rows = converter.rows(transactions)
    if rows:
        cursor.execute(logical.INSERT_SQL, logrows.insert_params(slot, rows))
    cursor.execute(logical.CONFIRM_SQL, {"slot": slot, "lsn": logical.lsn_text(upto)})
    if rows:
        logger.info("Wrote %d change(s) left in replication slot %r into the log", len(rows), slot)
    return len(rows)


def _peek(cursor: Any, params: dict[str, Any], timeout: float = 30.0) -> list[Any]:
    """Peek the whole slot, retrying while the listener holds it (for a moment when it polls,
    for as long as it runs when it streams: its stream is ended), inside a savepoint so the
    caller's transaction survives."""
    deadline = time.monotonic() + timeout
    while True:
        cursor.execute("SAVEPOINT pgbinding_peek")
        try:
            cursor.execute(logical.PEEK_SQL, {**params, "limit": None})
            rows = list(cursor.fetchall())
        except Exception as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            cursor.execute("ROLLBACK TO SAVEPOINT pgbinding_peek")
            if not isinstance(cause, errors.ObjectInUse) or time.monotonic() > deadline:
                raise
            # A listener streaming the slot holds it for as long as it runs: end its stream
            # (it polls, then streams again after this transaction).
            cursor.execute(logical.RELEASE_SLOT_SQL, [params["slot"]])
            time.sleep(0.01)
            continue
        cursor.execute("RELEASE SAVEPOINT pgbinding_peek")
        return rows


def create_slots(sender: Any, using: str = "default", plan: Any = None, **kwargs: Any) -> None:
    """``pre_migrate``: create the slots that the migrations about to run install capture on,
    outside any transaction (a migration's transaction may have written before them)."""
    if getattr(sender, "name", None) != "pgbinding" or not plan:
        return
    wanted = {
        op.slot
        for migration, backwards in plan
        for op in migration.operations
        if isinstance(op, _LogicalCapture) and op.installs != bool(backwards)
    }
    connection = connections[using]
    if not wanted or connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for slot in sorted(wanted):
            if logical.ensure_slot(cursor, slot):
                logger.info("Created replication slot %r (pgoutput) before migrating", slot)
