"""The op handlers of an established session: one function per op, a dict from op to
handler (``HANDLERS``), and the reply frames they build.

A handler gets the ``Session`` and its parsed frame and returns the reply (or None when it
sent its replies itself); it raises ``HeraldError`` subclasses, which the session turns
into `error` frames while the socket stays open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from service.core import presence
from service.core.auth import verify_token
from service.core.envelope import Target, event_frame
from service.core.errors import BadRequest, Forbidden, HeraldError, RateLimited, Unavailable
from service.sockets import frames
from service.sockets.welcome import send_events
from service.store import history, registry

if TYPE_CHECKING:
    from service.sockets.ws import Session

Reply = dict[str, Any] | None
log = logging.getLogger(__name__)



def op_ping(s: Session, f: frames.Frame) -> Reply:
    return {"op": "pong", "ref": f.ref}

def op_refresh(s: Session, f: frames.Frame) -> Reply:
    """Swap in another client token of the same user: the session now expires when it
    does (sooner or later), and whatever it no longer grants is left."""
    assert isinstance(f, frames.Refresh) and s.grants and s.conn
    grants = verify_token(s.node.settings.secret_key, f.token)
    if grants.user_id != s.grants.user_id:
        raise Forbidden("a refreshed token must be for the same user")
    s.grants = grants
    if s.on_refresh is not None:
        s.on_refresh()
    conn, left = s.conn, []
    for key in sorted(conn.groups):
        if not grants.may_join(*key):
            s.node.leave(conn, key)
            left.append({"scope": key[0], "group": key[1]})
    for key in sorted(conn.monitors):
        if not grants.may_join(*key):
            s.node.hub.monitor(conn, key, False)
    return ack(f, expires_at=grants.expires_at, left=left)

def op_join(s: Session, f: frames.Frame) -> Reply:
    assert isinstance(f, frames.Join) and s.conn and s.grants
    if not s.grants.may_join(f.scope, f.group):
        raise Forbidden(f"not allowed to join {f.scope}/{f.group}")
    limit = s.node.settings.max_groups
    if (f.scope, f.group) not in s.conn.groups and len(s.conn.groups) >= limit:
        raise Forbidden(f"group limit reached (HERALD_MAX_GROUPS={limit} per connection)")
    if not f.rewind:
        _join(s, f)
        return ack(f)
    _query_quota(s, "history/rewind")
    # the log's head before the join: what is logged after it, the socket also holds live
    head = s.node.log_head.current(s.node.engine)
    s.conn.hold()  # live events of the group wait until the ack and the rewound ones
    try:
        _join(s, f)
        try:
            # read after the route is bound: an event published meanwhile is held and
            # may come twice (same id; clients drop repeats, as after a replay)
            events = history.rewind(s.node.engine, f.scope, f.group, f.rewind, since=head)
        except SQLAlchemyError:
            events = []
            log.warning("rewind of %s/%s failed: the log cannot be read", f.scope, f.group)
        s.conn.send(ack(f, rewound=len(events)))
        send_events(s.conn, events)
    finally:
        s.conn.release()
    return None

def _join(s: Session, f: frames.Join) -> None:
    assert s.conn is not None
    meta = (presence.check_meta(f.meta, s.node.settings.max_meta) if f.meta is not None
            else None)
    try:
        if meta is not None and (f.scope, f.group) in s.conn.groups:
            s.node.update_meta(s.conn, (f.scope, f.group), meta)  # a re-join with a meta
            return
        s.node.join(s.conn, (f.scope, f.group), meta=meta)
    except SQLAlchemyError:
        raise HeraldError("could not record the membership") from None

def op_update(s: Session, f: frames.Frame) -> Reply:
    """Change this connection's presence meta in a group; monitors get it in ``updates``."""
    assert isinstance(f, frames.Update) and s.conn
    meta = presence.check_meta(f.meta, s.node.settings.max_meta)
    try:
        changed = s.node.update_meta(s.conn, (f.scope, f.group), meta)
    except SQLAlchemyError:
        raise HeraldError("could not record the meta") from None
    if not changed:
        raise BadRequest(f"not a member of {f.scope}/{f.group}: join it first")
    return ack(f)

def op_leave(s: Session, f: frames.Frame) -> Reply:
    assert isinstance(f, frames.Leave) and s.conn
    s.node.leave(s.conn, (f.scope, f.group))
    return ack(f)

def op_publish(s: Session, f: frames.Frame) -> Reply:
    assert isinstance(f, frames.Publish) and s.conn and s.grants
    target = publish_target(f)
    if not s.grants.may_publish(target):
        raise Forbidden("not allowed to publish to this target")
    quota = s.node.quotas.durable
    if f.durable and not quota.take(s.conn.user_id):
        raise RateLimited(quota.refusal("durable publish"))
    msg_id = s.node.publish(target, f.event, f.data, durable=f.durable,
                               exclude=s.conn.id)
    return ack(f, id=msg_id) if f.durable else ack(f)

def op_members(s: Session, f: frames.Frame) -> Reply:
    """One page of a group's members (``HERALD_MEMBERS_LIMIT`` at most); ``next`` is
    the ``after`` of the next page, null on the last."""
    assert isinstance(f, frames.Members) and s.grants and s.conn
    if not s.grants.may_join(f.scope, f.group):
        raise Forbidden(f"not allowed to see {f.scope}/{f.group}")
    _query_quota(s)
    cap = s.node.settings.members_limit
    limit = min(f.limit or cap, cap)
    if f.local:
        local = sorted((c for c in s.node.hub.local_members((f.scope, f.group))
                        if f.after is None or c.id > f.after), key=lambda c: c.id)
        members = [s.node.member_info(c, (f.scope, f.group)) for c in local[:limit + 1]]
    else:
        members = registry.get_members(s.node.engine, f.scope, f.group,
                                       limit=limit + 1, after=f.after)
    more = len(members) > limit
    members = members[:limit]
    return {"op": "members", "ref": f.ref, "group": f.group, "scope": f.scope,
            "members": members,
            "next": members[-1]["connection_id"] if more else None}

def _query_quota(s: Session, what: str = "members/monitor/history") -> None:
    assert s.conn is not None
    quota = s.node.quotas.queries
    if not quota.take(s.conn.user_id):
        raise RateLimited(quota.refusal(what))

def op_history(s: Session, f: frames.Frame) -> Reply:
    """A page of the group's durable events (``store/history.py``), oldest first; a page
    is cut short to fit half the socket's outbox (the client pages on from its last id)."""
    assert isinstance(f, frames.History) and s.grants and s.conn
    if not s.grants.may_join(f.scope, f.group):
        raise Forbidden(f"not allowed to read the history of {f.scope}/{f.group}")
    _query_quota(s, "history")
    try:
        got = history.page(s.node.engine, f.scope, f.group, limit=f.limit,
                           before=f.before, after=f.after)
    except SQLAlchemyError:
        raise Unavailable("the log cannot be read now; retry") from None
    room, events = s.conn.byte_limit // 2, list[msgspec.Raw]()
    for env in got.events:
        frame = event_frame(env)
        room -= len(frame) + 1
        if events and room < 0:
            break
        events.append(msgspec.Raw(frame))
    return {"op": "history", "ref": f.ref, "group": f.group, "scope": f.scope,
            "events": events, "gap": got.gap}

def op_monitor(s: Session, f: frames.Frame) -> Reply:
    assert isinstance(f, (frames.Monitor, frames.Demonitor)) and s.conn and s.grants
    if not s.grants.may_join(f.scope, f.group):
        raise Forbidden(f"not allowed to monitor {f.scope}/{f.group}")
    on, key = isinstance(f, frames.Monitor), (f.scope, f.group)
    if on:
        limit = s.node.settings.max_monitors
        if key not in s.conn.monitors and len(s.conn.monitors) >= limit:
            raise Forbidden(f"monitor limit reached (HERALD_MAX_MONITORS={limit} per "
                            "connection)")
        _query_quota(s)
    state = s.node.hub.monitor(s.conn, key, on)
    if state is None:
        return ack(f)
    # changes arriving while the snapshot is read are buffered in `state`
    cap = s.node.settings.max_monitored_members
    tracked = sum(len(st.known) for k, st in s.conn.monitors.items() if k != key)
    # one more than fits is enough to know it does not: a huge group is not read whole
    members = registry.get_members(s.node.engine, f.scope, f.group,
                                   limit=max(0, cap - tracked) + 1)
    if tracked + len(members) > cap:
        s.node.hub.monitor(s.conn, key, False)
        raise Forbidden(f"monitors would track more than {cap} members "
                        f"(HERALD_MAX_MONITORED_MEMBERS={cap} per connection)")
    s.conn.send(ack(f))
    # the snapshot leaves in frames of at most HERALD_MEMBERS_LIMIT entries
    page = s.node.settings.members_limit
    for i in range(0, max(len(members), 1), page):
        s.conn.send(presence.frame(f.scope, f.group, presence.PresenceData(
            joins=members[i:i + page])))
    for change in state.snapshot(members):
        s.conn.send(presence.frame(f.scope, f.group, change))
    return None

def op_task(s: Session, f: frames.Frame) -> Reply:
    assert isinstance(f, frames.StartTask) and s.conn and s.grants
    from workers.client import start_task

    if not s.grants.may_start(f.name):
        raise Forbidden(f"not allowed to start {f.name!r}")
    quota = s.node.quotas.tasks
    if not quota.take(s.conn.user_id):
        raise RateLimited(quota.refusal("task start"))
    notify = (Target.connection(s.conn.id) if f.notify == "connection"
              else Target.user(s.conn.user_id))
    return ack(f, task_id=start_task(f.name, f.args, notify,
                                      settings=s.node.settings,
                                      engine=s.node.engine,
                                      publish=s.node.publish_task_note))


HANDLERS: dict[str, Callable[[Session, frames.Frame], Reply]] = {
    "ping": op_ping,
    "refresh": op_refresh,
    "join": op_join,
    "leave": op_leave,
    "publish": op_publish,
    "members": op_members,
    "monitor": op_monitor,
    "demonitor": op_monitor,
    "task": op_task,
    "history": op_history,
    "update": op_update,
}


def ack(f: frames.Frame, **fields: Any) -> dict[str, Any]:
    return {"op": "ack", "ref": f.ref, **fields}


def error_frame(exc: HeraldError, ref: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"op": "error", "code": exc.code, "message": exc.message}
    if ref is not None:
        frame["ref"] = ref
    return frame


def publish_target(f: frames.Publish) -> Target:
    """Exactly one of group (+scope), user, connection, all."""
    chosen = [t for t in (f.group is not None and Target.group(f.group, f.scope),
                          f.user is not None and Target.user(f.user),
                          f.connection is not None and Target.connection(f.connection),
                          f.all and Target.all()) if t]
    if len(chosen) != 1:
        raise BadRequest("publish needs exactly one target: group, user, connection or all")
    return chosen[0]
