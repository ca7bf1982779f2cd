"""The one module that touches simple-websocket's, wsproto's and gevent's socket internals.

Their public APIs do not serve three things Herald needs, so this module reaches under them
and ``tests/unit/test_internals.py`` pins every attribute it relies on, so that an
upgrade that moves one fails in CI instead of in production:

* **A write lock.** flask-sock's (simple-websocket's) ``send`` takes no lock and may write
  part of a frame, and its reader writes too (pongs, close replies); there is no hook for a
  lock, so ``guard`` swaps the connection's ``sock`` for a proxy whose writes take one.
* **Reading without simple-websocket's reader thread.** The handler greenlet has to stay
  alive for the socket's whole life anyway, so it reads itself: simple-websocket is given a
  thread class that never starts (``InlineReader``), and ``receive``/``feed`` hand the bytes
  to simple-websocket's own wsproto event handling (``ws.ws``, ``_handle_events``): pings
  are answered, close handshakes and the 1009 limit work as before. One greenlet per idle
  socket instead of two, which is most of what an idle socket costs.
* **A cheaper handshake, a lighter socket, a takeover.** A plain upgrade (no extension) is
  answered from the WSGI environ the server already parsed (``upgrade.py``: simple-websocket
  would rebuild the request and parse it again with h11, about a tenth of a connect
  storm's CPU); once established a socket lets go of what it will not use again (the
  environ and the request hanging off it, wsproto's handshake state, and a plain socket's
  wsproto frame layer whenever it is between frames: ~7 KiB per idle socket in all); the
  gevent socket's descriptor is duplicated so the event loop can take the socket over from
  the request (``sockets/detached.py``, waiting on the socket's own read watcher), and the
  fast path writes to the non-blocking OS socket under gevent's (``GuardedSocket.raw``,
  see ``Conn.push``).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from gevent.lock import Semaphore
from simple_websocket import ConnectionClosed, Server
from simple_websocket.ws import Base
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.utilities import LocalProtocolError

from service.delivery.upgrade import plain_upgrade_key, switching_protocols

#: How long a closing socket waits for the client to finish (bounded lingering close).
LINGER_S = 2.0
LINGER_MAX_BYTES = 1 << 20


# --- the write lock ----------------------------------------------------------------------

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


# --- reading in the handler greenlet ------------------------------------------------------

class InlineReader:
    """Stands in for simple-websocket's reader thread: never started (and let go of once
    the socket is established, see ``drop_handshake``)."""

    __slots__ = ("name",)

    def __init__(self, target: Callable[[], None] | None = None, **_: Any) -> None:
        self.name = "herald-inline-reader"

    def start(self) -> None:
        """Nothing to start: ``receive`` reads in the caller's greenlet."""


class NoWaiter:
    """Stands in for simple-websocket's per-socket Event (~150 bytes): nobody waits on it,
    ``receive`` here reads the socket itself; its reader thread's ``set`` is a no-op."""

    __slots__ = ()

    def set(self) -> None:
        """Nothing waits."""

    def clear(self) -> None:
        """Nothing to clear."""

    def wait(self, timeout: float | None = None) -> bool:
        raise RuntimeError("simple-websocket's receive() is not used: wsock.receive reads")


class HeraldServer(Server):  # type: ignore[misc]  # simple-websocket ships no types
    """simple-websocket's server side with the plain upgrade answered directly, and able to
    be taken over by ``detached.Detached`` once established."""

    detached: Any = None
    #: A plain socket's wsproto frame layer exists only while it is needed: made by the
    #: first read or write that wants it (``ws``), let go whenever the socket is between
    #: frames (``feed``): ~1.7 KiB an idle socket does not keep.
    _frames: Any = None
    _plain = False

    @property
    def ws(self) -> Any:
        frames = self._frames
        if frames is None:
            frames = self._frames = Connection(ConnectionType.SERVER)
        return frames

    @ws.setter
    def ws(self, value: Any) -> None:
        self._frames = value

    @property
    def can_detach(self) -> bool:
        """Only under gunicorn: its request ends cleanly when the view's answer says the
        connection was taken over (``TakenOver``). Another server (gevent's WSGI server in
        tests) would go on reading the socket as its next request, so there the session
        stays on its request greenlet."""
        return bool(self.mode == "gunicorn")

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        if self.detached is None:
            super().close(reason=reason, message=message)
            return
        # send the close frame only; the detached reader lingers and closes the socket
        Base.close(self, reason=reason, message=message)
        self.detached.server_closed()

    def handshake(self) -> None:
        key = plain_upgrade_key(self.environ)
        if key is None:
            super().handshake()  # wsproto negotiates (or refuses) the unusual ones
            return
        self.sock.sendall(switching_protocols(key))
        # wsproto's frame layer comes when a frame does (``ws``): no h11 handshake state
        self._frames = None
        self._plain = True
        self.connected = True


def receive(ws: Any, timeout: float | None) -> str | bytes | None:
    """The next message; None when ``timeout`` passes first. Raises ConnectionClosed.

    ``timeout`` is a deadline for the whole call, not per read: control frames (a ping
    every second) are answered on the way but never push the deadline out, so a socket
    cannot outlive its hello timeout or its token that way."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not ws.input_buffer:
        if not ws.connected:
            raise ConnectionClosed(ws.close_reason, ws.close_message)
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        data = None
        try:
            with gevent.Timeout(left, False):
                data = ws.sock.recv(ws.receive_bytes)
            if data is None:
                return None  # timed out; nothing was consumed
            if not data:
                raise OSError("the peer closed the connection")
            feed(ws, data)
        except OSError:
            ws.connected = False
            raise ConnectionClosed(ws.close_reason, ws.close_message) from None
    return ws.input_buffer.pop(0)  # type: ignore[no-any-return]


class _Established:
    """Stands in for wsproto's finished opening handshake: no events, ever again."""

    __slots__ = ()

    def events(self) -> Iterator[Any]:
        return iter(())


_ESTABLISHED = _Established()


def drop_handshake(ws: Any) -> None:
    """Let go of the opening handshake's state once the socket is established.

    The WSGI environ (~3.5 KiB: gunicorn's request, response, parser and closed socket
    hang off it) is not read again once the session is open, nor is the reader thread
    that never ran. wsproto keeps its whole HTTP/1.1 handshake (an h11 connection, the
    request headers) for the socket's life, about 2.5 KiB that an idle socket never uses
    again; after the handshake wsproto only asks it for (no more) events. (A plain
    socket has neither: see ``HeraldServer.handshake``.)"""
    ws.environ = None
    ws.thread = None
    if getattr(ws, "_plain", False):
        return
    conn = getattr(ws, "ws", None)
    if conn is not None and getattr(conn, "connection", None) is not None:
        conn.handshake = _ESTABLISHED


def _between_frames(ws: Any) -> bool:
    """True when a plain socket's wsproto frame layer holds nothing: open, no event
    pending, no partial frame or fragmented message; a new one would do the same."""
    conn = getattr(ws, "_frames", None)
    if conn is None or not ws._plain or not ws.connected or ws.incoming_message is not None:
        return False
    proto = conn._proto
    decoder = proto._frame_decoder
    return bool(conn._state is ConnectionState.OPEN and not conn._events
                and decoder.header is None and not len(decoder.buffer)
                and proto._message_decoder.opcode is None)


def linger(ws: Any) -> None:
    """Close like RFC 6455 asks: stop sending, read until the client closes, bounded.

    Closing a TCP socket that still has unread input makes the kernel send a reset, which
    can destroy the close frame (1009, 4401, …) before the client reads it: the client
    would see 1006 instead of the reason."""
    sock = ws.sock
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return  # already gone
    drained = 0
    with gevent.Timeout(LINGER_S, False):
        while drained < LINGER_MAX_BYTES:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            drained += len(chunk)


# --- the event loop's takeover (sockets/detached.py) -------------------------------------

def can_take_over(ws: Any) -> bool:
    """True for a socket ``HeraldServer`` accepted under gunicorn, on a non-blocking OS
    socket (behind its guard)."""
    raw = getattr(ws.sock, "raw", None)
    return bool(getattr(ws, "can_detach", False)) and raw is not None and raw.gettimeout() == 0


def take_descriptor(ws: Any) -> Any:
    """Give the guarded socket a descriptor of its own (so the request can return and
    gunicorn close its copy) and return that gevent socket."""
    guarded = ws.sock
    dup = guarded._sock.dup()
    guarded._sock = dup
    guarded.raw = dup._sock
    return dup


def raw_of(sock: Any) -> Any:
    """The non-blocking OS socket under a gevent socket."""
    return sock._sock


def read_watcher(sock: Any) -> Any:
    """The gevent socket's own read watcher, for the event loop to wait on (one libev
    watcher per socket fewer). Started only while no greenlet waits in the socket's own
    reads, and stopped before any does (the lingering close)."""
    return sock._read_event


def feed(ws: Any, data: bytes) -> None:
    """Hand bytes read from the socket to simple-websocket's wsproto handling: messages land
    in ``ws.input_buffer``; pongs and close replies go out through the guard. A protocol
    violation ends the socket: ConnectionClosed."""
    try:
        ws.ws.receive_data(data)
        ws.connected = ws._handle_events()
    except LocalProtocolError:
        ws.connected = False
        raise ConnectionClosed(ws.close_reason, ws.close_message) from None
    if _between_frames(ws):
        ws._frames = None


def buffered(ws: Any) -> str | bytes | None:
    """The next message already read and decoded (None when there is none)."""
    return ws.input_buffer.pop(0) if ws.input_buffer else None


def peer_close_code(ws: Any) -> int:
    """The close code the client sent (0 when it sent none)."""
    return int(getattr(ws, "close_reason", 0) or 0)
