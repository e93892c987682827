"""The logical capture backend reading its slot as a replication stream (capture/walstream.py):
the listener streams and never polls while it can; when the server refuses it a replication
connection it polls and says why; a new leader takes the slot from a stream left behind; migrations'
drain and ``drop-slot`` end a listener's stream instead of waiting for it."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection

from pgbinding.capture import logical
from pgbinding.capture.walstream import WalStream
from tests.conftest import ListenerHarness
from tests.support.capture import PUBLICATION, SLOT, capture_backend
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def logical_db(raw_conninfo: str) -> Iterator[str]:
    with capture_backend("logical", raw_conninfo):
        yield raw_conninfo


def streams(conninfo: str) -> list[str]:
    """application_name of the walsenders reading the slot."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT a.application_name FROM pg_replication_slots s"
            " JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = %s",
            [SLOT],
        ).fetchall()
    return [str(r[0]) for r in rows]


def test_the_listener_streams_the_slot_and_never_polls(logical_db: str) -> None:
    harness = ListenerHarness(capture="logical")
    events = harness.collect("items")
    harness.start()
    try:
        pump = harness.listener.pump
        assert pump is not None and pump.stream is not None
        assert streams(logical_db) == [f"pgbinding stream {harness.listener.name}"]
        peeks = pump.peeks
        items = [Item.objects.create(name=f"s{i}") for i in range(20)]
        Item.objects.filter(pk__in=[i.pk for i in items[:5]]).update(value=7)
        harness.sync()
        assert pump.peeks == peeks, "the pump polled the slot while it could stream it"
        assert pump.streamed >= 21  # 20 inserts and one UPDATE transaction
    finally:
        harness.close()
    # (The log outlives tests: the listener may first deliver what earlier tests left.)
    mine = {i.pk for i in items}
    got = [(a, pk) for a, pk in events.actions("items") if pk in mine]
    assert got == [("create", i.pk) for i in items] + [("update", i.pk) for i in items[:5]]
    assert streams(logical_db) == []  # a stopped listener lets the slot go


def test_the_poll_reader_never_opens_a_stream(logical_db: str) -> None:
    harness = ListenerHarness(capture="logical", logical_reader="poll")
    events = harness.collect("items")
    harness.start()
    try:
        pump = harness.listener.pump
        assert pump is not None and pump.stream is None
        item = Item.objects.create(name="polled")
        harness.sync()
        assert pump.peeks > 0 and pump.streamed == 0
        assert streams(logical_db) == []
    finally:
        harness.close()
    assert ("create", item.pk) in events.actions("items")


@pytest.fixture
def walsenders_taken(logical_db: str) -> Iterator[None]:
    """Every walsender slot (max_wal_senders) taken by other replication connections, as on a
    server whose replicas use them all: a replication connection is refused."""
    with psycopg.connect(logical_db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('max_wal_senders')::int,"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')"
        ).fetchone()
    assert row is not None
    taken = [
        psycopg.connect(logical_db, replication="database", application_name="replica")
        for _ in range(int(row[0]) - int(row[1]))
    ]
    try:
        with pytest.raises(psycopg.OperationalError, match="max_wal_senders"):
            psycopg.connect(logical_db, replication="database")
        yield
    finally:
        for conn in taken:
            conn.close()


def test_when_it_cannot_stream_it_polls_and_says_why(
    walsenders_taken: None, caplog: pytest.LogCaptureFixture
) -> None:
    harness = ListenerHarness(capture="logical")
    events = harness.collect("items")
    with caplog.at_level(logging.WARNING, logger="pgbinding.listener"):
        harness.start()
        try:
            pump = harness.listener.pump
            assert pump is not None and pump.stream is None
            item = Item.objects.create(name="polled")
            harness.sync()
            assert pump.peeks > 0
        finally:
            harness.close()
    assert ("create", item.pk) in events.actions("items")
    said = [r.getMessage() for r in caplog.records if "cannot stream" in r.getMessage()]
    assert said and "max_wal_senders" in said[0] and "LOGICAL_READER" in said[0]


def test_a_new_leader_takes_the_slot_from_a_stream_left_behind(logical_db: str) -> None:
    """A listener that lost the lead while stalled still holds the slot through its walsender
    (until wal_sender_timeout): the new leader ends that stream instead of polling for a
    minute."""
    loop = asyncio.new_event_loop()
    try:
        old = loop.run_until_complete(
            WalStream.open(logical_db, SLOT, PUBLICATION, "pgbinding stream stalled")
        )
        assert streams(logical_db) == ["pgbinding stream stalled"]
        harness = ListenerHarness(capture="logical")
        events = harness.collect("items")
        harness.start()
        try:
            pump = harness.listener.pump
            assert pump is not None and pump.stream is not None
            assert streams(logical_db) == [f"pgbinding stream {harness.listener.name}"]
            item = Item.objects.create(name="after takeover")
            harness.sync()
        finally:
            harness.close()
        assert ("create", item.pk) in events.actions("items")
        with pytest.raises(psycopg.OperationalError, match="terminat"):
            loop.run_until_complete(old.receive(5))
        loop.run_until_complete(old.close())
    finally:
        loop.close()


def test_drop_slot_ends_a_listeners_stream(logical_db: str) -> None:
    harness = ListenerHarness(capture="logical").start()
    try:
        assert streams(logical_db)
        out = io.StringIO()
        call_command("pgbinding", "drop-slot", "--force", stdout=out)
        assert f"Dropped replication slot '{SLOT}'" in out.getvalue()
    finally:
        harness.close()
    with connection.cursor() as cursor:
        if logical.slot_info(cursor, SLOT) is None:  # the listener may have made a new one
            call_command("pgbinding", "create-slot", stdout=io.StringIO())
