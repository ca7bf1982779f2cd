"""service.core.nexttick: what greenlets add in one loop turn is flushed together, in order,
and each adder returns only once its item has been flushed."""

from __future__ import annotations

import gevent

from service.core.nexttick import NextTick


def test_one_turn_is_one_flush_and_order_is_kept() -> None:
    flushed: list[list[int]] = []
    tick: NextTick[int] = NextTick(flushed.append)
    gevent.joinall([gevent.spawn(tick.add, i) for i in range(5)])
    assert flushed == [[0, 1, 2, 3, 4]]
    tick.add(5)  # a lone caller: flushed alone, before add returns
    assert flushed == [[0, 1, 2, 3, 4], [5]]


def test_an_adder_returns_only_after_its_flush() -> None:
    events: list[str] = []

    def flush(items: list[str]) -> None:
        gevent.sleep(0.01)  # a broker round trip, say
        events.append(f"flushed {items}")

    tick: NextTick[str] = NextTick(flush)

    def join(name: str) -> None:
        tick.add(name)
        events.append(f"ack {name}")

    gevent.joinall([gevent.spawn(join, "a"), gevent.spawn(join, "b")])
    assert events == ["flushed ['a', 'b']", "ack a", "ack b"]


def test_items_added_during_a_slow_flush_follow_it() -> None:
    flushed: list[list[int]] = []

    def slow(items: list[int]) -> None:
        gevent.sleep(0.01)  # a broker reconnect, say
        flushed.append(items)

    tick: NextTick[int] = NextTick(slow)
    first = gevent.spawn(tick.add, 1)
    gevent.sleep(0.001)  # the flusher starts and blocks
    later = [gevent.spawn(tick.add, 2), gevent.spawn(tick.add, 3)]
    gevent.joinall([first, *later])
    assert flushed == [[1], [2, 3]]


def test_a_failing_flush_releases_its_adders_and_later_ones_go_on() -> None:
    flushed: list[list[int]] = []

    def flaky(items: list[int]) -> None:
        if items == [1]:
            raise RuntimeError("boom")
        flushed.append(items)

    tick: NextTick[int] = NextTick(flaky)
    tick.add(1)
    tick.add(2)
    assert flushed == [[2]]
    assert not tick._flushing


def test_with_a_delay_what_arrives_within_the_interval_is_one_flush() -> None:
    flushed: list[list[int]] = []
    tick: NextTick[int] = NextTick(flushed.append, delay_s=0.05)

    def late(i: int) -> None:
        gevent.sleep(0.001)  # later loop turns, same interval
        tick.add(i)

    gevent.joinall([gevent.spawn(tick.add, 0), *(gevent.spawn(late, i) for i in (1, 2))])
    assert flushed == [[0, 1, 2]]


def test_an_adder_that_does_not_wait_returns_before_the_flush_and_order_holds() -> None:
    flushed: list[list[int]] = []
    tick: NextTick[int] = NextTick(flushed.append, delay_s=0.05)
    for i in range(3):
        tick.add(i, wait=False)
    assert flushed == []
    tick.add(3)  # waits: its flush carries the others, in order
    assert flushed == [[0, 1, 2, 3]]
