"""A frontend's side of delivery receipts: count the sockets a receipt-flagged message is
written to, and report the counts to Postgres without holding up delivery.

Only envelopes with ``receipt`` set reach ``note``: the delivery path pays one flag test
per envelope and nothing else. The counts of one turn of the loop leave in one INSERT, in a
greenlet of their own, so a slow database delays the receipt, never a socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
from sqlalchemy import Engine

from service.core.envelope import Envelope, target_of
from service.delivery.hub import Hub
from service.store import receipts

log = logging.getLogger(__name__)


class ReceiptReporter:
    """Counts, per receipt-flagged message, the sockets this frontend writes it to."""

    def __init__(self, engine: Engine, frontend_id: str, hub: Hub,
                 spawn: Callable[[Callable[[], None]], Any] = gevent.spawn) -> None:
        self.engine = engine
        self.frontend_id = frontend_id
        self.hub = hub
        self._spawn = spawn
        self._pending: list[tuple[int, int]] = []
        self._flushing = False

    def note(self, env: Envelope) -> None:
        """Count the sockets ``env`` is about to be written to; call it just before the
        delivery, in the same greenlet (no yield in between: the sockets are the same)."""
        if env.id is None:
            return
        n = sum(1 for conn in self.hub.matching(target_of(env)) if conn.id != env.exclude)
        if n == 0:  # the report lists the frontends that wrote it
            return
        self._pending.append((env.id, n))
        if not self._flushing:
            self._flushing = True
            self._spawn(self._run)  # starts once the delivering greenlet yields

    def _run(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    receipts.record(self.engine, self.frontend_id, batch)
                except Exception:  # a receipt must never break delivery
                    log.warning("receipts of %d messages not recorded", len(batch),
                                exc_info=True)
        finally:
            self._flushing = False
