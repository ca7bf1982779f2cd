"""service.store.groupcommit: concurrent callers share one batch; results and errors go back."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from service.store.groupcommit import GroupCommit


def test_a_lone_call_runs_at_once_as_a_batch_of_one() -> None:
    seen: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        seen.append(list(items))
        return [i * 10 for i in items]

    gc: GroupCommit[int, int] = GroupCommit(run)
    assert gc.submit(4) == 40
    assert gc.submit(5) == 50
    assert seen == [[4], [5]]


def test_callers_arriving_while_a_batch_runs_share_the_next_one() -> None:
    gate, entered = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            entered.set()
            assert gate.wait(10)
        return [i + 1 for i in items]

    gc: GroupCommit[int, int] = GroupCommit(run)
    results: dict[int, int] = {}

    def call(i: int) -> None:
        results[i] = gc.submit(i)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert entered.wait(10)  # the leader is inside its batch
    others = [threading.Thread(target=call, args=(i,)) for i in range(1, 21)]
    for t in others:
        t.start()
    while len(gc._queue) < 20:  # all twenty queued behind the leader
        threading.Event().wait(0.001)
    gate.set()
    for t in [first, *others]:
        t.join(10)
    assert results == {i: i + 1 for i in range(21)}
    assert batches[0] == [0]
    assert sorted(batches[1]) == list(range(1, 21))  # one batch for everyone who waited
    assert gc.batches == 2


def test_max_batch_bounds_a_batch() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def run(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        gate.wait(10)
        return list(items)

    gc: GroupCommit[int, int] = GroupCommit(run, max_batch=3)
    threads = [threading.Thread(target=gc.submit, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert sum(sizes) == 10
    assert max(sizes) <= 3


def test_an_exception_reaches_every_caller_of_its_batch_and_the_next_batch_runs() -> None:
    calls = 0

    def run(items: Sequence[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if "bad" in items:
            raise ValueError("boom")
        return [s.upper() for s in items]

    gc: GroupCommit[str, str] = GroupCommit(run)
    with pytest.raises(ValueError, match="boom"):
        gc.submit("bad")
    assert gc.submit("ok") == "OK"
    assert calls == 2
