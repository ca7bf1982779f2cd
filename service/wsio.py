"""Reading a WebSocket in the handler greenlet, without simple-websocket's reader thread.

flask-sock's handler greenlet has to stay alive for the socket's whole life anyway, so it
does the reading itself: simple-websocket is given a thread class that never starts, and
``receive`` feeds the bytes to simple-websocket's own wsproto event handling (pings are
answered, close handshakes and the 1009 limit work as before). One greenlet per idle
socket instead of two, which is most of what an idle socket costs.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from simple_websocket import ConnectionClosed
from wsproto.utilities import LocalProtocolError


class InlineReader:
    """Stands in for simple-websocket's reader thread: never started."""

    def __init__(self, target: Callable[[], None] | None = None, **_: Any) -> None:
        self.name = "herald-inline-reader"

    def start(self) -> None:
        """Nothing to start: ``receive`` reads in the caller's greenlet."""


def receive(ws: Any, timeout: float | None) -> str | bytes | None:
    """The next message; None when ``timeout`` passes first. Raises ConnectionClosed."""
    while not ws.input_buffer:
        if not ws.connected:
            raise ConnectionClosed(ws.close_reason, ws.close_message)
        data = None
        try:
            with gevent.Timeout(timeout, False):
                data = ws.sock.recv(ws.receive_bytes)
            if data is None:
                return None  # timed out; nothing was consumed
            if not data:
                raise OSError("the peer closed the connection")
            ws.ws.receive_data(data)
            ws.connected = ws._handle_events()  # replies (pong, close) go through the guard
        except (OSError, LocalProtocolError):
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

    wsproto keeps its whole HTTP/1.1 handshake (an h11 connection, the request headers)
    for the socket's life, about 2.5 KiB that an idle socket never uses again; after the
    handshake wsproto only asks it for (no more) events."""
    conn = getattr(ws, "ws", None)
    if conn is not None and getattr(conn, "connection", None) is not None:
        conn.handshake = _ESTABLISHED


#: How long a closing socket waits for the client to finish (bounded lingering close).
LINGER_S = 2.0
LINGER_MAX_BYTES = 1 << 20


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
