"""The change log reader's bookkeeping: position, gaps, and when a gap is given up."""

import pytest

from pgbinding.log import (
    MAX_POSITION_GAPS,
    MAX_TOKEN_CHARS,
    Change,
    ChangeLog,
    Cursor,
    Gap,
    Watch,
    merge_ranges,
)


def changes(*ids):
    return [Change(i, "t", "I", str(i), None, {"id": i}) for i in ids]


def test_contiguous_ids_advance_the_position():
    log = ChangeLog("x")
    log._advance(changes(1, 2, 3))
    assert log.position == 3 and log.gaps == []


def test_a_missing_id_opens_a_gap_and_a_later_read_fills_it():
    log = ChangeLog("x")
    log._advance(changes(1, 2, 5, 6))
    assert log.position == 6
    assert [(g.lo, g.hi) for g in log.gaps] == [(3, 4)]
    log._advance(changes(4))
    assert [(g.lo, g.hi) for g in log.gaps] == [(3, 3)]
    log._advance(changes(3, 7))
    assert log.gaps == [] and log.position == 7


def test_a_gap_filled_in_the_middle_splits():
    log = ChangeLog("x")
    log.position = 10
    log.gaps = [Gap(3, 8)]
    log._advance(changes(5))
    assert [(g.lo, g.hi) for g in log.gaps] == [(3, 4), (6, 8)]


def test_a_settled_gap_is_dropped_after_the_next_read_unless_filled():
    log = ChangeLog("x")
    log.position = 10
    log.gaps = [Gap(3, 4, Watch(frozenset()), settled=True), Gap(6, 6)]
    log._advance(changes(4))
    # 4 came in (delivered); 3 never will; 6 is still being waited for.
    assert [(g.lo, g.hi) for g in log.gaps] == [(6, 6)]


def test_a_watch_ends_when_none_of_its_writers_still_writes():
    # Writers are pg_locks' virtual transaction ids of the log's RowExclusiveLock holders.
    watch = Watch(frozenset({"3/17", "5/2"}))
    assert not watch.finished(frozenset({"3/17", "9/1"}))
    assert watch.finished(frozenset({"9/1"}))  # a new writer cannot hold an older gap's id
    assert watch.finished(frozenset())


def test_gap_count_is_kept():
    log = ChangeLog("x")
    log._advance(changes(2, 4, 9))
    assert log.gaps_opened == 3


def test_tokens_stay_bounded_whatever_the_number_of_gaps():
    # 1,000 open gaps (a long transaction and many rollbacks): the token merges the nearest
    # ones, so it claims less than the reader has seen, never more.
    gaps = tuple((i * 10 + 1, i * 10 + 2) for i in range(1000))
    cursor = Cursor(20_000, gaps)
    token = cursor.encode()
    assert len(token) <= MAX_TOKEN_CHARS
    bounded = Cursor.decode(token)
    assert len(bounded.gaps) <= MAX_POSITION_GAPS
    assert bounded.position == cursor.position
    for change_id in range(1, 20_001):
        if bounded.covers(change_id):
            assert cursor.covers(change_id), change_id


def test_merge_keeps_the_widest_separations():
    ranges = [(1, 1), (3, 3), (100, 100), (102, 102)]
    assert merge_ranges(ranges, 2) == [(1, 3), (100, 102)]
    assert merge_ranges(ranges, 4) == ranges
    assert merge_ranges(ranges, 1) == [(1, 102)]


@pytest.mark.parametrize(
    "token",
    [
        "9000000000000000000:1-20000000",  # fine shape, but the server checks it against the log
        "5:1-2,4-4",
    ],
)
def test_tokens_the_server_could_have_sent_decode(token):
    assert Cursor.decode(token).encode() == token


@pytest.mark.parametrize(
    "token",
    [
        "",
        "-1",
        "1.5",
        "99999999999999999999",  # beyond bigint
        "10:1-99999999999999999999",
        "10:5-3",  # reversed range
        "10:3-5,4-6",  # overlapping
        "10:8-12",  # gap above the position
        "10:0-1",  # ids start at 1
        "10:" + ",".join(f"{i}-{i}" for i in range(1, 2 * MAX_POSITION_GAPS, 2)) + ",99-99",
        "1" * (MAX_TOKEN_CHARS + 1),
        True,
        None,
        ["1"],
    ],
)
def test_tokens_the_server_never_sends_are_refused(token):
    with pytest.raises(ValueError, match="is not a position"):
        Cursor.decode(token)
