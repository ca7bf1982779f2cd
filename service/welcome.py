"""Opening a session after `hello`: a new connection, or the resume of an earlier one.

A resume token names a connection id. Re-attaching that id moves its registry row (and
so its memberships) to this frontend; an older socket still holding the id, here or on
another frontend, is closed with 4409 and leaves the registry alone. The welcome frame is
followed by the replay of what the client missed, then by whatever arrived live
meanwhile (the connection is held until then), so replayed messages come first.

A fresh session costs one database write and no read: its row goes through the batching
registry writer, which also enforces ``HERALD_MAX_USER_CONNECTIONS`` in the same
statement, and ``welcome.log_id`` comes from the frontend's in-memory ``LogHead``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from gevent.event import AsyncResult
from sqlalchemy.exc import SQLAlchemyError

from . import registry, replay
from .auth import ALGORITHM, Grants, plain_hs256_claims, sign_hs256
from .envelope import encode, event_frame, ws_text_frame
from .errors import RateLimited
from .frames import Hello
from .frontend import REGISTRY_ACK_TIMEOUT_S, Frontend
from .hub import CLOSE_POLICY, CLOSE_REPLACED, Conn

log = logging.getLogger(__name__)

#: How long a resume token stays valid (a client must come back within it).
RESUME_TOKEN_TTL_S = 24 * 3600


class ResumeUnavailable(Exception):
    """The registry could not be reached to resume a session; the client should retry."""


class TooManyConnections(RateLimited):
    """The user already holds ``HERALD_MAX_USER_CONNECTIONS`` sockets (close 1008)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"too many connections for this user (max {limit})")


@dataclass
class Opened:
    conn: Conn
    welcome: dict[str, Any]
    replay_frames: list[bytes] = field(default_factory=list)


def resume_token(secret: str, conn: Conn) -> str:
    return sign_hs256(secret, {"cid": conn.id, "sub": conn.user_id, "typ": "resume",
                               "exp": int(time.time()) + RESUME_TOKEN_TTL_S})


def resumable_id(secret: str, token: str | None, user_id: str) -> str | None:
    """The connection id a resume token names, if it is valid and the same user's."""
    if not token:
        return None
    claims = plain_hs256_claims(secret, token)
    if claims is None:
        try:
            claims = jwt.decode(token, secret, algorithms=[ALGORITHM],
                                options={"require": ["exp"]})
        except jwt.InvalidTokenError:
            return None
    if claims.get("typ") != "resume" or claims.get("sub") != user_id:
        return None
    cid = claims.get("cid")
    return cid if isinstance(cid, str) else None


def _take_over(node: Frontend, cid: str) -> None:
    """Close any older socket holding this connection id, here or elsewhere."""
    old = node.hub.conns.get(cid)
    if old is not None:
        old.moved = True
        old.close(CLOSE_REPLACED, "resumed on another socket")
        node.hub.remove(old)
    else:
        node.kick(cid)


def _check_resume_limit(node: Frontend, user_id: str, cid: str) -> None:
    """A resume counts against the user's limit too (not the socket it replaces)."""
    limit = node.settings.max_user_connections
    try:
        held = registry.count_user_connections(node.engine, user_id, besides=cid)
    except SQLAlchemyError:
        return  # Postgres is away: let the client in, its rows catch up later
    if held >= limit:
        raise TooManyConnections(limit)


def _register(node: Frontend, conn: Conn) -> None:
    """Write a fresh connection's row (awaited, bounded) within the user's limit."""
    limit = node.settings.max_user_connections
    done = node.registry.submit("open", id=conn.id, frontend_id=node.id,
                                user_id=conn.user_id, limit=limit)
    try:
        landed = registry.settled(done, REGISTRY_ACK_TIMEOUT_S)
    except registry.Refused:
        node.hub.remove(conn)
        raise TooManyConnections(limit) from None
    if not landed:  # Postgres is away: let the client in; the row decides when it lands
        done.rawlink(_close_when_refused(conn, limit))


def _close_when_refused(conn: Conn, limit: int) -> Callable[[AsyncResult], None]:
    def check(done: AsyncResult) -> None:
        if isinstance(done.exception, registry.Refused):
            exc = TooManyConnections(limit)
            conn.send({"op": "error", "code": exc.code, "message": exc.message})
            conn.close(CLOSE_POLICY, "too many connections")
    return check


def open_session(node: Frontend, grants: Grants, frame: Hello, ws: Any) -> Opened:
    """Register the connection (new or resumed) and build welcome and replay.

    Raises TooManyConnections when the user is at its limit, ResumeUnavailable when a
    resume cannot reach the registry."""
    secret = node.settings.secret_key
    reattached = None
    cid = resumable_id(secret, frame.resume, grants.user_id)
    if cid is not None:
        _check_resume_limit(node, grants.user_id, cid)
        _take_over(node, cid)
        try:
            reattached = registry.reattach(node.engine, cid, grants.user_id, node.id)
        except SQLAlchemyError as exc:
            # starting fresh would silently drop the groups and what they missed: refuse,
            # and the client tries the resume again (1013: try again later)
            log.warning("resume of %s failed (%s)", cid, exc.__class__.__name__)
            raise ResumeUnavailable from exc
    resumed = reattached is not None
    restored, session_start = reattached if reattached is not None else ([], None)
    conn = Conn(cid if resumed and cid else uuid.uuid4().hex, grants.user_id, ws,
                node.settings.outbox_limit, on_overflow=node.count_overflow, meter=node.meter)
    conn.hold()
    node.hub.add(conn)
    if not resumed:
        _register(node, conn)
    groups = []
    for scope, group in restored:
        if grants.may_join(scope, group):  # the new token decides, not the old one
            node.join(conn, (scope, group), record=False)
            groups.append({"scope": scope, "group": group})
        else:
            node.registry.submit("leave", connection_id=conn.id, scope=scope, group=group)
    opened = Opened(conn, {"op": "welcome", "ref": frame.ref, "connection_id": conn.id,
                           "frontend": node.id, "resume": resume_token(secret, conn),
                           "heartbeat": node.settings.heartbeat_s, "resumed": resumed,
                           "groups": groups, "replayed": 0, "gap": False,
                           "log_id": node.log_head.current(node.engine)})
    if frame.last_id is not None:
        missed = replay.missed(node.engine, user_id=conn.user_id, connection_id=conn.id,
                               groups=[(g["scope"], g["group"]) for g in groups],
                               last_id=frame.last_id, session_start=session_start)
        opened.replay_frames = [ws_text_frame(event_frame(env)) for env in missed.envelopes]
        opened.welcome.update(replayed=len(missed.envelopes), gap=missed.gap)
        node.count_replayed(len(missed.envelopes))
    return opened


def send_opened(opened: Opened) -> None:
    """Welcome first, then the replay, then what arrived live while it was prepared."""
    conn = opened.conn
    conn.push(ws_text_frame(encode(opened.welcome)))
    for frame in opened.replay_frames:
        conn.push(frame)
    conn.release()
