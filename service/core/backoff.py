"""Capped exponential backoff: the one retry schedule for reconnects and outage retries."""

from __future__ import annotations


class Backoff:
    """The pause before each next attempt: ``first_s``, then doubled each time up to
    ``max_s``; ``reset()`` after a success starts over (kombu's ``retry_over_time`` shape,
    without its blocking loop, so each caller keeps its own logging and sleep)."""

    __slots__ = ("_next", "first_s", "max_s")

    def __init__(self, first_s: float, max_s: float) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._next = first_s

    def next(self) -> float:
        """The pause to take now; the following one doubles (capped)."""
        pause = self._next
        self._next = min(self._next * 2, self.max_s)
        return pause

    def peek(self) -> float:
        """The pause ``next()`` would give, without taking it."""
        return self._next

    def reset(self) -> None:
        self._next = self.first_s
