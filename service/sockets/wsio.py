"""The WSGI side of a WebSocket: accepting it before Flask, and answering the WSGI server
once the socket is done (or taken over by the event loop).

simple-websocket's own internals are touched only in ``service/delivery/wsock.py``; this
module relies on one behaviour of gunicorn's, pinned in
``tests/unit/test_internals.py``: a response whose iteration raises
``StopIteration`` ends the request without gunicorn writing anything (flask-sock relies on
it too), which is how a socket that outlives its request is let go.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from flask import Response
from simple_websocket import ConnectionClosed

from service.delivery.upgrade import plain_upgrade_key
from service.delivery.wsock import HeraldServer


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


#: Seconds a client refused by a draining frontend is told to wait (Retry-After).
DRAINING_RETRY_AFTER_S = 1


class RefuseWhileDraining:
    """WSGI middleware: while this frontend drains, an upgrade to ``path`` is answered
    ``503`` before the handshake instead of being accepted and closed with 1012.

    A proxy only counts a failed response: nginx's ``proxy_next_upstream http_503`` then
    retries the upgrade on another frontend (the client sees no failure) and its
    ``max_fails`` takes this one out of rotation, where a 101 followed by a close would
    have looked like a healthy frontend, and to ``least_conn`` the emptiest one. A client
    without a proxy sees a failed connect and reconnects with its backoff. Sockets
    already open are closed with 1012 by the drain itself, as before."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], path: str,
                 draining: Callable[[], bool]) -> None:
        self.wsgi_app = wsgi_app
        self.path = path
        self.draining = draining

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (environ.get("PATH_INFO") == self.path and self.draining()
                and environ.get("HTTP_UPGRADE", "").lower() == "websocket"):
            body = (b'{"error": "unavailable", "message": "this frontend is draining: '
                    b'connect to another one"}')
            start_response("503 SERVICE UNAVAILABLE", [
                ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                ("Retry-After", str(DRAINING_RETRY_AFTER_S))])
            return [body]
        return self.wsgi_app(environ, start_response)
