"""service.core.backoff: the one capped exponential retry schedule."""

from service.core.backoff import Backoff


def test_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(0.25, 1.0)
    assert b.peek() == 0.25
    assert [b.next() for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.25
