"""Coalescing for writes many greenlets make in one turn of the event loop.

A connect storm wakes a registry batch's worth of sockets in one turn (their ``join``s
committed together), and each publishes a presence change. ``NextTick`` collects what is
added during the turn and hands it, in order, to one ``flush`` call that runs in its own
greenlet as soon as the adders yield: one bus message instead of one each, with no timer.
Each adder waits for the flush that carries its item (unless it says not to), so what it
does next (acknowledge a join) still comes after its item has left, as when it published
alone. With ``delay_s`` a flush first waits that long, so a batch holds what a storm adds
in one interval, not one loop turn (presence: ``PRESENCE_BATCH_S``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import gevent
from gevent.event import Event

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Batch(Generic[T]):
    __slots__ = ("done", "items")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.done = Event()


class NextTick(Generic[T]):
    """Items added from any greenlet reach ``flush`` in order, batched per loop turn.

    One flusher at a time: items added while a flush is in progress (say, waiting out a
    broker reconnect) go in the next call, after it, so order is kept. A flush that raises
    is logged; its items are dropped and their adders released all the same."""

    def __init__(self, flush: Callable[[list[T]], None], delay_s: float = 0.0) -> None:
        self._flush = flush
        self._delay_s = delay_s
        self._open: _Batch[T] = _Batch()
        self._flushing = False

    def add(self, item: T, wait: bool = True) -> None:
        """Queue ``item``; return once the flush that carried it has run (``wait``), else
        at once (a close, a consumer callback: neither may block for the interval)."""
        batch = self._open
        batch.items.append(item)
        if not self._flushing:
            self._flushing = True
            gevent.spawn(self._run)  # starts once the current greenlet yields
        if wait:
            batch.done.wait()

    def _run(self) -> None:
        try:
            while self._open.items:
                if self._delay_s:  # what arrives meanwhile joins this batch
                    gevent.sleep(self._delay_s)
                batch, self._open = self._open, _Batch()
                try:
                    self._flush(batch.items)
                except Exception:  # a bug in one flush must not strand the next items
                    log.exception("flush of %d items failed; they are dropped",
                                  len(batch.items))
                finally:
                    batch.done.set()
        finally:
            self._flushing = False
