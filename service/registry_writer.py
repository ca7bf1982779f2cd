"""The registry's write path: one ``RegistryWriter`` greenlet per frontend.

Callers queue operations and may wait for their commit; the writer applies what has
queued inside one transaction. So a thousand sockets share one database connection and a
connect storm becomes a few large transactions. Each connection's operations (open, join,
leave, disconnect) keep their order; unrelated operations of one kind share one statement
(a multi-row insert or an executemany), so a batch costs a handful of round trips however
many sockets it carries. While Postgres is down the queue holds the operations and the
writer retries with capped backoff until they land.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.event import AsyncResult
from gevent.queue import Empty, Queue
from sqlalchemy import Connection as DBConn
from sqlalchemy import Engine, text
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

log = logging.getLogger(__name__)

#: Largest number of operations applied in one transaction.
MAX_BATCH = 500
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0


class Refused(Exception):
    """The registry turned a write down on its own terms (the user's connection limit)."""


@dataclass(slots=True)
class Op:
    """One registry write. ``kind`` selects the statement; ``done`` reports the commit."""

    kind: str
    params: dict[str, Any]
    done: AsyncResult


#: What a statement says about its rows: None when it took them all, else one flag per row.
Taken = list[bool] | None

# Every kind is ONE statement whatever the number of rows: the rows travel as arrays and
# `unnest` turns them back into a table. The SQL text never changes, so psycopg prepares
# it once; executemany (a round of Python per row) or a multi-row VALUES (compiled anew
# for each row count) cost several times as much for the batches a storm makes.

_CONNECT = text("""
INSERT INTO connections (id, frontend_id, user_id)
SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:frontends AS text[]), CAST(:users AS text[]))
ON CONFLICT DO NOTHING
""")

# Serialises opens of one user across frontends until commit, so two frontends cannot
# both count the same free slot (keys taken in order: no deadlock between batches).
_LOCK_USERS = text("""
SELECT pg_advisory_xact_lock(k) FROM (
    SELECT DISTINCT hashtextextended(u, 0) AS k FROM unnest(CAST(:users AS text[])) AS u
    ORDER BY k) AS keys
""")

# A new connection's row, inserted only while its user holds fewer attached connections
# than its limit: the ones already committed plus those earlier in this same statement.
_OPEN = text("""
WITH new AS (
    SELECT n.id, n.frontend_id, n.user_id, n.max_n,
           row_number() OVER (PARTITION BY n.user_id ORDER BY n.ord) AS nth
    FROM unnest(CAST(:ids AS text[]), CAST(:frontends AS text[]), CAST(:users AS text[]),
                CAST(:limits AS bigint[]))
         WITH ORDINALITY AS n(id, frontend_id, user_id, max_n, ord)
), held AS (
    SELECT user_id, count(*) AS n FROM connections
    WHERE frontend_id IS NOT NULL AND user_id IN (SELECT user_id FROM new)
    GROUP BY user_id
)
INSERT INTO connections (id, frontend_id, user_id)
SELECT new.id, new.frontend_id, new.user_id FROM new LEFT JOIN held USING (user_id)
WHERE coalesce(held.n, 0) + new.nth <= new.max_n
ON CONFLICT DO NOTHING
RETURNING id
""")

# guarded by frontend: a connection resumed elsewhere meanwhile is not ours to touch
_DISCONNECT = text("""
DELETE FROM connections AS c
USING unnest(CAST(:ids AS text[]), CAST(:frontends AS text[])) AS x(id, frontend_id)
WHERE c.id = x.id AND c.frontend_id = x.frontend_id
""")

# the socket dropped without a goodbye: keep the row and its groups for a resume
_DETACH = text("""
UPDATE connections AS c SET frontend_id = NULL, detached_at = now()
FROM unnest(CAST(:ids AS text[]), CAST(:frontends AS text[])) AS x(id, frontend_id)
WHERE c.id = x.id AND c.frontend_id = x.frontend_id
""")

_JOIN = text("""
INSERT INTO memberships (connection_id, scope, group_name)
SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:scopes AS text[]), CAST(:groups AS text[]))
ON CONFLICT DO NOTHING
""")

_LEAVE = text("""
DELETE FROM memberships AS m
USING unnest(CAST(:ids AS text[]), CAST(:scopes AS text[]), CAST(:groups AS text[]))
      AS x(connection_id, scope, group_name)
WHERE m.connection_id = x.connection_id AND m.scope = x.scope
  AND m.group_name = x.group_name
""")


def _columns(rows: list[dict[str, Any]], **names: str) -> dict[str, list[Any]]:
    """Rows as one array per column: ``_columns(rows, ids="id")`` → ``{"ids": [...]}``."""
    return {array: [r[key] for r in rows] for array, key in names.items()}


def _connect(db: DBConn, rows: list[dict[str, Any]]) -> Taken:
    # unconditional: a resync writing back the rows of sockets this frontend already holds
    db.execute(_CONNECT, _columns(rows, ids="id", frontends="frontend_id", users="user_id"))
    return None


def _open(db: DBConn, rows: list[dict[str, Any]]) -> Taken:
    """A hello's connection row, within ``HERALD_MAX_USER_CONNECTIONS`` cluster-wide."""
    params = _columns(rows, ids="id", frontends="frontend_id", users="user_id",
                      limits="limit")
    db.execute(_LOCK_USERS, {"users": sorted(set(params["users"]))})
    inserted = set(db.execute(_OPEN, params).scalars())
    return [r["id"] in inserted for r in rows]


def _disconnect(db: DBConn, rows: list[dict[str, Any]]) -> Taken:
    db.execute(_DISCONNECT, _columns(rows, ids="id", frontends="frontend_id"))
    return None


def _detach(db: DBConn, rows: list[dict[str, Any]]) -> Taken:
    db.execute(_DETACH, _columns(rows, ids="id", frontends="frontend_id"))
    return None


def _join(db: DBConn, rows: list[dict[str, Any]]) -> Taken:
    db.execute(_JOIN, _columns(rows, ids="connection_id", scopes="scope", groups="group"))
    return None


def _leave(db: DBConn, rows: list[dict[str, Any]]) -> Taken:
    db.execute(_LEAVE, _columns(rows, ids="connection_id", scopes="scope", groups="group"))
    return None


#: Statement for each op kind, in the order kinds run within one wave (see ``_runs``):
#: what frees a slot or a row before what takes one.
APPLY: dict[str, Callable[[DBConn, list[dict[str, Any]]], Taken]] = {
    "disconnect": _disconnect,
    "detach": _detach,
    "leave": _leave,
    "connect": _connect,
    "open": _open,
    "join": _join,
}
_KIND_RANK = {kind: rank for rank, kind in enumerate(APPLY)}


def _runs(batch: Sequence[Op]) -> list[tuple[str, list[Op]]]:
    """Group a batch into statements, keeping each connection's order.

    An op goes into the wave of its connection's previous op when that was of the same
    kind, else into the next wave; within a wave the ops of one kind are one statement.
    So a storm of opens and joins is two or three statements, not one per op. An open
    never runs before a disconnect queued ahead of it (it may have freed the user a slot).
    """
    last: dict[Any, tuple[int, str]] = {}  # connection id -> (wave, kind) of its latest op
    groups: dict[tuple[int, int], list[Op]] = {}
    freed = 0  # the wave of the latest disconnect or detach so far
    for op in batch:
        key = op.params.get("id", op.params.get("connection_id"))
        wave, kind = last.get(key, (-1, ""))
        if kind != op.kind:
            wave += 1
        if op.kind == "open":
            wave = max(wave, freed)
        elif op.kind in ("disconnect", "detach"):
            freed = max(freed, wave)
        last[key] = (wave, op.kind)
        groups.setdefault((wave, _KIND_RANK[op.kind]), []).append(op)
    return [(groups[k][0].kind, groups[k]) for k in sorted(groups)]


def settled(done: AsyncResult, timeout_s: float) -> bool:
    """Wait (bounded) for a submitted write: True once committed, False while the
    database is away (the write stays queued and lands later). Raises if rejected."""
    if not done.wait(timeout_s) and not done.ready():
        return False
    if not done.successful():
        raise done.exception
    return True


class RegistryWriter:
    """Applies queued registry writes in order, in batches, retrying through outages."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: Queue[Op] = Queue()
        self.healthy = True
        self.should_stop = False
        self._greenlet: gevent.Greenlet[Any] | None = None
        self._held: DBConn | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def submit(self, kind: str, **params: Any) -> AsyncResult:
        """Queue one write; the result is set once it has committed (or failed for good:
        ``Refused`` for an open beyond the user's limit)."""
        op = Op(kind, params, AsyncResult())
        self.queue.put(op)
        return op.done

    def pending(self) -> int:
        return int(self.queue.qsize())

    def write(self, kind: str, timeout_s: float, **params: Any) -> bool:
        """Queue a write and wait for it (bounded), as ``settled`` says."""
        return settled(self.submit(kind, **params), timeout_s)

    def flush(self, timeout_s: float) -> None:
        """Wait (bounded) until everything queued so far has been applied."""
        self.submit("noop").wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.flush(timeout_s)
        self.should_stop = True
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1)

    def _run(self) -> None:
        try:
            while not self.should_stop:
                first = self.queue.get()
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self.queue.get_nowait())
                    except Empty:
                        break
                self._apply_with_retry(batch)
                if self.queue.empty():
                    self._release()
        finally:
            self._release()

    def _connection(self) -> DBConn:
        """The writer's database connection, kept from one batch to the next while work
        keeps coming (no pool check-out and ping per batch), given back when idle."""
        if self._held is None:
            self._held = self.engine.connect()
        return self._held

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(SQLAlchemyError):
                held.close()

    def _apply_with_retry(self, batch: list[Op]) -> None:
        """Apply a batch in one transaction, waiting out outages; when it fails on its
        rows (or on a bug), fall back to one op at a time so only the bad one fails."""
        try:
            self._retry_outages(lambda: self._apply(batch))
        except Exception:  # noqa: BLE001 - a row or a programming error: isolate it
            self._apply_one_by_one(batch)

    def _retry_outages(self, work: Callable[[], None]) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                work()
                self.healthy = True
                return
            except SQLAlchemyError as exc:
                if _is_data_error(exc):
                    raise
                self.healthy = False
                log.warning("registry write failed (%s); retrying in %.1fs",
                            exc.__class__.__name__, delay)
                gevent.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _apply(self, batch: list[Op]) -> None:
        work = [op for op in batch if op.kind != "noop"]
        refused: list[Op] = []
        if work:
            db = self._connection()
            try:
                with db.begin():
                    for kind, ops in _runs(work):
                        taken = APPLY[kind](db, [op.params for op in ops])
                        if taken is not None:
                            refused += [op for op, ok in zip(ops, taken, strict=True) if not ok]
            except BaseException:
                self._release()  # whatever went wrong, the next try starts from the pool
                raise
        for op in refused:
            op.done.set_exception(Refused(f"{op.kind} refused"))
        for op in batch:
            if not op.done.ready():
                op.done.set(True)

    def _apply_one_by_one(self, batch: list[Op]) -> None:
        # A batch failed on its data (say, a join for a connection the sweeper removed):
        # apply each op alone so one bad row does not sink the others.
        for op in batch:
            try:
                self._retry_outages(lambda op=op: self._apply([op]))  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - only this op fails; the writer lives on
                log.warning("registry %s rejected: %r", op.kind, exc)
                op.done.set_exception(exc)


def _is_data_error(exc: SQLAlchemyError) -> bool:
    """Integrity or data errors are about the rows, not the database being away."""
    return isinstance(exc, (IntegrityError, DataError))
