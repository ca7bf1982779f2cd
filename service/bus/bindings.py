"""The routing keys an AMQP consumer's queue is bound to: what its owner wants, what the
broker has, and the rounds that bring the second in line with the first.

The consumer loop owns the connection (an exclusive queue can be bound only from there),
so ``want``/``drop`` only record the change and wake the loop through a pipe; the loop
calls ``apply`` between reads. One round pipelines its binds (``nowait``) and awaits the
last: the broker processes one channel's methods in order, so that reply means every bind
of the round is in place. ``queue.unbind`` has no ``nowait`` in AMQP 0-9-1, so unbinds are
awaited one by one; they are not urgent (a frontend drops what it has no recipient for),
so a round takes at most ``ROUND_MAX`` of each and leaves the rest for the next.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

#: Most binds, and most unbinds, one round applies before the loop reads again.
ROUND_MAX = 512


class Bindings:
    """Wanted and bound routing keys of one consumer (see the module docstring)."""

    def __init__(self) -> None:
        self.wanted: set[str] = set()
        self.bound: set[str] = set()
        self.binds = 0  # broker binds made, for metrics and tests
        self.unbinds = 0
        self.dirty = False
        self.live = False  # a queue exists that the loop keeps bound
        self._lock = threading.Lock()  # owners may be other threads (tests, scripts)
        self._round = threading.Event()  # set, and replaced, when a round has landed
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)

    # --- the owner's side ----------------------------------------------------------------

    def want(self, key: str) -> None:
        if key not in self.wanted:
            with self._lock:
                self.wanted.add(key)
            self._poke()

    def drop(self, key: str) -> None:
        if key in self.wanted:
            with self._lock:
                self.wanted.discard(key)
            self._poke()

    def wait_bound(self, keys: list[str], timeout: float) -> bool:
        """True once every key still wanted is bound; False when the queue is gone (a new
        one is bound to everything wanted before it consumes) or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while True:
            landed = self._round  # taken before the check, so no round is missed
            if not self.live:
                return False
            if all(k in self.bound or k not in self.wanted for k in keys):
                return True
            left = deadline - time.monotonic()
            if left <= 0 or not landed.wait(left):
                return False

    def _poke(self) -> None:
        self.dirty = True
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, OSError):  # a full pipe: awake already
                os.write(self._wake_w, b"x")

    # --- the consumer loop's side --------------------------------------------------------

    def fresh_queue(self) -> None:
        """A new queue is bound to nothing yet (everything wanted is bound next)."""
        self.bound = set()
        self.dirty = True

    def lost(self) -> None:
        """The queue is gone: waiters learn it now."""
        self.live = False
        self._landed()

    def apply(self, channel: Any, queue: str, exchange: str) -> None:
        """One round of binds and unbinds on ``channel`` (the queue's own connection)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self.wake_fd, 4096)
        self.dirty = False
        with self._lock:
            adds = [k for k in self.wanted if k not in self.bound][:ROUND_MAX]
            removes = [k for k in self.bound if k not in self.wanted][:ROUND_MAX]
        for i, key in enumerate(adds):
            channel.queue_bind(queue, exchange, key, nowait=i < len(adds) - 1)
        self.bound.update(adds)
        self.binds += len(adds)
        for key in removes:
            if key not in self.wanted:  # wanted again meanwhile: keep it
                channel.queue_unbind(queue, exchange, key)
                self.bound.discard(key)
                self.unbinds += 1
        if len(adds) == ROUND_MAX or len(removes) == ROUND_MAX:
            self._poke()  # more to do: another round, after the loop has read
        self._landed()

    def settle(self, channel: Any, queue: str, exchange: str) -> None:
        """Bind everything wanted (a new queue, before it consumes)."""
        while self.dirty:
            self.apply(channel, queue, exchange)
        self.live = True
        self._landed()

    def _landed(self) -> None:
        landed, self._round = self._round, threading.Event()
        landed.set()

    def close(self) -> None:
        """Close the pipe (the loop has ended); the numbers are never written again."""
        fds, self.wake_fd, self._wake_w = (self.wake_fd, self._wake_w), -1, -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
