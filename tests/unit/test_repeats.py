"""The consumer drops repeats of a change with bounded memory (no channel layer needed)."""

from pgbinding.websocket.events import RECENT, RepeatFilter


def consumer() -> RepeatFilter:
    return RepeatFilter()


def test_one_change_through_several_groups() -> None:
    c = consumer()
    # update first: after it nothing more for that change
    assert c.first_time("items", 5, "5", "update")
    assert not c.first_time("items", 5, "5", "delete")
    # a row that left one group and entered another: delete and create both go out, once
    assert c.first_time("items", 6, "6", "delete")
    assert c.first_time("items", 6, "6", "create")
    assert not c.first_time("items", 6, "6", "create")
    # streams and subscriptions are separate spaces
    assert c.first_time("sub:s1", 6, "6", "any")


def test_memory_is_bounded_and_old_repeats_are_still_dropped() -> None:
    c = consumer()
    for change_id in range(1, 5001):
        assert c.first_time("items", change_id, str(change_id), "update")
    assert len(c.recent) == RECENT
    # A listener restarted from an old saved position sends 1..5000 again: all dropped, and
    # its older cursors do not move the high-water mark back.
    assert not any(c.first_time("items", i, str(i), "update") for i in range(1, 5001))
    assert c.high["items"].position == 5000
    assert c.first_time("items", 5001, "5001", "update")


def test_a_gap_filled_later_is_not_a_repeat() -> None:
    c = consumer()
    # id 10 was still uncommitted when 11 went out: the cursor after 11 leaves it open
    assert c.first_time("items", 11, "11:10-10", "update")
    for change_id in range(12, 12 + RECENT):
        assert c.first_time("items", change_id, f"{change_id}:10-10", "update")
    assert c.first_time("items", 10, str(12 + RECENT - 1), "update")
    assert not c.first_time("items", 10, str(12 + RECENT - 1), "update")
