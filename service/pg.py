"""Erlang ``pg`` for backend code: join, leave, get_members, which_groups, publish, monitor.

Works from any Python process with Herald's settings (a web backend, a script, a Celery
task): it talks to Postgres and the fanout directly, no frontend in between.

=======================================  =============================================
pg                                       Herald
=======================================  =============================================
``pg:join(Scope, Group, Pid)``           ``Herald().join(scope, group, connection_id)``
``pg:leave(Scope, Group, Pid)``          ``Herald().leave(scope, group, connection_id)``
``pg:get_members(Scope, Group)``         ``Herald().get_members(scope, group)``
``pg:get_local_members(Scope, Group)``   ``get_local_members(scope, group)`` in a frontend
``pg:which_groups(Scope)``               ``Herald().which_groups(scope)``
``Pid ! Msg`` to every member            ``Herald().publish(Target.group(g, s), event, data)``
``pg:monitor(Scope, Group)``             ``for change in Herald().monitor(scope, group)``
=======================================  =============================================
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from service.bus import make_consumer, make_publisher
from service.cluster import pipeline
from service.cluster.aftercommit import AfterCommit
from service.core.config import Settings
from service.core.envelope import (
    Target,
    control_envelope,
    decode_bus,
    encode,
    raw_json,
)
from service.core.errors import BadRequest
from service.core.presence import MonitorState, PresenceData
from service.core.presence import decode as decode_presence
from service.store import idempotency, messagelog, receipts, registry
from service.store.db import get_engine

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, scoped_session

#: How long monitor() waits for its queue to be bound before giving up.
MONITOR_READY_TIMEOUT_S = 15.0


class Herald:
    """A backend's handle on the cluster (thread-safe; one per process is enough)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env(client=True)
        self.origin = f"backend:{socket.gethostname()}:{os.getpid()}"
        self.engine = get_engine(self.settings.database_url, 2,
                                 self.settings.db_tx_idle_timeout_s)
        self.bus = make_publisher(self.settings.broker_url, self.settings.exchange,
                                  confirm=True, heartbeat_s=self.settings.broker_heartbeat_s)
        self.log = pipeline.LogPublisher(
            self.engine, self.bus, self.origin, targeted=self.settings.targeted,
            idempotency_ttl_s=self.settings.idempotency_ttl_s)
        self.after_commit = AfterCommit(self.log)

    def join(self, scope: str, group: str, connection_id: str,
             meta: dict[str, Any] | None = None) -> None:
        """Server-side join of any connection (raises NotFound for an unknown one), with
        an optional presence ``meta``."""
        self._membership("join", scope, group, connection_id, meta)

    def leave(self, scope: str, group: str, connection_id: str) -> None:
        """Server-side leave (idempotent)."""
        self._membership("leave", scope, group, connection_id)

    def _membership(self, action: str, scope: str, group: str, connection_id: str,
                    meta: dict[str, Any] | None = None) -> None:
        registry.record_server_membership(self.engine, action, connection_id, scope, group,
                                          meta)
        # the frontend holding the socket updates its index and tells monitors
        self.bus.publish(encode(control_envelope(self.origin, connection_id, action,
                                                 scope, group, meta)))

    def get_members(self, scope: str, group: str) -> list[dict[str, str]]:
        return registry.get_members(self.engine, scope, group)

    def which_groups(self, scope: str | None = None) -> list[dict[str, Any]]:
        return registry.which_groups(self.engine, scope)

    def publish(self, target: Target, event: str, data: Any = None, *,
                durable: bool = True, idempotency_key: str | None = None,
                receipt: bool = False,
                session: Session | scoped_session[Session] | None = None) -> int | None:
        """Publish to every matching socket on every frontend; durable ones are logged first.

        With an ``idempotency_key`` (durable only), a repeat within HERALD_IDEMPOTENCY_TTL
        returns the first publish's id and is not delivered again. The Python API's keys
        have a namespace of their own, apart from every HTTP API key's. With ``receipt``
        (durable, no key), ``receipt(id)`` reports the sockets written. With ``session`` (a
        SQLAlchemy ``Session`` on Herald's database, or a ``scoped_session`` such as
        Flask-SQLAlchemy's ``db.session``) the log row is written in that session's
        transaction and the message is sent when it commits: never if it rolls back (see
        ``service.cluster.aftercommit``); it takes neither a key nor a receipt."""
        if session is not None:
            if receipt or idempotency_key is not None:
                raise BadRequest("a publish with session= takes no receipt and no "
                                 "idempotency_key (the caller's transaction decides)")
            return self.after_commit.publish_in(session, target, event, raw_json(data),
                                                durable)
        if receipt:
            if not durable or idempotency_key is not None:
                raise BadRequest("receipt needs durable=True and no idempotency_key")
            return self.log.publish_receipted(target, event, raw_json(data))
        if idempotency_key is None:
            return self.log.publish(target, event, raw_json(data), durable)
        return self.publish_many([(target, event, data)], durable=durable,
                                 idempotency_keys=[idempotency_key])[0]

    def publish_many(self, messages: list[tuple[Target, str, Any]], *,
                     durable: bool = True,
                     idempotency_keys: Sequence[str | None] | None = None,
                     session: Session | scoped_session[Session] | None = None
                     ) -> list[int | None]:
        """Publish several ``(target, event, data)`` messages in order, in as few log
        inserts and bus messages as they fit in; returns their ids (None when transient).
        ``idempotency_keys``: one key or None per message (as ``publish``'s). With
        ``session``: each as ``publish(..., session=)``, sent together after the commit.
        Raises BadRequest if Postgres refused one (the others are published)."""
        if session is not None:
            if idempotency_keys is not None:
                raise BadRequest("a publish with session= takes no idempotency_keys")
            return [self.after_commit.publish_in(session, t, e, raw_json(d), durable)
                    for t, e, d in messages]
        entries = [messagelog.Entry(t, e, raw_json(d)) for t, e, d in messages]
        results: list[int | BadRequest | None]
        if idempotency_keys is None:
            results = self.log.publish_many(entries, durable)
        else:
            if len(idempotency_keys) != len(entries):
                raise BadRequest("idempotency_keys must hold one key (or None) per message")
            if not durable:
                raise BadRequest("idempotency keys need durable=True (a key remembers the "
                                 "log id)")
            scoped = [None if k is None else idempotency.scoped(
                idempotency.PYTHON_NAMESPACE, k, "idempotency_key") for k in idempotency_keys]
            results = list(self.log.publish_keyed(entries, scoped))
        for r in results:
            if isinstance(r, BadRequest):
                raise r
        return [r for r in results if not isinstance(r, BadRequest)]

    def receipt(self, message_id: int) -> dict[str, Any] | None:
        """A receipt-flagged message's ``{id, delivered, offline_users}`` (complete within a
        second of the publish), or None when no receipt was asked for."""
        return receipts.report(self.engine, message_id)

    def monitor(self, scope: str, group: str) -> Iterator[PresenceData]:
        """Yield the current members (as joins), then every join, leave and meta update,
        each once.

        Consumes through its own exclusive queue; closing the generator stops it.
        """
        inbox: queue.Queue[bytes] = queue.Queue()
        ready = threading.Event()
        def put_all(bodies: list[bytes]) -> None:
            for body in bodies:
                inbox.put(body)

        consumer = make_consumer(self.settings.broker_url, self.settings.exchange,
                                 on_batch=put_all, on_ready=lambda _name, _first: ready.set(),
                                 heartbeat_s=self.settings.broker_heartbeat_s)
        thread = threading.Thread(target=consumer.run, name="herald-monitor", daemon=True)
        thread.start()
        try:
            if not ready.wait(MONITOR_READY_TIMEOUT_S):
                raise TimeoutError("monitor: could not bind a queue to the exchange")
            # the queue is bound before the snapshot is read: nothing falls in between
            members = self.get_members(scope, group)
            state = MonitorState()
            state.snapshot(members)
            yield PresenceData(joins=members)
            while True:
                for env in decode_bus(inbox.get()):
                    if env.kind != "presence" or env.target != {"group": group,
                                                                "scope": scope}:
                        continue
                    news = state.filter(decode_presence(env.data))
                    if news.joins or news.leaves or news.updates:
                        yield news
        finally:
            # py-amqp is not thread-safe: only raise the flag; the loop sees it within
            # one drain timeout and closes its own connection
            consumer.stop(close=False)
            thread.join(timeout=5)

    def close(self) -> None:
        self.bus.close()


def get_local_members(scope: str, group: str) -> list[dict[str, str]]:
    """Members of a group held by this frontend (call inside a frontend's request)."""
    from flask import current_app

    node = current_app.extensions["herald"]
    return [node.member_info(c, (scope, group)) for c in node.hub.local_members((scope, group))]
