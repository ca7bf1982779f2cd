"""Reading a WebSocket in the handler greenlet, without simple-websocket's reader thread.

flask-sock's handler greenlet has to stay alive for the socket's whole life anyway, so it
does the reading itself: simple-websocket is given a thread class that never starts, and
``receive`` feeds the bytes to simple-websocket's own wsproto event handling (pings are
answered, close handshakes and the 1009 limit work as before). One greenlet per idle
socket instead of two, which is most of what an idle socket costs.
"""

from __future__ import annotations

from collections.abc import Callable
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
