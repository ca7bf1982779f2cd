"""simple-websocket, trimmed for Herald: a cheaper opening handshake, and reading in the
handler greenlet without simple-websocket's reader thread.

The handler greenlet has to stay alive for the socket's whole life anyway, so it does the
reading itself: simple-websocket is given a thread class that never starts, and
``receive`` feeds the bytes to simple-websocket's own wsproto event handling (pings are
answered, close handshakes and the 1009 limit work as before). One greenlet per idle
socket instead of two, which is most of what an idle socket costs.

The opening handshake of a plain upgrade (no extension) is answered from
the WSGI environ the server already parsed; simple-websocket would rebuild the request
and parse it again with h11, about a tenth of a connect storm's CPU. Anything else (a
deflate offer, a malformed request) still goes through wsproto.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
from flask import Response
from simple_websocket import ConnectionClosed, Server
from simple_websocket.ws import Base
from wsproto.connection import Connection, ConnectionType
from wsproto.utilities import LocalProtocolError

#: RFC 6455's fixed GUID that Sec-WebSocket-Accept is derived with.
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class InlineReader:
    """Stands in for simple-websocket's reader thread: never started."""

    def __init__(self, target: Callable[[], None] | None = None, **_: Any) -> None:
        self.name = "herald-inline-reader"

    def start(self) -> None:
        """Nothing to start: ``receive`` reads in the caller's greenlet."""


def plain_upgrade_key(environ: dict[str, Any]) -> bytes | None:
    """The Sec-WebSocket-Key of a plain RFC 6455 upgrade (GET, version 13, Host, no
    extension offered); None for any other request.

    A subprotocol offer keeps an upgrade plain: Herald speaks no subprotocol, so the answer
    names none, which is what simple-websocket answers too (it is given none to choose)."""
    if (environ.get("REQUEST_METHOD") != "GET" or "HTTP_HOST" not in environ
            or environ.get("HTTP_SEC_WEBSOCKET_VERSION") != "13"
            or environ.get("HTTP_UPGRADE", "").lower() != "websocket"
            or "HTTP_SEC_WEBSOCKET_EXTENSIONS" in environ):
        return None
    tokens = environ.get("HTTP_CONNECTION", "").lower().split(",")
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY")
    if not key or "upgrade" not in (t.strip() for t in tokens):
        return None
    return str(key).encode("latin-1")


class HeraldServer(Server):  # type: ignore[misc]  # simple-websocket ships no types
    """simple-websocket's server side with the plain upgrade answered directly, and able to
    be taken over by ``detached.Detached`` once established."""

    detached: Any = None

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
        accept = base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())
        self.sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                          + b"\r\n\r\n")
        # wsproto's frame layer, open: no h11 handshake state kept (nothing to drop later)
        self.ws = Connection(ConnectionType.SERVER)
        self.connected = True


class TakenOver(Response):
    """The view's answer once its socket is done: the connection was taken over, so the
    WSGI server must not write a response of its own (gunicorn: stop the connection)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if self.mode == "gunicorn":
            raise StopIteration
        if self.mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []


def serve(environ: dict[str, Any], options: dict[str, Any],
          handler: Callable[[Any], None]) -> TakenOver:
    """Accept the WebSocket, run ``handler`` for its whole life, close it (flask-sock's
    glue, with ``HeraldServer``); returns what the WSGI server must be answered."""
    ws = HeraldServer(environ, **options)
    with contextlib.suppress(ConnectionClosed):
        handler(ws)
    if ws.detached is None:  # else the socket lives on, read from the event loop
        with contextlib.suppress(Exception):  # already closed, or the peer is gone
            ws.close()
    return TakenOver(ws.mode)


class PlainUpgrades:
    """WSGI middleware: a plain upgrade to ``path`` is served here, before Flask, which
    has nothing to add to a socket's life (request context, session, response) but its
    cost; anything else (another path, a deflate offer, a malformed upgrade) goes on to
    the app, whose route for ``path`` serves it the same way."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], path: str,
                 options: dict[str, Any], handler: Callable[[Any], None]) -> None:
        self.wsgi_app = wsgi_app
        self.path = path
        self.options = options
        self.handler = handler

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == self.path and plain_upgrade_key(environ) is not None:
            answer: Iterable[bytes] = serve(environ, self.options, self.handler)(
                environ, start_response)
            return answer
        return self.wsgi_app(environ, start_response)


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
