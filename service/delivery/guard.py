"""The one place Herald reaches into simple-websocket's socket: a lock around every write.

flask-sock's (simple-websocket's) ``send`` takes no lock and may write part of a frame,
and simple-websocket's own reader writes too (pongs, close replies). Its public API has no
hook for a write lock, so ``guard`` replaces the connection's ``sock`` attribute with a
proxy whose writes take a lock and write everything. ``tests/unit/test_guard.py`` pins the
attributes this relies on (``ws.sock``, ``sock.sendall``, the gevent socket's ``_sock``).
"""

from __future__ import annotations

from typing import Any

from gevent.lock import Semaphore


class GuardedSocket:
    """A socket whose writes, from any greenlet, happen one at a time and in full.

    simple-websocket's reader greenlet writes too (pong and close replies) with a bare
    ``send`` that may write part of a frame; behind this proxy every writer takes the lock
    and writes everything, so frames never interleave. Reads pass straight through.
    """

    __slots__ = ("_sock", "lock", "raw")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.lock = Semaphore()
        # gevent's socket wraps a non-blocking OS socket: the fast path writes to it
        # directly when that cannot block (see Conn.push)
        self.raw = getattr(sock, "_sock", None)

    def send(self, data: bytes) -> int:
        with self.lock:
            self._sock.sendall(data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        with self.lock:
            self._sock.sendall(data)

    def sendall_locked(self, data: bytes) -> None:
        """Write while the caller already holds ``lock``."""
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def guard(ws: Any) -> GuardedSocket:
    """Put a GuardedSocket under a simple-websocket connection (idempotent)."""
    if not isinstance(ws.sock, GuardedSocket):
        ws.sock = GuardedSocket(ws.sock)
    return ws.sock
