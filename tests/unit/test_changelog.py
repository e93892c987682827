"""The change log reader's bookkeeping: position, gaps, and when a gap is given up."""

from pgbinding.delivery.changelog import Change, ChangeLog, Gap, Watch


def changes(*ids: int) -> list[Change]:
    return [Change(i, "t", "I", str(i), None, {"id": i}) for i in ids]


def test_contiguous_ids_advance_the_position() -> None:
    log = ChangeLog("x")
    log._advance(changes(1, 2, 3))
    assert log.position == 3 and log.gaps == []


def test_a_missing_id_opens_a_gap_and_a_later_read_fills_it() -> None:
    log = ChangeLog("x")
    log._advance(changes(1, 2, 5, 6))
    assert log.position == 6
    assert [(g.lo, g.hi) for g in log.gaps] == [(3, 4)]
    log._advance(changes(4))
    assert [(g.lo, g.hi) for g in log.gaps] == [(3, 3)]
    log._advance(changes(3, 7))
    assert log.gaps == [] and log.position == 7


def test_a_gap_filled_in_the_middle_splits() -> None:
    log = ChangeLog("x")
    log.position = 10
    log.gaps = [Gap(3, 8)]
    log._advance(changes(5))
    assert [(g.lo, g.hi) for g in log.gaps] == [(3, 4), (6, 8)]


def test_a_settled_gap_is_dropped_after_the_next_read_unless_filled() -> None:
    log = ChangeLog("x")
    log.position = 10
    log.gaps = [Gap(3, 4, Watch(frozenset()), settled=True), Gap(6, 6)]
    log._advance(changes(4))
    # 4 came in (delivered); 3 never will; 6 is still being waited for.
    assert [(g.lo, g.hi) for g in log.gaps] == [(6, 6)]


def test_a_watch_ends_when_none_of_its_writers_still_writes() -> None:
    # Writers are pg_locks' virtual transaction ids of the log's RowExclusiveLock holders.
    watch = Watch(frozenset({"3/17", "5/2"}))
    assert not watch.finished(frozenset({"3/17", "9/1"}))
    assert watch.finished(frozenset({"9/1"}))  # a new writer cannot hold an older gap's id
    assert watch.finished(frozenset())


def test_gap_count_is_kept() -> None:
    log = ChangeLog("x")
    log._advance(changes(2, 4, 9))
    assert log.gaps_opened == 3


def rows(*ids: int) -> list[tuple[object, ...]]:
    return [(i, "t", "I", str(i), None, {"id": i}) for i in ids]


def test_rows_taken_give_the_same_changes_and_cursors_as_the_general_path() -> None:
    """``_take`` builds changes right away when the ids run on from the position with no gap
    open (the common case); otherwise it goes the general way. Both give the same changes,
    cursors and position."""
    for position, gaps, ids in [
        (0, [], (1, 2, 3)),  # runs on: the short way
        (7, [], (8,)),
        (0, [], (1, 2, 5)),  # a hole: a gap opens
        (10, [Gap(3, 4)], (11, 12)),  # a gap open: the cursors carry it
        (10, [Gap(3, 4)], (4, 11)),  # a gap filled
        (5, [], (5, 6)),  # a repeat
    ]:
        short, general = ChangeLog("x"), ChangeLog("x")
        for log in (short, general):
            log.position, log.gaps = position, [Gap(g.lo, g.hi) for g in gaps]
        taken = short._take(rows(*ids))
        expected = general._advance(changes(*ids))
        assert taken == expected
        assert (short.position, short.gaps) == (general.position, general.gaps)
    assert [c.position for c in ChangeLog("x")._take(rows(1, 2))] == ["1", "2"]
