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
        # keys whose wanted and bound states may differ: a round looks at these only, so
        # its cost follows the changes, not every key held (a connect storm is O(n))
        self.pending: set[str] = set()
        self.dirty = False
        self.live = False  # a queue exists that the loop keeps bound
        self._lock = threading.Lock()  # owners may be other threads (tests, scripts)
        self._waiters: dict[str, list[threading.Event]] = {}  # key -> who waits for it
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)

    # --- the owner's side ----------------------------------------------------------------

    def want(self, key: str) -> None:
        if key not in self.wanted:
            with self._lock:
                self.wanted.add(key)
                self.pending.add(key)
            self._poke()

    def drop(self, key: str) -> None:
        if key in self.wanted:
            with self._lock:
                self.wanted.discard(key)
                self.pending.add(key)
            self._poke()

    def wait_bound(self, keys: list[str], timeout: float) -> bool:
        """True once every key still wanted is bound; False when the queue is gone (a new
        one is bound to everything wanted before it consumes) or ``timeout`` passed.

        A waiter is woken only by a round that bound (or dropped) one of its own keys: a
        connect storm's hundred waiting welcomes do not all wake at every round."""
        deadline = time.monotonic() + timeout
        while True:
            landed = threading.Event()
            with self._lock:
                if not self.live:
                    return False
                missing = [k for k in keys if k in self.wanted and k not in self.bound]
                if not missing:
                    return True
                for key in missing:
                    self._waiters.setdefault(key, []).append(landed)
            left = deadline - time.monotonic()
            if left <= 0 or not landed.wait(left):
                with self._lock:
                    for key in missing:
                        with contextlib.suppress(KeyError, ValueError):
                            self._waiters[key].remove(landed)
                return False

    def _poke(self) -> None:
        self.dirty = True
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, OSError):  # a full pipe: awake already
                os.write(self._wake_w, b"x")

    # --- the consumer loop's side --------------------------------------------------------

    def fresh_queue(self) -> None:
        """A new queue is bound to nothing yet (everything wanted is bound next)."""
        with self._lock:
            self.bound = set()
            self.pending = set(self.wanted)
        self.dirty = True

    def lost(self) -> None:
        """The queue is gone: waiters learn it now."""
        with self._lock:
            self.live = False
            self._notify(list(self._waiters))

    def apply(self, channel: Any, queue: str, exchange: str) -> None:
        """One round of binds and unbinds on ``channel`` (the queue's own connection)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self.wake_fd, 4096)
        self.dirty = False
        adds: list[str] = []
        removes: list[str] = []
        with self._lock:
            while self.pending and len(adds) < ROUND_MAX and len(removes) < ROUND_MAX:
                key = self.pending.pop()
                if key in self.wanted and key not in self.bound:
                    adds.append(key)
                elif key in self.bound and key not in self.wanted:
                    removes.append(key)
        for i, key in enumerate(adds):
            channel.queue_bind(queue, exchange, key, nowait=i < len(adds) - 1)
        with self._lock:
            self.bound.update(adds)
            self._notify(adds)
        for key in removes:
            if key not in self.wanted:  # wanted again meanwhile: keep it
                channel.queue_unbind(queue, exchange, key)
                self.bound.discard(key)
        with self._lock:
            self._notify(removes)  # a waiter for a key dropped meanwhile waits no more
        if self.pending:
            self._poke()  # more to do: another round, after the loop has read

    def settle(self, channel: Any, queue: str, exchange: str) -> None:
        """Bind everything wanted (a new queue, before it consumes)."""
        while self.dirty:
            self.apply(channel, queue, exchange)
        with self._lock:
            self.live = True
            self._notify(list(self._waiters))

    def _notify(self, keys: list[str]) -> None:
        """Wake whoever waits for these keys (the caller holds the lock)."""
        for key in keys:
            for landed in self._waiters.pop(key, ()):
                landed.set()

    def close(self) -> None:
        """Close the pipe (the loop has ended); the numbers are never written again."""
        fds, self.wake_fd, self._wake_w = (self.wake_fd, self._wake_w), -1, -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
