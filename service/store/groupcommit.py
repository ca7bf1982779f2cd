"""Group commit: concurrent callers of one slow operation share a single execution.

Durable publishing pays a Postgres commit and a broker round trip per call; done one at a
time that caps a process at a few hundred messages a second. ``GroupCommit`` queues each
call; whichever caller finds nobody working becomes the leader, takes everything queued
(up to ``max_batch``), runs the batch function once, hands every caller its own result and
wakes them. While a leader works, new callers queue up for the next batch, so batches grow
with load and a lone caller runs at once, with no timer and no added latency.

It needs no thread of its own and works for threads and for gevent greenlets alike (under
gevent's monkey-patching ``threading.Condition`` is cooperative).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

#: Largest batch one leader takes: bounds a statement's size and one batch's latency.
DEFAULT_MAX_BATCH = 500


class _Slot(Generic[In, Out]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: In) -> None:
        self.item = item
        self.result: Out | None = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit(Generic[In, Out]):
    """Batches concurrent ``submit`` calls into calls of ``run_batch``.

    ``run_batch(items)`` returns one result per item, in order. If it raises, every caller
    of that batch gets the exception; a failure of one item alone is better returned as
    that item's result (the caller decides what to raise).
    """

    def __init__(self, run_batch: Callable[[Sequence[In]], Sequence[Out]], *,
                 max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Slot[In, Out]] = []
        self._busy = False
        self.batches = 0  # how many batches ran (for tests and metrics)

    @property
    def pending(self) -> int:
        """Items waiting for the next batch (a hint: read without the lock)."""
        return len(self._queue)

    def submit(self, item: In) -> Out:
        """Run ``item`` in the next batch and return its result (or raise its error)."""
        return self.submit_many([item])[0]

    def submit_many(self, items: Sequence[In]) -> list[Out]:
        """Queue several items together (they stay adjacent and in order, so they share a
        batch when they fit in one); return their results in order. Raises the first error
        any of them got."""
        slots: list[_Slot[In, Out]] = [_Slot(item) for item in items]
        with self._cond:
            self._queue.extend(slots)
            while not slots[-1].done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                batch = self._queue[:self._max_batch]
                del self._queue[:self._max_batch]
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    for other in batch:  # a leader killed mid-batch must not strand them
                        if not other.done:
                            other.error = RuntimeError("batch interrupted")
                            other.done = True
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        for slot in slots:
            if slot.error is not None:
                raise slot.error
        return [slot.result for slot in slots]  # type: ignore[misc]  # set when no error

    def _run(self, batch: list[_Slot[In, Out]]) -> None:
        self.batches += 1
        try:
            results = self._run_batch([s.item for s in batch])
        except Exception as exc:  # noqa: BLE001 - handed to the callers, who raise it
            for s in batch:
                s.error, s.done = exc, True
            return
        for s, result in zip(batch, results, strict=True):
            s.result, s.done = result, True
