"""Positions: which change-log ids a client has had, as the resume token events carry.

Every outbound event carries the listener's cursor just after that change, encoded as ``"123"``
or ``"123:118-119,121-121"``: every id up to 123 except the ranges listed (ids the listener had
not seen yet, in transactions still running when it read past them). A client that reconnects
hands the last one back (``since``) and is replayed exactly the ids it does not cover. A token
is bounded whatever the workload (:data:`MAX_POSITION_GAPS`, :data:`MAX_TOKEN_CHARS`), and
decoding refuses anything the server cannot have sent.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

#: Most gap ranges a position token carries. A token is at most ``MAX_TOKEN_CHARS`` long
#: whatever the workload: with more open gaps, the nearest ones are merged (the token then
#: claims fewer ids than the reader has seen, so a resume from it may replay a change twice;
#: it never skips one).
MAX_POSITION_GAPS = 16
#: Longest position token the server emits or accepts.
MAX_TOKEN_CHARS = 1024
_MAX_ID = 2**63 - 1


def merge_ranges(ranges: list[tuple[int, int]], most: int) -> list[tuple[int, int]]:
    """``ranges`` (sorted, disjoint) as at most ``most`` ranges covering all of them: the ranges
    closest to each other are joined first."""
    if len(ranges) <= most:
        return list(ranges)
    # Keep the (most - 1) widest separations as boundaries; join across the others.
    seps = sorted(range(1, len(ranges)), key=lambda i: ranges[i][0] - ranges[i - 1][1])
    cuts = sorted(seps[len(seps) - (most - 1) :]) if most > 1 else []
    out: list[tuple[int, int]] = []
    start = 0
    for cut in [*cuts, len(ranges)]:
        out.append((ranges[start][0], ranges[cut - 1][1]))
        start = cut
    return out


@dataclass(frozen=True, slots=True)
class Cursor:
    """Which log ids someone has had: all up to ``position`` except the ``gaps`` ranges.

    Every outbound event carries the listener's cursor just after that change, encoded as
    ``"123"`` or ``"123:118-119,121-121"``; a client that reconnects hands back the last one it
    received, and is replayed exactly the ids the cursor does not cover. Encoded tokens carry at
    most :data:`MAX_POSITION_GAPS` ranges (see :meth:`bounded`).
    """

    position: int
    gaps: tuple[tuple[int, int], ...] = ()

    def covers(self, change_id: int) -> bool:
        if change_id > self.position:
            return False
        return not any(lo <= change_id <= hi for lo, hi in self.gaps)

    def bounded(self) -> Cursor:
        """This cursor with at most :data:`MAX_POSITION_GAPS` gap ranges (merging the closest
        ones: the result covers a subset of what this one covers)."""
        if len(self.gaps) <= MAX_POSITION_GAPS:
            return self
        return Cursor(self.position, tuple(merge_ranges(list(self.gaps), MAX_POSITION_GAPS)))

    def encode(self) -> str:
        """The token, at most :data:`MAX_TOKEN_CHARS` long."""
        cursor = self.bounded()
        if not cursor.gaps:
            return str(cursor.position)
        return f"{cursor.position}:" + ",".join(f"{lo}-{hi}" for lo, hi in cursor.gaps)

    @property
    def floor(self) -> int:
        """The highest id below which this cursor covers every id."""
        return min([self.position, *(lo - 1 for lo, _ in self.gaps)])

    @classmethod
    def decode(cls, token: object) -> Cursor:
        """Parse a token; raises ValueError (with the token quoted) if it is not one this server
        could have sent."""
        # Consumers decode every event's token, so: the common form (no gaps) first, and the
        # error built only when it is raised.
        if type(token) is str and 0 < len(token) <= 19 and token.isascii() and token.isdigit():
            return cls(int(token))
        if (
            isinstance(token, bool)
            or not isinstance(token, int | str)
            or len(str(token)) > MAX_TOKEN_CHARS
        ):
            raise _not_a_position(token)
        head, _, rest = str(token).partition(":")
        try:
            position = _id(head)
            gaps = tuple(
                (_id(lo), _id(hi))
                for lo, _, hi in (part.partition("-") for part in rest.split(",") if part)
            )
        except ValueError:
            raise _not_a_position(token) from None
        ordered = all(a[1] < b[0] for a, b in itertools.pairwise(gaps))
        if (
            len(gaps) > MAX_POSITION_GAPS
            or not ordered
            or not all(0 < lo <= hi < position for lo, hi in gaps)
        ):
            raise _not_a_position(token)
        return cls(position, gaps)


def _id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise ValueError(text)
    value = int(text)
    if value > _MAX_ID:
        raise ValueError(text)
    return value


def _not_a_position(token: object) -> ValueError:
    shown = repr(token) if len(repr(token)) <= 80 else repr(token)[:77] + "..."
    return ValueError(
        f"{shown} is not a position: expected a value received in an event's "
        '\'position\', like "123" or "123:118-119"'
    )
