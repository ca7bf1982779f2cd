"""A frontend's groups and routing keys (mixed into ``Frontend``): pg's join and leave of
local sockets, server-side membership of any connection, the control envelopes that carry
it, and, with targeted routing, the routing keys its hub asks for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from service.bus import BROKER_ERRORS, Consumer, Publisher
from service.core.config import Settings
from service.core.envelope import Envelope, control_envelope, encode
from service.core.routes import group_key
from service.delivery.conn import CLOSE_REPLACED, Conn, GroupKey
from service.delivery.hub import Hub
from service.store import registry

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger(__name__)


def meta_text(meta: dict[str, Any] | None) -> str | None:
    """A meta as the registry stores it (JSON text; None: no meta)."""
    return msgspec.json.encode(meta).decode() if meta else None

#: How long an op waits for its registry write before answering anyway (DB outage).
REGISTRY_ACK_TIMEOUT_S = 5.0
#: How long a join or welcome waits for its routing keys to be bound (broker trouble).
BIND_WAIT_S = 5.0


class Membership:
    """Groups and routing keys for a frontend; the host class provides the parts."""

    id: str
    settings: Settings
    engine: Engine
    hub: Hub
    publisher: Publisher
    consumer: Consumer
    registry: registry.RegistryWriter

    # Publishing provides it (an annotation only: a method here would shadow that one)
    publish_presence: Callable[..., None]

    # --- routing keys (targeted routing) -------------------------------------------------

    def _on_route(self, key: str, present: bool) -> None:
        (self.consumer.bind if present else self.consumer.unbind)(key)

    def await_routes(self, keys: list[str]) -> None:
        """Wait (bounded) until the queue is bound to ``keys``: a message published after
        this returns reaches us. Returns at once without a queue (the next one is bound
        before it consumes, and the gap is replayed from the log)."""
        if (self.settings.targeted and not self.consumer.wait_bound(keys, BIND_WAIT_S)
                and self.consumer.connected):
            log.warning("routing keys not bound after %.0f s: %s", BIND_WAIT_S, keys[:3])

    # --- groups (pg join/leave) ----------------------------------------------------------

    def join(self, conn: Conn, key: GroupKey, record: bool = True, wait: bool = True,
             meta: dict[str, Any] | None = None) -> bool:
        """Join a local socket to a group with its presence ``meta``: index (and routing
        key), registry (awaited), presence; ``wait``: return once the group's routing key
        is bound."""
        if not self.hub.join(conn, key):
            return False
        if meta:
            conn.metas[key] = meta
        if record:
            try:
                self.registry.write("join", REGISTRY_ACK_TIMEOUT_S, connection_id=conn.id,
                                    scope=key[0], group=key[1], meta=meta_text(meta))
            except SQLAlchemyError:
                self.hub.leave(conn, key)
                conn.metas.pop(key, None)
                raise
        if wait:  # its bind went out with the index change: it overlapped the write
            self.await_routes([group_key(*key)])
        self.publish_presence(key, [self.member_info(conn, key)], [], wait=wait)
        return True

    def update_meta(self, conn: Conn, key: GroupKey, meta: dict[str, Any]) -> bool:
        """Replace a local member's presence meta: registry (awaited), presence
        ``updates``; False when the socket is not in that group."""
        if key not in conn.groups:
            return False
        self.registry.write("meta", REGISTRY_ACK_TIMEOUT_S, connection_id=conn.id,
                            scope=key[0], group=key[1], meta=meta_text(meta))
        self.update_meta_local(conn, key, meta, wait=True)
        return True

    def leave(self, conn: Conn, key: GroupKey, record: bool = True) -> bool:
        """Remove a local socket from a group: index, registry (awaited), presence."""
        if not self.hub.leave(conn, key):
            return False
        info = self.member_info(conn, key)
        conn.metas.pop(key, None)
        if record:
            self.registry.write("leave", REGISTRY_ACK_TIMEOUT_S, connection_id=conn.id,
                                scope=key[0], group=key[1])
        self.publish_presence(key, [], [info], wait=record)
        return True

    def server_membership(self, action: str, key: GroupKey, connection_id: str,
                          meta: dict[str, Any] | None = None) -> None:
        """Server-side join or leave of any connection, wherever it is (pg:join/leave).

        The registry row is written here, so `members` agrees at once; the frontend that
        holds the socket updates its index and publishes presence (directly when that is us,
        else through a control envelope on the fanout).
        """
        registry.record_server_membership(self.engine, action, connection_id, key[0], key[1],
                                          meta)
        conn = self.hub.conns.get(connection_id)
        if conn is not None:
            self._server_side(action, conn, key, wait=True, meta=meta)
            return
        self.publisher.publish(encode(control_envelope(self.id, connection_id, action,
                                                       key[0], key[1], meta)))

    def _apply_control(self, env: Envelope) -> None:
        conn = self.hub.conns.get(env.target.get("connection", ""))
        if conn is None:
            return
        if env.event == "kick":  # the session resumed elsewhere
            conn.moved = True
            conn.close(CLOSE_REPLACED, "resumed on another socket")
            self.hub.remove(conn)
            return
        body = msgspec.json.decode(env.data, type=dict[str, Any])
        key = (str(body["scope"]), str(body["group"]))
        meta = body.get("meta")
        if env.event in ("join", "leave"):  # on the consumer loop: no waiting
            self._server_side(env.event, conn, key, wait=False,
                              meta=meta if isinstance(meta, dict) else None)

    def _server_side(self, action: str, conn: Conn, key: GroupKey, wait: bool,
                     meta: dict[str, Any] | None = None) -> None:
        """Apply a server-side join or leave its sender already wrote to the registry."""
        if action == "join" and meta is not None and key in conn.groups:
            # a server-side join of a member with a meta: the registry row has it now
            self.update_meta_local(conn, key, meta, wait=wait)
            return
        changed = (self.join(conn, key, record=False, wait=wait, meta=meta)
                   if action == "join" else self.leave(conn, key, record=False))
        if changed:  # the webhooks' checks (when configured) hear of it as of a socket's own
            self.registry.committed(action, connection_id=conn.id, scope=key[0],
                                    group=key[1], user_id=conn.user_id)

    def update_meta_local(self, conn: Conn, key: GroupKey, meta: dict[str, Any],
                          wait: bool = False) -> None:
        """A meta already in the registry: the socket's copy and presence ``updates``."""
        conn.metas[key] = meta
        self.publish_presence(key, [], [], [self.member_info(conn, key)], wait=wait)

    def member_info(self, conn: Conn, key: GroupKey | None = None) -> dict[str, Any]:
        """A members / presence entry; ``meta`` is the one of group ``key`` ({}: none)."""
        return {"connection_id": conn.id, "user_id": conn.user_id, "frontend": self.id,
                "meta": conn.metas.get(key, {}) if key is not None else {}}

    def evict(self, connection_id: str) -> None:
        """Ask whichever frontend still holds this connection id to let go of it."""
        try:
            # "kick" is the control event's name on the wire (older frontends know it)
            self.publisher.publish(encode(control_envelope(self.id, connection_id, "kick",
                                                           "", "")))
        except BROKER_ERRORS as exc:
            log.warning("eviction of %s not published: %s", connection_id, exc)
