"""The WebSocket endpoint ``/ws``: hello, then a loop of frames dispatched by op.

Each socket is one ``Session``: origin and drain checks, the hello deadline, welcome, then
its frames are dispatched by op (``ops.HANDLERS``) until close. Replies and events both
leave through the socket's ``Conn`` outbox (one writer per socket).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from service.cluster.frontend import Frontend
from service.core.auth import Grants, verify_token
from service.core.envelope import encode
from service.core.errors import (
    BadRequest,
    HeraldError,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from service.core.limits import TokenBucket
from service.delivery.conn import (
    CLOSE_BEHIND,
    CLOSE_DRAINING,
    CLOSE_POLICY,
    CLOSE_UNAUTHORIZED,
    Conn,
)
from service.delivery.wsock import drop_handshake, linger, peer_close_code, receive
from service.sockets import frames
from service.sockets.detached import Detached, can_detach
from service.sockets.ops import HANDLERS, error_frame
from service.sockets.welcome import ResumeUnavailable, TooManyConnections, open_session, send_opened
from service.sockets.wsio import PlainUpgrades, RefuseWhileDraining

log = logging.getLogger(__name__)

#: How long an established socket waits for its writer to go idle before it is detached.
DETACH_WAIT_S = 1.0
#: Close codes a client sends when it means to go (no resume expected).
CLIENT_GOODBYES = (1000, 1001)

def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Browser Origin check. No Origin header means a non-browser client."""
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    if not allowed:  # development default: local pages only
        host = origin.split("://", 1)[-1].split(":", 1)[0]
        return host in {"localhost", "127.0.0.1", "[::1]"}
    return False


class Session:
    """One client socket from `hello` to close."""

    __slots__ = ("bucket", "conn", "grants", "node", "on_refresh", "ws")

    def __init__(self, node: Frontend, ws: Any) -> None:
        self.node = node
        self.ws = ws
        self.conn: Conn | None = None
        self.grants: Grants | None = None
        self.bucket: TokenBucket | None = None
        #: Called after a refresh swapped the grants (the detached reader re-arms expiry).
        self.on_refresh: Callable[[], None] | None = None

    # --- life cycle ----------------------------------------------------------------------

    def run(self) -> None:
        detached = False
        try:
            detached = self._run()
        finally:
            if not detached:
                linger(self.ws)

    def _run(self) -> bool:
        """Serve the socket; True when it was handed to a ``Detached`` reader."""
        origin = self.ws.environ.get("HTTP_ORIGIN")
        if not origin_allowed(origin, self.node.settings.allowed_origins):
            self.ws.close(reason=CLOSE_POLICY, message="origin not allowed")
            return False
        if self.node.draining:
            self.ws.close(reason=CLOSE_DRAINING, message="draining; retry_ms=0")
            return False
        if not self._hello():
            return False
        assert self.conn is not None
        # a writer blocked on the request's socket object (a slow client still taking its
        # welcome and replay) would die with it when the request ends: such a socket stays
        # on this greenlet, which serves it as well, only at a greenlet's cost
        if can_detach(self.ws) and self.conn.writer_idle(DETACH_WAIT_S):
            # this greenlet (and the request it carries) can go: the event loop reads on
            Detached(self).start()
            return True
        try:
            self._loop()
        finally:
            self._cleanup()
        return False

    def handle(self, raw: str | bytes) -> None:
        """One client frame of an established session (the detached reader's entry)."""
        self._handle(raw)

    def cleanup(self) -> None:
        """Forget the socket: index, registry, presence (the detached reader's exit)."""
        self._cleanup()

    def _send_early(self, obj: dict[str, Any]) -> None:
        # before hello there is no writer yet, so this greenlet is the only one writing
        self.ws.send(encode(obj).decode())

    def _hello(self) -> bool:
        """Wait for a valid hello: within ``HERALD_HELLO_TIMEOUT`` (a deadline, whatever
        arrives meanwhile) and ``HERALD_HELLO_MAX_FRAMES`` frames, else close 4401."""
        settings = self.node.settings
        deadline = time.monotonic() + settings.hello_timeout_s
        for _ in range(settings.hello_max_frames):
            raw = receive(self.ws, max(0.0, deadline - time.monotonic()))
            if raw is None:
                self.ws.close(reason=CLOSE_UNAUTHORIZED,
                              message=f"no hello in time (HERALD_HELLO_TIMEOUT="
                                      f"{settings.hello_timeout_s:g} s)")
                return False
            self.node.meter.frames_in += 1
            try:
                frame = frames.parse(raw)
                if not isinstance(frame, frames.Hello):
                    raise Unauthorized("the first frame must be hello")
                self.grants = verify_token(settings.secret_key, frame.token)
            except Unauthorized as exc:
                self._send_early(error_frame(exc, frames.peek_ref(raw)))
                self.ws.close(reason=CLOSE_UNAUTHORIZED, message=exc.message[:100])
                return False
            except HeraldError as exc:
                self._send_early(error_frame(exc, frames.peek_ref(raw)))
                continue
            return self._welcome(frame)
        self.ws.close(reason=CLOSE_UNAUTHORIZED,
                      message=f"no valid hello in {settings.hello_max_frames} frames "
                              "(HERALD_HELLO_MAX_FRAMES)")
        return False

    def _welcome(self, frame: frames.Hello) -> bool:
        assert self.grants is not None
        node = self.node
        settings = node.settings
        self.bucket = TokenBucket(settings.rate_limit, settings.rate_burst)
        try:
            opened = open_session(node, self.grants, frame, self.ws)
        except TooManyConnections as exc:
            self._send_early(error_frame(exc, frame.ref))
            self.ws.close(reason=CLOSE_POLICY, message=exc.close_reason)
            return False
        except ResumeUnavailable:
            self._send_early(error_frame(Unavailable("cannot resume now; retry"), frame.ref))
            self.ws.close(reason=CLOSE_BEHIND, message="resume unavailable, retry")
            return False
        self.conn = opened.conn
        send_opened(opened)
        drop_handshake(self.ws)
        return True

    def _resumable(self) -> bool:
        """Keep the registry row for a resume unless the goodbye was deliberate."""
        assert self.conn is not None
        server_code = self.conn.close_code
        if server_code is not None:
            return server_code != CLOSE_POLICY
        return peer_close_code(self.ws) not in CLIENT_GOODBYES

    def _loop(self) -> None:
        assert self.conn is not None and self.grants is not None
        conn = self.conn
        while not conn.closed:
            remaining = self.grants.expires_at - time.time()
            if remaining <= 0:
                conn.close(CLOSE_UNAUTHORIZED, "token expired")
                return
            try:
                raw = receive(self.ws, remaining)
            except ConnectionClosed:
                return
            if raw is None:
                continue  # timed out: loop re-checks expiry
            self._handle(raw)

    def _handle(self, raw: str | bytes) -> None:
        assert self.conn is not None and self.bucket is not None
        self.node.meter.frames_in += 1
        ref = None
        if not self.bucket.take():
            settings = self.node.settings
            if self.bucket.abused:
                self.conn.close(CLOSE_POLICY, "rate limit abused (HERALD_RATE_LIMIT)")
                return
            self.conn.send(error_frame(RateLimited(
                f"slow down: over HERALD_RATE_LIMIT={settings.rate_limit:g} frames/s "
                f"(HERALD_RATE_BURST={settings.rate_burst})"), frames.peek_ref(raw)))
            return
        try:
            frame = frames.parse(raw)
            ref = frame.ref
            handler = HANDLERS.get(frame.op)
            if handler is None:  # hello again: not allowed mid-session
                raise BadRequest(f"op {frame.op!r} is not valid after hello")
            reply = handler(self, frame)
        except HeraldError as exc:
            reply = error_frame(exc, ref if ref is not None else frames.peek_ref(raw))
        except Exception:  # one frame must never kill the socket or process
            log.exception("op failed")
            reply = error_frame(HeraldError("internal error"), ref)
        if reply is not None:
            self.conn.send(reply)

    def _cleanup(self) -> None:
        conn = self.conn
        if conn is None:
            return
        node = self.node
        if conn.moved:  # resumed on another socket, which owns the row and groups now
            node.hub.remove(conn)
            conn.stop()
            return
        groups = node.hub.remove(conn)
        conn.stop()
        # user and groups ride along for the webhooks' checks (registry_sql ignores them)
        node.registry.submit("detach" if self._resumable() else "disconnect", id=conn.id,
                             frontend_id=node.id, user_id=conn.user_id, groups=list(groups))
        for key in groups:
            node.publish_presence(key, [], [node.member_info(conn, key)])


def init_app(app: Flask, sock: Sock) -> None:
    """Serve `/ws` through flask-sock, with plain upgrades answered in front of Flask.

    A plain RFC 6455 upgrade (no extension or subprotocol offered: every upgrade while
    permessage-deflate is off) is served by ``wsio.PlainUpgrades`` straight from WSGI with
    the same simple-websocket ``Server`` flask-sock would build, minus Flask's request
    handling and wsproto's h11 re-parse (about 18% of a connect's CPU). Anything else,
    such as a deflate offer when ``HERALD_WS_DEFLATE`` is on, reaches flask-sock's route."""
    options = app.config["SOCK_SERVER_OPTIONS"]

    def handle(ws: Any) -> None:
        Session(app.extensions["herald"], ws).run()

    sock.route("/ws")(handle)
    app.wsgi_app = RefuseWhileDraining(  # type: ignore[method-assign]
        PlainUpgrades(app.wsgi_app, "/ws", options, handle), "/ws",
        lambda: bool(app.extensions["herald"].draining))
