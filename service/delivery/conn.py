"""One local WebSocket: identity, memberships, and the bounded outbox its writer drains.

Every write to a socket goes through its outbox and its single writer greenlet (or the
fast path, when nothing is queued and nobody writes), so two greenlets never write one
socket at once, a slow socket never blocks the greenlet that delivers to the others, and
frames that queue up while a write is in flight leave in one ``sendall``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from simple_websocket import ConnectionClosed

from service.core.envelope import encode, ws_text_frame
from service.core.metrics import Meter
from service.core.presence import MonitorState
from service.delivery.coalesce import WriteDelay
from service.delivery.wsock import guard

log = logging.getLogger(__name__)

#: Close codes from PROTOCOL.md.
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_DRAINING = 1012
CLOSE_BEHIND = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_REPLACED = 4409  # Herald's addition: the session was resumed on another socket

GroupKey = tuple[str, str]  # (scope, group)
#: How long a closing socket's writer may take to flush its queue and close frame.
CLOSE_FLUSH_TIMEOUT_S = 5.0
#: Default bytes a socket may have queued (``HERALD_OUTBOX_BYTES``; Centrifugo's 1 MB).
DEFAULT_OUTBOX_BYTES = 1 << 20
#: The close reason of an overflow: it names both limits, so an operator knows what to raise.
OVERFLOW_REASON = "outbound buffer full (HERALD_OUTBOX_LIMIT/_BYTES); resume"


class Conn:
    """One local WebSocket: identity, memberships and the outbox its writer drains."""

    __slots__ = (
        "__weakref__",
        "_byte_limit",
        "_bytes",
        "_close",
        "_delay",
        "_held",
        "_held_bytes",
        "_limit",
        "_outbox",
        "_owns_lock",
        "_stamps",
        "_writer",
        "closed",
        "gen",
        "groups",
        "id",
        "metas",
        "meter",
        "monitors",
        "moved",
        "on_overflow",
        "opened_at",
        "sock",
        "user_id",
        "ws",
    )

    def __init__(self, conn_id: str, user_id: str, ws: Any, outbox_limit: int,
                 on_overflow: Callable[[Conn], None] | None = None,
                 meter: Meter | None = None,
                 outbox_bytes: int = DEFAULT_OUTBOX_BYTES,
                 write_delay: WriteDelay | None = None) -> None:
        self.id = conn_id
        self.user_id = user_id
        self.ws = ws
        self.sock = guard(ws)
        self.groups: set[GroupKey] = set()
        self.metas: dict[GroupKey, dict[str, Any]] = {}  # presence meta per group joined
        self.monitors: dict[GroupKey, MonitorState] = {}
        # lists, not deques: an empty list is 56 bytes, an empty deque 600, and the writer
        # always takes everything at once anyway
        self._outbox: list[bytes] = []
        self._stamps: list[float] = []  # publish time per queued frame, 0.0: a reply
        self.meter = meter or Meter()
        # both bounds hold for what is queued and for what is parked while held: frames
        # (a slow reader of many small events) and bytes (a few large replies)
        self._limit = outbox_limit
        self._byte_limit = outbox_bytes
        self._bytes = 0
        self._held_bytes = 0
        self._close: tuple[int, str] | None = None
        self.closed = False
        self.on_overflow = on_overflow
        self._held: list[tuple[bytes, list[float]]] | None = None
        self._delay = write_delay  # HERALD_WRITE_DELAY_MS: deliveries wait for its timer
        self._owns_lock = False  # the fast path left a frame half-written, lock held
        self.moved = False  # resumed on another socket: that one owns the registry row
        self.gen = 0  # the registry row's resume generation this socket was opened with
        self.opened_at = time.time()
        self._writer: gevent.Greenlet[Any] | None = None

    @property
    def close_code(self) -> int | None:
        """The close code this server asked for, if it is closing the socket."""
        return self._close[0] if self._close is not None else None

    @property
    def byte_limit(self) -> int:
        return self._byte_limit

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the outbox (not yet handed to the kernel)."""
        return self._bytes

    def hold(self) -> None:
        """Park deliveries (not direct replies) until release(): a resume sends its
        welcome and replay first, then what arrived live meanwhile."""
        self._held = []
        self._held_bytes = 0

    def release(self) -> None:
        held, self._held = self._held or [], None
        self._held_bytes = 0
        for data, stamps in held:
            if self._push(data, stamps):
                self._account(stamps)

    def deliver(self, frame: bytes, ts: float = 0.0) -> None:
        """A delivery from the hub: parked while held, else written or queued."""
        self.deliver_chunk(frame, [ts])

    def deliver_chunk(self, chunk: bytes, stamps: list[float]) -> None:
        """Several ready frames back to back (one write for a batch); ``stamps`` has each
        frame's publish time. Parked while held, else written or queued."""
        if self.deliver_now(chunk, stamps):
            self._account(stamps)

    def deliver_now(self, data: bytes, stamps: list[float]) -> bool:
        """The hub's fan-out path: True when ``data`` went out whole right now, and then it
        is not counted yet (the hub counts a fan-out's immediate writes in one go); else it
        is parked (held), queued or dropped (closing) and counted when it leaves."""
        held = self._held
        if held is not None:
            if (len(held) >= self._limit
                    or self._held_bytes + len(data) > self._byte_limit):
                self._overflow()
                return False
            held.append((data, stamps))
            self._held_bytes += len(data)
            return False
        return self._push(data, stamps, delayed=self._delay is not None)

    def flush_delayed(self) -> None:
        """The write delay is up: everything queued leaves in one write now, or, when it
        cannot go whole without blocking, through the writer greenlet."""
        if self._writer is not None or not self._outbox or self.closed:
            return  # a writer takes the queue itself; a closed socket sends nothing
        outbox = self._outbox
        chunk = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        sent = self._write_now(chunk)
        if sent == len(chunk):  # no writer runs, so nothing else holds these lists
            counted, self._stamps, self._outbox, self._bytes = self._stamps, [], [], 0
            self._account(counted)
            return
        if sent is not None and sent < 0:
            return  # the peer is gone; its handler notices and cleans up
        if sent:  # the lock stays taken: the writer finishes this frame first
            outbox[:] = [chunk[sent:]]
            self._bytes = len(chunk) - sent
        self._wake_writer()

    def push(self, frame: bytes, ts: float = 0.0) -> None:
        """Queue one ready WebSocket frame; on overflow close with 1013 (the client resumes).

        ``ts``: the message's publish time, for the delivery latency histogram."""
        if self._push(frame, [ts]):
            self._account([ts])

    def _push(self, data: bytes, stamps: list[float], delayed: bool = False) -> bool:
        """Write now when nothing is queued, else queue (``delayed``: always queue, for
        the write delay's timer). True when written whole now (the caller counts it)."""
        if self._close is not None or self.closed:
            return False
        if not self._outbox and not delayed:
            sent = self._write_now(data)
            if sent == len(data):
                return True
            if sent:  # 0 (the buffer is full) or None: queue it below like any other
                if sent > 0:
                    self._queue(data[sent:], stamps)
                return False  # sent < 0: the peer is gone; its handler notices and cleans up
        # the limits count frames (a stamp each), however they were chunked, and bytes
        if (len(self._stamps) + len(stamps) > self._limit
                or self._bytes + len(data) > self._byte_limit):
            self._overflow()
            return False
        self._queue(data, stamps, wake=not delayed)
        if delayed and self._writer is None and self._delay is not None:
            self._delay.mark(self)
        return False

    def _overflow(self) -> None:
        if self._close is None and self.on_overflow is not None:
            self.on_overflow(self)
        self.close(CLOSE_BEHIND, OVERFLOW_REASON)

    def _queue(self, data: bytes, stamps: list[float], wake: bool = True) -> None:
        self._outbox.append(data)
        self._stamps.extend(stamps)
        self._bytes += len(data)
        if wake:
            self._wake_writer()

    def send(self, obj: Any) -> None:
        """Encode one JSON frame for this socket alone and queue it."""
        self.push(ws_text_frame(encode(obj)))

    def close(self, code: int, reason: str = "") -> None:
        """Flush what is queued, then send a close frame (in the writer)."""
        if self._close is None:
            self._close = (code, reason)
            self._wake_writer()

    def peer_closed(self) -> None:
        """The client's close frame has been answered: no frame may follow that answer
        (RFC 6455 5.5.1), so what is queued, and the replies to frames the client sent
        just before its close, are dropped."""
        self.closed = True

    def _wake_writer(self) -> None:
        # a writer greenlet lives only while there is something to write: an idle socket
        # costs no greenlet (and no saved stack) of its own
        if self._writer is None and not self.closed:
            self._writer = gevent.spawn(self._write_loop)

    def _write_loop(self) -> None:
        sock = self.sock
        try:
            while self._outbox and not self.closed:
                # everything queued leaves in one write; outbox and stamps change together
                # (no switch in between), so all the stamps belong to this chunk
                outbox, stamps = self._outbox, self._stamps
                chunk = outbox[0] if len(outbox) == 1 else b"".join(outbox)
                outbox.clear()
                self._bytes = 0
                sent = stamps[:]
                stamps.clear()
                if self._owns_lock:  # finishing a frame the fast path started
                    try:
                        sock.sendall_locked(chunk)
                    finally:
                        self._owns_lock = False
                        sock.lock.release()
                else:
                    sock.sendall(chunk)  # frames queued meanwhile leave in the next round
                self._account(sent)
            if self._close is not None:
                code, reason = self._close
                with contextlib.suppress(ConnectionClosed):  # the peer closed first
                    self.ws.close(reason=code, message=reason)
                self.closed = True
        except OSError:
            self.closed = True  # the peer went away; its handler notices and cleans up
        except Exception:  # a writer must never take the process down
            log.exception("writer for %s failed", self.id)
            self.closed = True
        finally:
            self._writer = None
            if self._owns_lock:  # killed before it could finish the half-written frame
                self._owns_lock = False
                sock.lock.release()
            if self.closed:
                self._outbox.clear()
                self._stamps.clear()
                self._bytes = 0

    def _write_now(self, data: bytes) -> int | None:
        """Fast path: nothing queued and nobody writing, so write from this greenlet into
        the non-blocking OS socket. No writer wake-up, no greenlet switch.

        Returns None when it could not try (no raw socket, a write in flight), -1 when the
        peer is gone, else the bytes written. After a partial write the lock is taken, so no
        other write (a pong, a close) lands inside the frame: the writer sends the rest."""
        sock = self.sock
        raw = sock.raw
        lock = sock.lock
        # no lock for a write that goes whole (its acquire + release were a fifth of the
        # fan-out's user time): no greenlet can switch in before the send ends (it never blocks)
        if raw is None or lock.locked():
            return None
        try:
            sent: int = raw.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            return -1
        if 0 < sent < len(data):
            lock.acquire(blocking=False)  # free, as checked above: hold it for the rest
            self._owns_lock = True
        return sent

    def writer_idle(self, timeout_s: float) -> bool:
        """Wait (bounded) until no writer greenlet is running; True when none is."""
        writer = self._writer
        if writer is not None and writer is not gevent.getcurrent():
            writer.join(timeout=timeout_s)
        return self._writer is None

    def _account(self, stamps: list[float]) -> None:
        self.meter.count_sent(1, stamps)

    def stop(self) -> None:
        """End the writer. A requested close is flushed first (bounded), so the client
        learns why it was closed (4401, 1013, …); otherwise the socket is gone already."""
        writer = self._writer
        if writer is not None and writer is not gevent.getcurrent():
            if self._close is not None and not self.closed:
                writer.join(timeout=CLOSE_FLUSH_TIMEOUT_S)
            writer.kill(block=False)
        self.closed = True
