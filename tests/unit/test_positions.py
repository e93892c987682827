"""Position tokens: what they cover, their bound, and refusing what the server cannot have
sent."""

import pytest

from pgbinding.positions import MAX_POSITION_GAPS, MAX_TOKEN_CHARS, Cursor, merge_ranges


def test_a_cursor_covers_its_position_except_its_gaps() -> None:
    cursor = Cursor(10, ((3, 4), (7, 7)))
    assert [i for i in range(1, 13) if cursor.covers(i)] == [1, 2, 5, 6, 8, 9, 10]
    assert cursor.floor == 2
    assert Cursor.decode(cursor.encode()) == cursor
    assert Cursor.decode("42") == Cursor(42) and Cursor(42).encode() == "42"


def test_tokens_stay_bounded_whatever_the_number_of_gaps() -> None:
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


def test_merge_keeps_the_widest_separations() -> None:
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
def test_tokens_the_server_could_have_sent_decode(token: object) -> None:
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
def test_tokens_the_server_never_sends_are_refused(token: object) -> None:
    with pytest.raises(ValueError, match="is not a position"):
        Cursor.decode(token)
