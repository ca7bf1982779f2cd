"""``HERALD_WRITE_DELAY_MS``: deliveries wait up to the delay and leave together.

Each delivery is one ``send`` per socket, about 5 µs of kernel time on loopback, which
is most of what a steady fan-out costs. With a write delay (Centrifugo's
``write_delay``), a delivery is queued on its socket instead of written, and one timer per
frontend writes every waiting socket's queue in one ``send`` when the delay is up: at
rates where a socket gets several messages per delay, that many times fewer system calls,
for at most the delay in added latency. Off (0) by default: below about one message per
socket per delay it only adds latency.

The flush runs in the event loop's own callback, so it never blocks: a socket whose
queue does not go out whole (its buffer is full, or a write is in flight) is handed to
its writer greenlet, as any queued frame would be.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gevent

if TYPE_CHECKING:
    from service.delivery.conn import Conn

log = logging.getLogger(__name__)


class WriteDelay:
    """One frontend's pending sockets and the timer that flushes them."""

    __slots__ = ("_armed", "_pending", "_timer", "delay_s")

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self._pending: dict[Conn, None] = {}  # insertion-ordered: flushed in arrival order
        self._timer: Any = None
        self._armed = False

    def mark(self, conn: Conn) -> None:
        """``conn`` has deliveries waiting: flush it when the current delay is up."""
        self._pending[conn] = None
        if not self._armed:
            self._armed = True
            # a new timer per window: a fired one restarted goes off at once
            self._timer = gevent.get_hub().loop.timer(self.delay_s)
            self._timer.start(self._flush)

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        self._armed = False
        for conn in pending:
            try:
                conn.flush_delayed()
            except Exception:  # one socket's failure must not strand the others
                log.exception("write delay: flushing %s failed", conn.id)

    @property
    def waiting(self) -> int:
        """Sockets with deliveries waiting for the timer."""
        return len(self._pending)
