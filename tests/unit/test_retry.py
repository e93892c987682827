"""The backoff policy of reconnects and send retries."""

from pgbinding.delivery.retry import Backoff


def test_waits_double_up_to_the_most_and_reset() -> None:
    backoff = Backoff(0.5, 4.0, jitter=0.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_jitter_spreads_waits_within_its_share() -> None:
    waits = [Backoff(1.0, 1.0, jitter=0.2).next() for _ in range(200)]
    assert all(0.8 <= w <= 1.2 for w in waits)
    assert len({round(w, 6) for w in waits}) > 100
