"""The durable log's batch insert on a connection of its own, in one round trip.

``messagelog.append_many`` through SQLAlchemy costs, per batch, a pool check-out with its
ping, then ``SET LOCAL``, the ``INSERT … RETURNING`` and ``COMMIT``: four round trips and
SQLAlchemy's statement machinery, most of a single publish's CPU in the database layer.
``LogWriter`` keeps one connection while publishes keep coming (its owner calls
``release`` when no batch is waiting) and sends the whole transaction as one psycopg
pipeline (as the registry writer does): BEGIN, the level, one ``INSERT … SELECT FROM
unnest(…)``, COMMIT, then a single wait. A connection kept but idle for ``HELD_IDLE_S``
is given back too and the next batch takes one from the pool, which pings it, so a
restarted Postgres is noticed before a publish rather than by one.

Ids in entry order: the rows are inserted in ``ORDINALITY`` order, so the ids the
sequence hands out rise with it; sorting the returned ids gives each entry its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

import psycopg
from sqlalchemy import Connection as DBConn
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from service.core.errors import BadRequest
from service.store import durability
from service.store.db import is_read_only
from service.store.messagelog import Entry, loggable

#: Seconds a kept connection may sit unused before it goes back to the pool.
HELD_IDLE_S = 1.0

_INSERT = (
    "INSERT INTO messages (target_kind, target_key, event, data, origin) "
    "SELECT k, t, e, d::jsonb, %s FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
    " WITH ORDINALITY AS u(k, t, e, d, n) ORDER BY n RETURNING id")


class LogWriter:
    """Appends batches of durable messages; one batch at a time (the group commit's)."""

    def __init__(self, engine: Engine, origin: str) -> None:
        self.engine = engine
        self.origin = origin
        self._held: DBConn | None = None
        self._used = 0.0
        self._lock = threading.Lock()  # the group commit runs one batch at a time anyway

    def append_many(self, entries: Sequence[Entry]) -> list[int | BadRequest]:
        """An id per entry in order, or the BadRequest that entry alone earned (bad UTF-8);
        raises SQLAlchemy's errors (``DataError`` for a row Postgres refused)."""
        out, texts = loggable(entries)
        if not texts:
            return out
        cols = ([e.target.kind for e, _ in texts], [e.target.log_key() for e, _ in texts],
                [e.event for e, _ in texts], [text for _, text in texts])
        with self._lock:
            ids = iter(sorted(self._insert(cols)))
        return [r if isinstance(r, BadRequest) else next(ids) for r in out]

    def _insert(self, cols: tuple[list[str], ...]) -> list[int]:
        db = self._connection()
        try:
            with db.pipeline():
                db.execute("BEGIN")
                db.execute(durability.statement(durability.LOG))  # a 202 survives failover
                cursor = db.execute(_INSERT, (self.origin, *cols))
                db.execute("COMMIT")
            ids = [int(row[0]) for row in cursor.fetchall()]
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                db.rollback()  # a statement failed: its transaction may still be open
            self._release(invalidate=is_read_only(exc) or db.broken)
            if is_read_only(exc):  # the server reached takes no writes: an outage (503)
                raise OperationalError(_INSERT, None, exc) from None
            raise DBAPIError.instance(_INSERT, None, exc, psycopg.Error) from None
        self._used = time.monotonic()
        return ids

    def _connection(self) -> psycopg.Connection[Any]:
        if self._held is not None and time.monotonic() - self._used >= HELD_IDLE_S:
            self._release()
        if self._held is None:
            # autocommit: the pipeline says BEGIN and COMMIT itself
            self._held = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return cast("psycopg.Connection[Any]", self._held.connection.driver_connection)

    def release(self) -> None:
        """Give the kept connection back to the pool (the next batch takes one again)."""
        with self._lock:
            self._release()

    def _release(self, invalidate: bool = False) -> None:
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(SQLAlchemyError):
                if invalidate:
                    held.invalidate()
                held.close()

    def close(self) -> None:
        with self._lock:
            self._release()
