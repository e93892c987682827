"""The replication protocol's copy-data messages (capture/walstream.py), as the protocol
documentation lays them out: XLogData and keepalives in, standby status updates out."""

from __future__ import annotations

import struct

import pytest

from pgbinding.capture import pgoutput
from pgbinding.capture.walstream import (
    PG_EPOCH,
    Keepalive,
    XLogData,
    parse_copy_data,
    status_update,
)


def test_xlogdata_carries_its_start_and_one_pgoutput_message() -> None:
    payload = b"B" + bytes(20)
    message = parse_copy_data(b"w" + struct.pack("!QQQ", 0x16FBC10, 0x16FBD20, 1) + payload)
    assert message == XLogData(0x16FBC10, payload)


def test_a_keepalive_says_how_far_the_server_sent_and_whether_it_wants_an_answer() -> None:
    assert parse_copy_data(b"k" + struct.pack("!QQB", 0x2000, 5, 1)) == Keepalive(0x2000, True)
    assert parse_copy_data(b"k" + struct.pack("!QQB", 0x2000, 5, 0)) == Keepalive(0x2000, False)


@pytest.mark.parametrize("data", [b"", b"x123", b"w" + bytes(10), b"k" + bytes(3)])
def test_anything_else_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(pgoutput.DecodeError):
        parse_copy_data(data)


def test_a_status_update_reports_the_flushed_position_as_applied_too() -> None:
    kind, received, flushed, applied, clock, reply = struct.unpack(
        "!cQQQQB", status_update(0x3000, 0x2000, now=PG_EPOCH + 1.5)
    )
    assert (kind, received, flushed, applied, reply) == (b"r", 0x3000, 0x2000, 0x2000, 0)
    assert clock == 1_500_000  # microseconds since 2000-01-01
