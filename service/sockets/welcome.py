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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import gevent
from gevent.event import AsyncResult
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from service.cluster.frontend import Frontend
from service.cluster.membership import REGISTRY_ACK_TIMEOUT_S
from service.core.auth import Grants, ResumeClaim, issue_resume_token, verify_resume_token
from service.core.envelope import Envelope, encode, event_frame, ws_text_frame
from service.core.errors import RateLimited
from service.delivery.conn import CLOSE_POLICY, CLOSE_REPLACED, Conn
from service.sockets.frames import Hello
from service.store import registry, replay

log = logging.getLogger(__name__)

class ResumeUnavailable(Exception):
    """The registry could not be reached to resume a session; the client should retry."""


class TooManyConnections(RateLimited):
    """The user already holds ``HERALD_MAX_USER_CONNECTIONS`` sockets (close 1008)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"too many connections for this user (HERALD_MAX_USER_CONNECTIONS="
                         f"{limit}; 0 turns the limit off)")

    @property
    def close_reason(self) -> str:
        return self.message[:MAX_CLOSE_REASON]


#: Bytes a WebSocket close reason may hold (125 for the payload, less 2 for the code).
MAX_CLOSE_REASON = 123
#: A streaming replay waits for the socket's outbox to drain below this share of
#: ``HERALD_OUTBOX_BYTES`` before it queues more; it waits at most ``REPLAY_DRAIN_WAIT_S``
#: (then the outbox limit decides: a client that does not read is closed with 1013).
REPLAY_LOW_WATER = 0.5
REPLAY_DRAIN_WAIT_S = 10.0
REPLAY_DRAIN_POLL_S = 0.005


@dataclass
class Opened:
    conn: Conn
    welcome: dict[str, Any]
    replay: replay.Plan | None = None
    engine: Engine | None = None  # where the replay's slices are read from


def _take_over(node: Frontend, cid: str) -> None:
    """Close any older socket holding this connection id, here or elsewhere."""
    old = node.hub.conns.get(cid)
    if old is not None:
        old.moved = True
        old.close(CLOSE_REPLACED, "resumed on another socket")
        node.hub.remove(old)
    else:
        node.evict(cid)


def _check_resume_limit(node: Frontend, user_id: str, cid: str) -> None:
    """A resume counts against the user's limit too (not the socket it replaces)."""
    limit = node.settings.max_user_connections
    if not limit:
        return
    try:
        held = registry.count_user_connections(node.engine, user_id, besides=cid)
    except SQLAlchemyError:
        return  # Postgres is away: let the client in, its rows catch up later
    if held >= limit:
        raise TooManyConnections(limit)


def _register(node: Frontend, conn: Conn) -> None:
    """Write a fresh connection's row (awaited, bounded) within the user's limit."""
    limit = node.settings.max_user_connections
    if limit:
        done = node.registry.submit("open", id=conn.id, frontend_id=node.id,
                                    user_id=conn.user_id, limit=limit)
    else:  # no limit: nothing to count, no per-user lock
        done = node.registry.submit("connect", id=conn.id, frontend_id=node.id,
                                    user_id=conn.user_id)
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
            conn.close(CLOSE_POLICY, exc.close_reason)
    return check


def _resume(node: Frontend, grants: Grants, frame: Hello
            ) -> tuple[str, list[tuple[str, str, dict[str, Any]]], datetime, int] | None:
    """Re-attach the connection a valid, unused resume token names; None: start fresh.

    Raises ResumeUnavailable when the registry cannot be reached."""
    claim = verify_resume_token(node.settings.secret_key, frame.resume, grants.user_id)
    if claim is None:
        return None
    _check_resume_limit(node, grants.user_id, claim.connection_id)
    # the row is ours from the reattach on, before the hub holds the socket: a reconcile
    # meanwhile must not detach it (open_session lets go once the hub has it)
    node.resuming.add(claim.connection_id)
    try:
        reattached = registry.reattach(node.engine, claim.connection_id, grants.user_id,
                                       node.id, claim.gen)
        if reattached is None:  # unknown, pruned, or this token was used already
            node.resuming.discard(claim.connection_id)
            return None
        # only now: a spent or forged-looking token must not close the socket that holds it
        _take_over(node, claim.connection_id)
    except SQLAlchemyError as exc:
        node.resuming.discard(claim.connection_id)
        # starting fresh would silently drop the groups and what they missed: refuse,
        # and the client tries the resume again (1013: try again later)
        log.warning("resume of %s failed (%s)", claim.connection_id, exc.__class__.__name__)
        raise ResumeUnavailable from exc
    except BaseException:
        node.resuming.discard(claim.connection_id)
        raise
    return (claim.connection_id, *reattached)


def open_session(node: Frontend, grants: Grants, frame: Hello, ws: Any,
                 make_conn: Callable[[str, str], Conn] | None = None,
                 join: Iterable[tuple[str, str]] = ()) -> Opened:
    """Register the connection (new or resumed) and plan welcome and replay.

    ``make_conn(id, user)``: another kind of connection (SSE's); ``join``: groups to join
    (and record) before the welcome, whose missed events the replay includes too.

    Raises TooManyConnections when the user is at its limit, ResumeUnavailable when a
    resume cannot reach the registry."""
    settings = node.settings
    resumed = _resume(node, grants, frame)
    cid, restored, session_start, gen = (resumed if resumed is not None
                                         else (uuid.uuid4().hex, [], None, 0))
    groups = []
    try:
        conn = (make_conn(cid, grants.user_id) if make_conn is not None else
                Conn(cid, grants.user_id, ws, settings.outbox_limit,
                     on_overflow=node.count_overflow, meter=node.meter,
                     outbox_bytes=settings.outbox_bytes, write_delay=node.write_delay))
        conn.gen = gen
        conn.hold()
        node.hub.add(conn)
        if resumed is None:
            _register(node, conn)
        for scope, group, meta in restored:
            if grants.may_join(scope, group):  # the new token decides, not the old one
                node.join(conn, (scope, group), record=False, wait=False, meta=meta)
                groups.append({"scope": scope, "group": group})
            else:
                node.registry.submit("leave", connection_id=conn.id, scope=scope, group=group)
        for key in join:
            node.join(conn, key, wait=False)  # recorded, awaited; bound with the routes below
            groups.append({"scope": key[0], "group": key[1]})
        if resumed is not None:  # reattached outside the writer: tell the webhooks' checks
            node.registry.committed("resume", id=cid, user_id=conn.user_id,
                                    groups=[(g["scope"], g["group"]) for g in groups])
    finally:
        node.resuming.discard(cid)  # the hub holds it and its groups now
    # bound since hub.add and the joins (alongside the registry write): from the welcome
    # on, whatever is published to this socket, its user or its groups reaches it
    node.await_routes(node.hub.routes_of(conn))
    token = issue_resume_token(settings.secret_key, ResumeClaim(conn.id, conn.user_id, gen))
    opened = Opened(conn, {"op": "welcome", "ref": frame.ref, "connection_id": conn.id,
                           "frontend": node.id, "resume": token,
                           "heartbeat": settings.heartbeat_s, "resumed": resumed is not None,
                           "groups": groups, "replayed": 0, "gap": False,
                           "log_id": node.log_head.current(node.engine),
                           "epoch": node.epoch.current(node.engine), "recovered": False},
                    engine=node.engine)
    if frame.last_id is not None:
        quota = node.quotas.replay
        # the replay may not exceed the hello's limit nor what is left of the user's quota
        allowed = min(settings.replay_limit, quota.available(conn.user_id))
        plan = replay.plan(node.engine, user_id=conn.user_id, connection_id=conn.id,
                           groups=[(g["scope"], g["group"]) for g in groups],
                           last_id=frame.last_id, session_start=session_start,
                           limit=allowed)
        quota.spend(conn.user_id, len(plan.ids))
        opened.replay = plan
        opened.welcome.update(replayed=len(plan.ids), gap=plan.gap,
                              recovered=recovered(opened.welcome, frame, plan))
        node.count_replayed(len(plan.ids))
    return opened


def recovered(welcome: dict[str, Any], frame: Hello, plan: replay.Plan) -> bool:
    """Whether every durable message this client missed since ``last_id`` is replayed:
    its session was resumed (a fresh one restores no groups, so what they got is not
    replayed), nothing was cut (``gap``: retention or ``HERALD_REPLAY_LIMIT``), and its
    ``last_id`` belongs to this log (``hello.epoch``, when given, is the server's)."""
    epoch = welcome["epoch"]
    return (bool(welcome["resumed"]) and not plan.gap and bool(epoch)
            and (frame.epoch is None or frame.epoch == epoch))


def send_opened(opened: Opened) -> None:
    """Welcome first, then the replay, then what arrived live while it was prepared.

    The replay streams: a slice of rows is read and queued at a time, and each frame waits
    until the socket's outbox has drained below ``REPLAY_LOW_WATER`` of its byte limit, so
    a replay never holds more than one slice and about one outbox of memory."""
    conn = opened.conn
    conn.push(ws_text_frame(encode(opened.welcome)))
    if opened.replay is not None and opened.engine is not None:
        reading = True  # False once the client stopped reading: the outbox bound decides
        for batch in opened.replay.batches(opened.engine):
            reading = send_events(conn, batch, reading)
            if conn.closed or conn.close_code is not None:
                return
    conn.release()


def send_events(conn: Conn, envs: Iterable[Envelope], reading: bool = True) -> bool:
    """Queue event frames, each once the outbox has drained below ``REPLAY_LOW_WATER``
    (bounded wait); returns whether the client still reads (False: stop waiting)."""
    low_water = int(conn.byte_limit * REPLAY_LOW_WATER)
    for env in envs:
        if conn.closed or conn.close_code is not None:
            return reading
        if reading:
            reading = _wait_drained(conn, low_water)
        conn.push(ws_text_frame(event_frame(env)))
    return reading


def _wait_drained(conn: Conn, low_water: int) -> bool:
    """Wait (bounded) until the outbox is below ``low_water``; False if it never got there."""
    deadline = time.monotonic() + REPLAY_DRAIN_WAIT_S
    while conn.queued_bytes > low_water and not conn.closed:
        if time.monotonic() >= deadline:
            return False
        gevent.sleep(REPLAY_DRAIN_POLL_S)
    return True
