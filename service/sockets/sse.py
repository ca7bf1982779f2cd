"""``GET /sse``: the events of a session as ``text/event-stream``, for clients that cannot
keep a WebSocket (proxies that refuse upgrades, server-side consumers, EventSource).

A stream is a session opened with its groups up front: the same ``open_session`` as a
hello (registry row, memberships, routing keys bound before the welcome), the same
replay plan for ``Last-Event-ID`` (or ``last_id``) as for ``hello.last_id``, and an
``SseConn`` in the hub, so delivery, outbox limits and ``members`` treat it as any socket.
Nothing about a stream lives only on its frontend: a resume is served from the log by
whichever frontend the client reaches next (no sticky sessions).

The response generator holds one greenlet per stream; it yields what the connection's
writer hands it, and a comment line after every ``HERALD_HEARTBEAT`` of silence (which
is also how a vanished client is noticed: the write fails).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import gevent
from flask import Blueprint, Flask, Response, current_app, request
from sqlalchemy.exc import SQLAlchemyError

from service.cluster.frontend import Frontend
from service.core.auth import Grants, verify_token
from service.core.envelope import DEFAULT_SCOPE, encode, valid_name
from service.core.errors import BadRequest, Forbidden, Unauthorized, Unavailable
from service.delivery.conn import CLOSE_UNAUTHORIZED
from service.delivery.sse import Pipe, SseConn, SseFormat, sse_event
from service.sockets.frames import EPOCH_MAX, Hello
from service.sockets.welcome import Opened, ResumeUnavailable, open_session, send_events
from service.sockets.ws import origin_allowed

sse = Blueprint("sse", __name__)

#: How long EventSource waits before reconnecting after a stream ends (its ``retry:``).
SSE_RETRY_MS = 1000
#: Largest log id a ``Last-Event-ID`` may name (Postgres bigint).
MAX_LOG_ID = 2**63 - 1
#: Most characters of ``Last-Event-ID``/``last_id`` and of ``groups`` read at all.
MAX_ID_CHARS = 20
MAX_GROUPS_CHARS = 64 * 1024


def _node() -> Frontend:
    return current_app.extensions["herald"]  # type: ignore[no-any-return]


def _token() -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    token = request.args.get("token", "")
    if not token:
        raise Unauthorized("missing client token (Authorization: Bearer, or ?token=)")
    return token


def _groups(raw: str, grants: Grants, limit: int) -> list[tuple[str, str]]:
    """``scope/group,…`` (a bare ``group`` is in the default scope), each grant-checked."""
    if len(raw) > MAX_GROUPS_CHARS:
        raise BadRequest(f"groups is longer than {MAX_GROUPS_CHARS} characters")
    keys: list[tuple[str, str]] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        scope, _, group = item.rpartition("/") if "/" in item else (DEFAULT_SCOPE, "", item)
        if not (valid_name(scope) and valid_name(group)):
            raise BadRequest(f"groups: {item[:140]!r} is not <scope>/<group> (names of "
                             "1-128 characters without '/', '@' or whitespace)")
        if (scope, group) not in keys:
            keys.append((scope, group))
    if len(keys) > limit:
        raise BadRequest(f"too many groups: {len(keys)} (HERALD_MAX_GROUPS={limit} per "
                         "connection)")
    for scope, group in keys:
        if not grants.may_join(scope, group):
            raise Forbidden(f"not allowed to join {scope}/{group}")
    return keys


def _last_id() -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_id")
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_ID_CHARS or not raw.isdigit() or int(raw) > MAX_LOG_ID:
        raise BadRequest(f"Last-Event-ID/last_id must be a log id (0 to {MAX_LOG_ID})")
    return int(raw)


def _dropper(environ: dict[str, Any]) -> Any:
    """Cut the client's socket (a close that a stuck reader never let through)."""
    sock = environ.get("gunicorn.socket")

    def drop() -> None:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    return drop


class Stream:
    """One SSE response: feeds welcome and replay, yields events, cleans up at the end."""

    def __init__(self, node: Frontend, opened: Opened, pipe: Pipe, grants: Grants,
                 resume_from: int | None) -> None:
        self.node, self.opened, self.pipe, self.grants = node, opened, pipe, grants
        assert isinstance(opened.conn, SseConn)
        self.conn: SseConn = opened.conn
        # the welcome's id is where a reconnect resumes from before any durable event came:
        # the client's own resume point, else the log head at the welcome
        self.welcome_id = resume_from if resume_from is not None else opened.welcome["log_id"]
        self._done = False

    def _feed(self) -> None:
        """Welcome, the replay, then what arrived live meanwhile (``send_opened``'s order)."""
        conn, opened = self.conn, self.opened
        conn.push_sse(sse_event(encode(opened.welcome), self.welcome_id))
        if opened.replay is not None and opened.engine is not None:
            reading = True
            for batch in opened.replay.batches(opened.engine):
                reading = send_events(conn, batch, reading)
                if conn.closed or conn.close_code is not None:
                    return
        conn.release()

    def __iter__(self) -> Iterator[bytes]:
        conn, pipe, heartbeat = self.conn, self.pipe, self.node.settings.heartbeat_s
        feeder = gevent.spawn(self._feed)
        try:
            yield f"retry: {SSE_RETRY_MS}\n\n".encode()
            while True:
                timeout = heartbeat
                if conn.close_code is None:
                    remaining = self.grants.expires_at - time.time()
                    if remaining <= 0:
                        conn.close(CLOSE_UNAUTHORIZED, "token expired")
                    timeout = min(heartbeat, max(remaining, 0.0))
                chunk = pipe.get(timeout)
                if chunk is None:
                    yield b": ping\n\n"
                elif not chunk:
                    return
                else:
                    yield chunk
        finally:
            feeder.kill(block=False)
            self.close()

    def close(self) -> None:
        """Forget the stream: index, registry rows (no resume: the log serves it),
        presence. Idempotent (the generator's end and the response's close both call it)."""
        if self._done:
            return
        self._done = True
        node, conn = self.node, self.conn
        self.pipe.end()
        groups = node.hub.remove(conn)
        conn.stop()
        if conn.moved:
            return
        node.registry.submit("disconnect", id=conn.id, frontend_id=node.id,
                             user_id=conn.user_id, groups=list(groups))
        info = node.member_info(conn)
        for key in groups:
            node.publish_presence(key, [], [info])


@sse.get("/sse")
def stream() -> Response:
    """Open a stream; every refusal is a JSON error before any event is sent."""
    node = _node()
    settings = node.settings
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, settings.allowed_origins):
        raise Forbidden("origin not allowed (HERALD_ALLOWED_ORIGINS)")
    if node.draining:
        raise Unavailable("this frontend is draining; retry on another")
    grants = verify_token(settings.secret_key, _token())
    keys = _groups(request.args.get("groups", ""), grants, settings.max_groups)
    last_id = _last_id()
    epoch = request.args.get("epoch") or None
    pipe, fmt = Pipe(), node_format(current_app)
    made: list[SseConn] = []

    def make_conn(cid: str, user_id: str) -> SseConn:
        made.append(SseConn(cid, user_id, pipe, settings.outbox_limit, fmt,
                            drop=_dropper(request.environ), on_overflow=node.count_overflow,
                            meter=node.meter, outbox_bytes=settings.outbox_bytes))
        return made[-1]

    hello = Hello(op="hello", token="-", last_id=last_id,
                  epoch=epoch[:EPOCH_MAX] if epoch else None)
    try:
        opened = open_session(node, grants, hello, pipe, make_conn=make_conn, join=keys)
    except (SQLAlchemyError, ResumeUnavailable):  # no resume token: only the registry
        for conn in made:  # a membership failed to land: undo the rest, as a disconnect
            Stream(node, Opened(conn, {"log_id": None}), pipe, grants, None).close()
        raise Unavailable("could not record the connection; retry") from None
    opened.welcome.pop("resume", None)  # a stream resumes by Last-Event-ID, not a token
    if last_id is not None:
        opened.welcome["recovered"] = stream_recovered(opened.welcome, epoch)
    opened.welcome.pop("ref", None)
    opened.welcome["transport"] = "sse"
    body = Stream(node, opened, pipe, grants, last_id)
    response = Response(iter(body), mimetype="text/event-stream")
    response.call_on_close(body.close)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


def stream_recovered(welcome: dict[str, Any], epoch: str | None) -> bool:
    """A stream's ``recovered``: it is never a resumed session (no resume token), but it
    names its groups up front and the replay after ``Last-Event-ID`` covers them and its
    user, as a resume's restored groups: recovered unless cut (``gap``) or another epoch.
    (What went to the previous stream's connection id is not replayed: every stream is a
    new connection.)"""
    current = welcome["epoch"]
    return (not welcome["gap"] and bool(current)
            and (epoch is None or epoch[:EPOCH_MAX] == current))


def node_format(app: Flask) -> SseFormat:
    """The app's one ``SseFormat`` (shared by its streams, so a fan-out converts once)."""
    fmt = app.extensions.get("herald.sse_format")
    if fmt is None:
        fmt = app.extensions["herald.sse_format"] = SseFormat()
    return fmt


def init_app(app: Flask) -> None:
    app.extensions["herald.sse_format"] = SseFormat()
    app.register_blueprint(sse)
