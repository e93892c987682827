"""The fault suite's own checks, on made-up frames (no servers): a verdict is only worth what
the code that reaches it is."""

from __future__ import annotations

from typing import Any

from tests.faults.conftest import ROLLBACK_DELTA, Commit, judge, ranges, received, windows_of
from tests.support.processes import Connection, Frame, WsClient


def commits(key: str, ns: list[int], t0: float = 10.0) -> list[Commit]:
    return [Commit(key, n, t0 + n) for n in ns]


def event(n: int, key: str = "k00", **extra: Any) -> dict[str, Any]:
    payload = {"action": "update", "pk": 1, "data": {"key": key, "n": n}, "position": str(n)}
    return {"stream": "counters", "payload": {**payload, **extra}}


def client(
    frames: list[tuple[float, int, dict[str, Any]]],
    conns: list[Connection],
    subscribe: str | None = None,
) -> WsClient:
    made = WsClient("ws://unused", "fake", subscribe=subscribe)
    made.frames = [Frame(t, c, data) for t, c, data in frames]
    made.connections = conns
    return made


def test_exact_sequence_passes_and_every_kind_of_fault_is_named() -> None:
    committed = {"k00": commits("k00", [1, 2, 3, 4, 5])}
    ok = client([(20 + n, 0, event(n)) for n in [1, 2, 3, 4, 5]], [Connection(0, 0.0)])
    assert judge(received(ok), committed, exact=True) == []

    bad = client(
        [(20 + i, 0, event(n)) for i, n in enumerate([1, 3, 2, 3, 5, 5 + ROLLBACK_DELTA])],
        [Connection(0, 0.0)],
    )
    problems = "\n".join(judge(received(bad), committed, exact=True))
    assert "LOST 1 of 5" in problems and "n=4" in problems
    assert "1 change(s) received TWICE" in problems and "n=3" in problems
    assert "OUT OF ORDER" in problems and "(3, 2)" in problems
    assert "never committed" in problems and str(5 + ROLLBACK_DELTA) in problems


def test_group_loss_counts_only_commits_while_connected() -> None:
    # Commits at t = 11 .. 20; connected 0 - 14.5 (closed by the server), then 17 - end.
    committed = {"k00": commits("k00", list(range(1, 11)))}
    conns = [Connection(0, 0.0, closed=14.5, code=1011), Connection(1, 17.0)]
    got = [(30.0, 0, event(1)), (30.0, 1, event(7)), (30.0, 1, event(9)), (30.0, 1, event(10))]
    fake = client(got, conns)
    problems = "\n".join(judge(received(fake), committed, exact=False, windows=windows_of(fake)))
    # Required: t <= 14.5 - GRACE (n=1, 2) and t >= 17 (n=7..10); n=2 and n=8 are missing.
    assert "LOST 2 of 6" in problems, problems
    assert "k00: n=2,8" in problems


def test_a_replay_cut_off_before_its_reply_is_not_counted() -> None:
    committed = {"k00": commits("k00", [1, 2, 3])}
    reply = {
        "stream": "counters",
        "payload": {"request_id": "s1", "status": 200, "data": {"position": "3"}},
    }
    frames = [
        (20.0, 0, event(1, subscription="s1")),
        (21.0, 1, event(2, subscription="s1", position="1")),  # replay, cut off
        (22.0, 2, event(2, subscription="s1", position="1")),  # replayed again
        (22.5, 2, event(3, subscription="s1", position="1")),
        (23.0, 2, reply),
    ]
    conns = [
        Connection(0, 0.0, closed=20.5, code=1011, subscribed=1.0),
        Connection(1, 21.0, closed=21.5, code=1011),
        Connection(2, 21.9, subscribed=23.0),
    ]
    got = received(client(frames, conns, subscribe="counters"))
    assert got.discarded == 1
    assert judge(got, committed, exact=True) == []


def test_ranges() -> None:
    assert ranges([7, 1, 2, 3, 9, 10]) == "1-3,7,9-10"
    assert ranges(list(range(0, 40, 2)), most=2) == "0,2,... (18 more runs)"


def test_a_refused_subscribe_counts_only_if_the_socket_is_left_open() -> None:
    committed = {"k00": commits("k00", [1])}
    refusal: dict[str, Any] = {
        "stream": "counters",
        "payload": {"request_id": "s1", "status": 503, "errors": {"__all__": ["later"]}},
    }
    retried = [Connection(0, 0.0, closed=1.0, code=4012), Connection(1, 2.0, subscribed=2.1)]
    retried[0].reply = refusal["payload"]
    frames = [(0.5, 0, refusal), (12.0, 1, event(1, subscription="s1"))]
    got = received(client(frames, retried, subscribe="counters"))
    assert judge(got, committed, exact=True) == [] and len(got.refused) == 1

    stuck = [Connection(0, 0.0)]
    stuck[0].reply = refusal["payload"]
    got = received(client([(0.5, 0, refusal)], stuck, subscribe="counters"))
    problems = "\n".join(judge(got, committed, exact=True))
    assert "left without a live subscription" in problems and "LOST 1 of 1" in problems
