"""The one publish pipeline: log first when durable, then one bus message per batch (per
run of one routing key, with targeted routing).

Frontends, workers, backends (``service.pg``) and ``manage.py`` all publish through
``LogPublisher``: concurrent publishes share one log INSERT and one bus message
(``GroupCommit``); a frontend plugs its local delivery in as ``before_send``, everything
else only publishes (python-socketio's ``write_only``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import msgspec
from sqlalchemy import Engine
from sqlalchemy.exc import DataError

from service.bus import BROKER_ERRORS, Publisher
from service.core.envelope import Envelope, Target, encode_bus, make_envelope
from service.core.errors import BadRequest
from service.core.routes import route_of
from service.store import idempotency, receipts
from service.store.groupcommit import GroupCommit
from service.store.logwriter import LogWriter
from service.store.messagelog import NUL_ERROR, Entry, append, append_many

log = logging.getLogger(__name__)


class LogPublisher:
    """Log first when durable, then publish: the one publish path, for write-only
    publishers (workers, backends) and, with ``before_send``, for frontends.

    Concurrent publishes share one INSERT and one bus message (``GroupCommit``), so a
    publisher with confirms waits for one confirm per batch, not per message.
    ``before_send(envelopes)`` runs on each batch before it goes to the bus (a frontend
    delivers to its own sockets there). A broker outage is survivable for a durable message
    (it is in the log and frontends replay it when they reconnect), not for a transient one.
    """

    def __init__(self, engine: Engine, bus: Publisher, origin: str,
                 before_send: Callable[[list[Envelope]], None] | None = None,
                 *, targeted: bool = True,
                 idempotency_ttl_s: float = idempotency.DEFAULT_TTL_S) -> None:
        self.engine = engine
        self.idempotency_ttl_s = idempotency_ttl_s
        self.bus = bus
        self.origin = origin
        self.targeted = targeted
        self.before_send = before_send
        #: Called with each logged batch and its ids, after it went out (the webhooks'
        #: message.undelivered check, ``workers/webhook_hooks.py``, when configured).
        self.on_logged: Callable[[Sequence[Entry], Sequence[int | BadRequest]], None] | None = None
        self._writer = LogWriter(engine, origin)
        self._durable: GroupCommit[Entry, int | BadRequest] = GroupCommit(self._run_durable)
        self._transient: GroupCommit[Entry, None] = GroupCommit(self._run_transient)

    def publish(self, target: Target, event: str, data: msgspec.Raw, durable: bool,
                dedupe_key: str | None = None, exclude: str | None = None) -> int | None:
        """Publish one message; returns its log id when durable."""
        entry = Entry(target, event, data, exclude)
        if dedupe_key is not None:  # a task outcome: logged once per key, never batched
            msg_id = append(self.engine, self.origin, target, event, data, dedupe_key)
            self._send([entry], [msg_id], True)
            if self.on_logged is not None:
                self.on_logged([entry], [msg_id])
            return msg_id
        if not durable:
            self._transient.submit(entry)
            return None
        result = self._durable.submit(entry)
        if isinstance(result, BadRequest):
            raise result
        return result

    def publish_many(self, entries: Sequence[Entry], durable: bool
                     ) -> list[int | BadRequest | None]:
        """Publish several messages in order, sharing inserts and bus messages: an id per
        entry (None when transient), or the BadRequest that entry alone earned."""
        if not durable:
            self._transient.submit_many(entries)
            return [None] * len(entries)
        return list(self._durable.submit_many(entries))

    def publish_receipted(self, target: Target, event: str, data: msgspec.Raw,
                          exclude: str | None = None) -> int:
        """Publish one durable message with a delivery receipt: its request is logged with
        it, and every frontend that writes it to sockets reports how many
        (``store/receipts.py``). Its own transaction: the group commit stays as it was."""
        try:
            msg_id = receipts.append_requested(self.engine, self.origin, target, event, data)
        except DataError:
            raise BadRequest(NUL_ERROR) from None
        self._send([Entry(target, event, data, exclude, receipt=True)], [msg_id], True)
        return msg_id

    def publish_keyed(self, entries: Sequence[Entry], keys: Sequence[str | None]
                      ) -> list[int | BadRequest]:
        """Publish durable messages with idempotency keys (``idempotency.scoped``): an
        entry whose key was used within the TTL answers that publish's id and is not sent
        again. Outside the group commit: the claim must see the first publish committed,
        and the unkeyed path stays exactly as it was."""
        claims = idempotency.append_keyed(self.engine, self.origin, entries, keys,
                                          self.idempotency_ttl_s)
        fresh = [(e, c[0]) for e, c in zip(entries, claims, strict=True)
                 if not isinstance(c, BadRequest) and c[1]]
        self._send([e for e, _ in fresh], [i for _, i in fresh], True)
        return [c if isinstance(c, BadRequest) else c[0] for c in claims]

    def send_logged(self, target: Target, event: str, data: msgspec.Raw, msg_id: int) -> None:
        """Publish a message the caller has already logged under ``msg_id``."""
        self._send([Entry(target, event, data)], [msg_id], True)

    def send_logged_many(self, entries: Sequence[Entry], ids: Sequence[int | None]) -> None:
        """Publish messages the caller has already logged (an id each; None: transient),
        in order (a transactional publish, after its commit: ``aftercommit``)."""
        self._send(entries, ids, any(i is not None for i in ids))

    def _run_durable(self, entries: Sequence[Entry]) -> list[int | BadRequest]:
        try:
            try:
                ids: list[int | BadRequest] = self._writer.append_many(entries)
            except DataError:  # one row Postgres refused spoils the statement: row by row
                ids = append_many(self.engine, self.origin, entries)
            logged = [(e, i) for e, i in zip(entries, ids, strict=True) if isinstance(i, int)]
            self._send([e for e, _ in logged], [i for _, i in logged], True)
        finally:
            if not self._durable.pending:
                # nothing more is waiting: the connection goes back to the pool (a
                # publisher nobody uses again must not keep one out of it)
                self._writer.release()
        if self.on_logged is not None:
            self.on_logged(entries, ids)
        return ids

    def _run_transient(self, entries: Sequence[Entry]) -> list[None]:
        self._send(entries, [None] * len(entries), False)
        return [None] * len(entries)

    def _send(self, entries: Sequence[Entry], ids: Sequence[int | None], durable: bool) -> None:
        if not entries:
            return
        envs = [make_envelope(self.origin, e.target, e.event, e.data, i, e.exclude,
                              receipt=e.receipt)
                for e, i in zip(entries, ids, strict=True)]
        if self.before_send is not None:
            self.before_send(envs)
        try:
            if not self.targeted:
                self.bus.publish(encode_bus(envs), confirm=durable)
                return
            # one bus message per run of envelopes with the same routing key, in order:
            # a socket that several of the runs reach still gets them as published
            start = 0
            routes = [route_of(e.target) for e in entries]
            for end in range(1, len(envs) + 1):
                if end == len(envs) or routes[end] != routes[start]:
                    self.bus.publish(encode_bus(envs[start:end]), routes[start],
                                     confirm=durable)
                    start = end
        except BROKER_ERRORS as exc:
            if not durable:
                raise
            log.warning("broker unavailable, %d durable messages stay in the log for replay "
                        "(ids %s-%s): %s", len(envs), envs[0].id, envs[-1].id, exc)
