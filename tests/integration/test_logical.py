"""The logical capture backend's own machinery: switching a database between the backends by
migration (both ways, with writers running), the slot in ``status``, the retained-WAL warning,
``pgbinding drop-slot``, and restarts that neither lose nor repeat a change."""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, cast

import psycopg
import pytest
from django.apps import apps
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.db.migrations import Migration
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import ProjectState
from django.db.migrations.writer import MigrationWriter
from pytest_django.fixtures import Settings as SettingsFixture

from pgbinding import status
from pgbinding.capture import logical, sql
from pgbinding.capture.autodetect import MigrationAutodetector
from pgbinding.capture.logical_ops import create_slots
from pgbinding.delivery.listener import conninfo_from_django
from tests import servers
from tests.conftest import ListenerHarness
from tests.support.capture import PUBLICATION, SLOT, capture_backend, require_logical
from tests.testapp.models import Counter, Item

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def logical_settings(settings: SettingsFixture) -> SettingsFixture:
    settings.PGBINDING = {**settings.PGBINDING, "CAPTURE": "logical"}
    return settings


@pytest.fixture
def logical_db(raw_conninfo: str) -> Iterator[str]:
    with capture_backend("logical", raw_conninfo):
        yield raw_conninfo


class Writers:
    """Threads that each increment their own counter row, recording every committed n."""

    def __init__(self, conninfo: str, keys: list[str]) -> None:
        self.committed: dict[str, list[int]] = defaultdict(list)
        self._stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(conninfo, key), daemon=True) for key in keys
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, conninfo: str, key: str) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "UPDATE testapp_counter SET n = n + 1 WHERE key = %s RETURNING n", [key]
                ).fetchone()
                assert row is not None
                self.committed[key].append(int(row[0]))
                time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(10)


def switch_migrations() -> list[Migration]:
    """What makemigrations writes with CAPTURE = "logical" (on top of the test apps' own)."""
    loader = MigrationLoader(connection)
    detector = MigrationAutodetector(loader.project_state(), ProjectState.from_apps(apps))
    changes = detector.changes(graph=loader.graph)
    return [m for app in sorted(changes) for m in changes[app]]


def test_switching_backends_by_migration_both_ways_with_changes_flowing(
    logical_settings: SettingsFixture, raw_conninfo: str
) -> None:
    with psycopg.connect(raw_conninfo, autocommit=True) as conn:
        require_logical(conn)
    migrations = switch_migrations()
    written = "\n".join(MigrationWriter(m).as_string() for m in migrations)
    assert "pgbinding.operations.RemoveBindingTrigger(" in written
    assert "pgbinding.operations.InstallLogicalCapture(" in written
    assert "REPLICA IDENTITY FULL" in written and f"slot='{SLOT}'" in written
    keys = [f"w{i}" for i in range(4)]
    Counter.objects.bulk_create([Counter(key=k, n=0) for k in keys])
    harness = ListenerHarness(capture="logical").start()
    events = harness.collect("counters")
    writers = Writers(raw_conninfo, keys)
    try:
        time.sleep(0.3)  # triggers capture
        loader = MigrationLoader(connection)
        state = loader.project_state()
        create_slots(apps.get_app_config("pgbinding"), "default", [(m, False) for m in migrations])
        states = [state]
        with connection.schema_editor(atomic=True) as editor:
            for migration in migrations:
                state = migration.apply(state, editor)
                states.append(state)
        assert status.triggers() and all(t.state == "installed" for t in status.triggers())
        time.sleep(0.5)  # the slot captures
        with connection.schema_editor(atomic=True) as editor:
            for migration, before in zip(reversed(migrations), reversed(states[:-1]), strict=True):
                migration.unapply(before, editor)
        time.sleep(0.3)  # triggers again
    finally:
        writers.stop()
    harness.sync()
    harness.close()
    got: dict[str, list[int]] = defaultdict(list)
    for payload in events.payloads("counters"):
        got[payload["data"]["key"]].append(payload["data"]["n"])
    for key in keys:
        assert len(writers.committed[key]) > 50
        assert got[key] == writers.committed[key], f"{key}: lost, repeated or out of order"
    with connection.cursor() as cursor:
        assert logical.table_state(cursor, "testapp_counter", PUBLICATION) == "missing"
        logical.drop_slot(cursor, SLOT)


def test_status_shows_the_slot_and_its_retained_wal(
    logical_settings: SettingsFixture, logical_db: str
) -> None:
    harness = ListenerHarness(capture="logical").start()
    try:
        Item.objects.create(name="s")
        harness.sync()
        found = status.report(check_layer=False)
    finally:
        harness.close()
    assert found.capture == "logical"
    assert found.slot is not None and found.slot["name"] == SLOT
    assert found.slot["plugin"] == "pgoutput" and found.slot["retained_bytes"] >= 0
    assert {t.state for t in found.triggers} == {"installed"}
    assert {t.version for t in found.triggers} == {logical.VERSION}
    assert not [p for p in found.problems if "slot" in p.lower()]
    out = io.StringIO()
    with pytest.raises(SystemExit):  # the listener has stopped: a problem
        call_command("pgbinding", "status", "--no-layer", stdout=out)
    assert f"Capture: logical; replication slot '{SLOT}'" in out.getvalue()
    assert "MB of WAL" in out.getvalue()


def test_retained_wal_past_the_threshold_is_a_problem_and_a_warning(
    logical_settings: SettingsFixture, logical_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    logical_settings.PGBINDING = {**logical_settings.PGBINDING, "SLOT_WAL_WARNING_BYTES": 0}
    Item.objects.create(name="w")  # WAL past the slot's restart point
    found = status.report(check_layer=False)
    assert any("retains" in p and "SLOT_WAL_WARNING_BYTES" in p for p in found.problems)
    harness = ListenerHarness(capture="logical", slot_wal_warning_bytes=0)
    with caplog.at_level(logging.WARNING, logger="pgbinding.listener"):
        harness.start()
        harness.close()
    assert any("retains" in r.getMessage() for r in caplog.records)


def test_a_slot_left_under_trigger_capture_is_a_problem(raw_conninfo: str) -> None:
    with psycopg.connect(raw_conninfo, autocommit=True) as conn, conn.cursor() as cursor:
        require_logical(conn)
        logical.ensure_slot(cursor, SLOT)
    try:
        found = status.report(check_layer=False)
        assert any("drop-slot" in p for p in found.problems)
    finally:
        call_command("pgbinding", "drop-slot", stdout=io.StringIO())
    assert status.report(check_layer=False).slot is None


def test_drop_slot_refuses_while_tables_use_it_unless_forced(
    logical_settings: SettingsFixture, logical_db: str
) -> None:
    with pytest.raises(CommandError, match="Dropping it loses the changes"):
        call_command("pgbinding", "drop-slot", stdout=io.StringIO())
    out = io.StringIO()
    call_command("pgbinding", "drop-slot", "--force", stdout=out)
    assert f"Dropped replication slot '{SLOT}'" in out.getvalue()
    with connection.cursor() as cursor:
        assert logical.slot_info(cursor, SLOT) is None
    call_command("pgbinding", "create-slot", stdout=io.StringIO())  # for the fixture's teardown


def test_restart_resumes_without_loss_or_repeat(logical_db: str) -> None:
    """The pump stores its position with the rows it writes: a listener stopped at any point
    (here: after writing, before delivering) neither loses nor logs a change twice."""
    first = ListenerHarness(capture="logical").start()
    items = [Item.objects.create(name=f"r{i}") for i in range(5)]
    first.sync()
    first.close()
    more = [Item.objects.create(name=f"s{i}") for i in range(5)]
    Item.objects.filter(pk=items[0].pk).update(name="changed")
    second = ListenerHarness(capture="logical")
    events = second.collect("items")
    second.start()
    try:
        second.sync()
    finally:
        second.close()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pk, op, count(*) FROM pgbinding_change WHERE table_name = 'testapp_item'"
            " AND pk = ANY(%s) GROUP BY 1, 2",
            [[str(i.pk) for i in items + more]],
        )
        counts = {(pk, op): n for pk, op, n in cursor.fetchall()}
    assert all(n == 1 for n in counts.values()), counts
    assert len(counts) == 11
    assert [a for a, _ in events.actions("items")] == ["create"] * 5 + ["update"]


def _logged(keys: list[str]) -> list[tuple[int, str, str]]:
    """(id, pk, op) of the log's rows for these items, in id order (a fresh connection)."""
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, pk, op::text FROM pgbinding_change WHERE table_name = 'testapp_item'"
            " AND pk = ANY(%s) ORDER BY id",
            [keys],
        ).fetchall()
    return [(int(i), str(pk), str(op)) for i, pk, op in rows]


def _crash_after(walwriter: int) -> None:
    """End the stopped WAL writer with SIGKILL: the postmaster takes it for a crash, ends every
    other server process and restarts with crash recovery; wait until it accepts connections."""
    os.kill(walwriter, signal.SIGKILL)
    connection.close()  # Django's connection died with the server
    deadline = time.monotonic() + 60
    time.sleep(0.5)
    while True:
        try:
            with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_crash_that_loses_an_asynchronous_write_writes_it_again_with_the_same_ids(
    logical_db: str,
) -> None:
    """Streaming, the pump commits its writes to the log asynchronously and the listener sends
    them before they are flushed. A server crash then loses the write after clients had its
    changes: the slot must not have let go of them (it is confirmed only past flushed writes),
    and the pump must write them again under the same ids, which consumers drop as repeats
    (ids from a sequence would differ, and a client's cursor would skip or repeat changes).

    The crash is real and certain to lose the write: the WAL writer is stopped (SIGSTOP) before
    the pump writes, so the write stays in the server's WAL buffers, then killed, which makes
    the postmaster restart every process with crash recovery. The same listener reconnects;
    that its pump writes the changes again shows the crash lost them."""
    if servers.postgres_server() is None:
        pytest.skip("needs the embedded Postgres (PGBINDING_TEST_DATABASE_URL is set)")
    with psycopg.connect(logical_db, autocommit=True) as conn, conn.transaction():
        # Ids drawn from the log's sequence, durably, as a trigger or a migration's drain
        # draws them: the sequence's WAL runs 32 values ahead of it, so after a crash it
        # resumes past where it was, and ids taken from it would differ.
        conn.execute("SET LOCAL synchronous_commit = on")
        conn.execute("SELECT nextval(pg_get_serial_sequence('pgbinding_change', 'id'))")
    harness = ListenerHarness(capture="logical")
    walwriter = None
    try:
        harness.start()
        pump = harness.listener.pump
        assert pump is not None and pump.stream is not None
        with psycopg.connect(logical_db, autocommit=True) as conn:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'"
            ).fetchone()
        assert row is not None
        walwriter = int(row[0])
        write = pump._write_async

        async def write_unflushed(*args: Any) -> int | None:
            # The stream has sent the transactions (which needs their WAL flushed, by the
            # WAL writer among others): stop it only now, before the pump writes.
            os.kill(cast(int, walwriter), signal.SIGSTOP)
            return await write(*args)

        pump._write_async = write_unflushed  # type: ignore[method-assign,assignment]
        with transaction.atomic():  # one transaction: one round of the pump, one write
            keys = [str(Item.objects.create(name=f"crash{i}").pk) for i in range(3)]
            Item.objects.filter(pk=keys[0]).update(name="crash0 changed")
        writes = pump.async_writes
        log = harness.listener.log
        # (Not harness.sync(): the stream sends nothing more while the WAL writer is stopped.)
        harness.wait(
            lambda: (
                pump.async_writes > writes
                and len(logged := _logged(keys)) == 4
                and log.position >= logged[-1][0]
            ),
            "the pump's write, and the listener to send it",
        )
        pump._write_async = write  # type: ignore[method-assign]
        before = _logged(keys)
        assert [op for _, _, op in before] == ["I", "I", "I", "U"]
        with psycopg.connect(logical_db, autocommit=True) as conn:
            row = conn.execute(
                "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots"
                " WHERE slot_name = %s",
                [SLOT],
            ).fetchone()
        assert row is not None and int(row[0]) < pump.decoded_upto, (
            "the slot was confirmed past an unflushed write"
        )
        written = pump.written
        _crash_after(walwriter)
        walwriter = None
        harness.sync(timeout=40)
        # The listener reconnected, and its pump wrote the four changes again: the crash had
        # lost them (before it, the pump knew them written and would have skipped them).
        assert pump.written - written == 4
        assert _logged(keys) == before
    finally:
        if walwriter is not None:
            os.kill(walwriter, signal.SIGCONT)
        harness.close()


def test_a_write_that_waited_for_another_writer_of_the_slot_is_written_durably(
    logical_db: str,
) -> None:
    """The asynchronous write takes its ids from ``max(id)`` in its snapshot. When another
    writer of the slot (a migration's drain, a listener that lost the lead) holds the slot's
    row, the write waits for it, and its snapshot no longer has that writer's rows: it must
    write nothing and let the durable write (ids from the sequence) do it, not reuse ids or
    take ids below the other writer's."""
    harness = ListenerHarness(capture="logical")
    try:
        harness.start()
        pump = harness.listener.pump
        assert pump is not None and pump.stream is not None
        events = harness.collect("items")
        with psycopg.connect(logical_db, autocommit=True) as other, other.transaction():
            other.execute(logical.LOCK_SQL, {"slot": SLOT})
            # What a drain writes: log rows with ids from the sequence, and the slot's row.
            other.execute(
                "INSERT INTO pgbinding_change (table_name, op, pk, old, new)"
                " SELECT 'testapp_other', 'I', g::text, NULL, '{}'::jsonb"
                " FROM generate_series(1, 3) g"
            )
            other.execute(logical.CONFIRM_SQL, {"slot": SLOT, "lsn": "0/0"})
            durable, asynchronous = pump.durable_writes, pump.async_writes
            item = Item.objects.create(name="waits")
            _flush_wal(logical_db)  # (so that the slot sends the item)
            harness.wait(lambda: _waiting_for_lock(logical_db), "the pump to wait for the lock")
        harness.sync()
        assert pump.durable_writes == durable + 1
        assert pump.async_writes == asynchronous
        logged = _logged([str(item.pk)])
        with psycopg.connect(logical_db, autocommit=True) as conn:
            row = conn.execute(
                "SELECT max(id) FROM pgbinding_change WHERE table_name = 'testapp_other'"
            ).fetchone()
        assert row is not None and logged[0][0] > int(row[0])
        assert ("create", item.pk) in events.actions("items")
    finally:
        harness.close()


def test_only_an_enabled_capture_trigger_makes_the_write_durable(logical_db: str) -> None:
    """While a capture trigger can fire, writers draw log ids from the sequence at any moment,
    so the pump writes durably with sequence ids. A capture trigger disabled with ``ALTER
    TABLE ... DISABLE TRIGGER`` fires for nobody: the pump keeps writing asynchronously (a
    benchmark with a trigger-captured table beside the logical one measured only durable
    writes before this)."""
    harness = ListenerHarness(capture="logical")
    forward, reverse = sql.trigger_sql("pgbinding_probe", "id")
    with psycopg.connect(logical_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE pgbinding_probe (id integer PRIMARY KEY)")
        for statement in forward:
            conn.execute(statement)
        conn.execute("ALTER TABLE pgbinding_probe DISABLE TRIGGER ALL")
    try:
        harness.start()
        pump = harness.listener.pump
        assert pump is not None and pump.stream is not None
        events = harness.collect("items")
        durable, asynchronous = pump.durable_writes, pump.async_writes
        first = Item.objects.create(name="trigger disabled")
        harness.sync()
        assert (pump.durable_writes, pump.async_writes) == (durable, asynchronous + 1)
        with psycopg.connect(logical_db, autocommit=True) as conn:
            conn.execute("ALTER TABLE pgbinding_probe ENABLE TRIGGER ALL")
        durable, asynchronous = pump.durable_writes, pump.async_writes
        second = Item.objects.create(name="trigger enabled")
        harness.sync()
        assert pump.durable_writes == durable + 1
        assert pump.async_writes == asynchronous
        assert ("create", first.pk) in events.actions("items")
        assert ("create", second.pk) in events.actions("items")
    finally:
        harness.close()
        with psycopg.connect(logical_db, autocommit=True) as conn:
            for statement in reverse:
                conn.execute(statement)
            conn.execute("DROP TABLE pgbinding_probe")


def test_after_the_log_is_truncated_new_changes_get_ids_past_the_delivered_ones(
    logical_db: str,
) -> None:
    """The asynchronous write numbers its rows on from what the log holds. An operator's
    ``TRUNCATE pgbinding_change`` (benchmarks do it) empties the log, and the next ids started
    at 1 again, below the listener's position: it took them for repeats and dropped every change
    until the ids caught up (bench.throughput delivered 0 of 50,000). Schema v5's trigger on the
    log records a TRUNCATE as pruned through the sequence's last id, which the write numbers on
    from (and a ``since`` before it is told to resync, as after pruning)."""
    harness = ListenerHarness(capture="logical")
    try:
        harness.start()
        events = harness.collect("items")
        Item.objects.create(name="before the truncate")
        harness.sync()
        position = harness.listener.log.position
        assert position > 0
        with psycopg.connect(logical_db, autocommit=True) as conn:
            conn.execute("TRUNCATE pgbinding_change")
            row = conn.execute("SELECT pruned_through FROM pgbinding_state").fetchone()
        assert row is not None and int(row[0]) >= position
        after = Item.objects.create(name="after the truncate")
        harness.sync()
        assert ("create", after.pk) in events.actions("items")
        assert min(_logged([str(after.pk)]))[0] > position
    finally:
        harness.close()


def test_a_round_bigger_than_a_batch_is_sent_in_batches_without_reading_the_log(
    logical_db: str,
) -> None:
    """The rows one asynchronous write returned are sent a batch at a time, not read back,
    when there are more than a batch of them (a big transaction, a backlog); and after a
    followed batch the listener does not read the log only to find it empty."""
    harness = ListenerHarness(capture="logical")
    try:
        listener = harness.listener
        listener.log.batch_size = 4
        harness.start()
        reads: list[list[int]] = []
        read = listener.log.read

        async def counting_read(conn: Any) -> Any:
            changes = await read(conn)
            reads.append([c.id for c in changes])
            return changes

        listener.log.read = counting_read  # type: ignore[method-assign]
        events = harness.collect("items")
        with transaction.atomic():  # one transaction: one write of 10 rows
            items = [Item.objects.create(name=f"big{i}") for i in range(10)]
        harness.sync()
        for i in range(3):  # three rounds of one change each
            Item.objects.filter(pk=items[i].pk).update(name=f"big{i} changed")
            harness.sync()
        logged = _logged([str(i.pk) for i in items])
        assert len(logged) == 13
        assert not {i for ids in reads for i in ids} & {i for i, _, _ in logged}
        assert reads == [], "the log was read after the pump's rows had been followed"
        assert events.ids("items") == [i for i, _, _ in logged]
        assert [a for a, _ in events.actions("items")] == ["create"] * 10 + ["update"] * 3
    finally:
        harness.close()


def _flush_wal(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = on")
        conn.execute("SELECT pg_current_xact_id()")


def _waiting_for_lock(conninfo: str) -> bool:
    """Is a pgbinding listener's statement waiting for a lock?"""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND application_name LIKE 'pgbinding listener%%'"
        ).fetchone()
    return bool(row and row[0])


def test_what_the_pump_writes_is_sent_without_reading_it_back(logical_db: str) -> None:
    """Streaming, the pump's write returns the log rows it wrote, and the listener sends them
    as the log reader would have read them (same ids, cursors and values): the read back is
    off the way from commit to client. (The fidelity suite checks every value on this path.)"""
    harness = ListenerHarness(capture="logical")
    try:
        harness.start()
        listener = harness.listener
        read_back: list[int] = []
        read = listener.log.read

        async def counting_read(conn: Any) -> Any:
            changes = await read(conn)
            read_back.extend(c.id for c in changes)
            return changes

        listener.log.read = counting_read  # type: ignore[method-assign]
        events = harness.collect("items")
        items = [Item.objects.create(name=f"handed{i}") for i in range(3)]
        keys = [str(i.pk) for i in items]
        Item.objects.filter(pk=items[1].pk).update(name="handed changed")
        items[2].delete()
        harness.sync()
        logged = _logged(keys)
        assert [op for _, _, op in logged] == ["I", "I", "I", "U", "D"]
        assert not set(read_back) & {i for i, _, _ in logged}
        assert [a for a, _ in events.actions("items")] == ["create"] * 3 + ["update", "delete"]
    finally:
        harness.close()
