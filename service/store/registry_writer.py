"""The registry's write path: one ``RegistryWriter`` greenlet per frontend.

Callers queue operations and may wait for their commit; the writer applies what has
queued inside one transaction. So a thousand sockets share one database connection and a
connect storm becomes a few large transactions. Each connection's operations (open, join,
leave, disconnect) keep their order; unrelated operations of one kind share one statement
(``registry_sql``), and the whole transaction goes to Postgres in one pipelined round
trip, however many sockets it carries. While Postgres is down the queue holds the
operations and the writer retries with capped backoff until they land.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import gevent
import psycopg
from gevent.event import AsyncResult
from gevent.queue import Empty, Queue
from sqlalchemy import Connection as DBConn
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError

from service.core.backoff import Backoff
from service.store import durability
from service.store.db import is_read_only
from service.store.registry_sql import APPLY, BARRIERS

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


_KIND_RANK = {kind: rank for rank, kind in enumerate(APPLY)}


def _runs(batch: Sequence[Op]) -> list[tuple[str, list[Op]]]:
    """Group a batch into statements, keeping each connection's order.

    An op goes into the wave of its connection's previous op when that was of the same
    kind, else into the next wave; within a wave the ops of one kind are one statement.
    So a storm of opens and joins is two or three statements, not one per op. An open
    never runs before a disconnect queued ahead of it (it may have freed the user a slot).
    A barrier (a reconcile, which reads the frontend's whole state) is a wave of its own
    between everything queued before it and everything queued after.
    """
    last: dict[Any, tuple[int, str]] = {}  # connection id -> (wave, kind) of its latest op
    groups: dict[tuple[int, int], list[Op]] = {}
    freed = 0  # the wave of the latest disconnect or detach so far
    floor = top = 0  # no op goes below the wave after the latest barrier; the top wave
    for op in batch:
        if op.kind in BARRIERS:
            wave = top + 1
            floor = top = wave + 1
            groups[(wave, _KIND_RANK[op.kind])] = [op]
            continue
        key = op.params.get("id", op.params.get("connection_id"))
        wave, kind = last.get(key, (-1, ""))
        if kind != op.kind:
            wave += 1
        wave = max(wave, floor)
        if op.kind == "open":
            wave = max(wave, freed)
        elif op.kind in ("disconnect", "detach"):
            freed = max(freed, wave)
        last[key] = (wave, op.kind)
        top = max(top, wave)
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
        #: Called with each committed batch's ops (the refused left out): the webhooks'
        #: presence checks (``workers/webhook_hooks.py``) when they are configured.
        self.on_commit: Callable[[list[Op]], None] | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def submit(self, kind: str, **params: Any) -> AsyncResult:
        """Queue one write; the result is set once it has committed (or failed for good:
        ``Refused`` for an open beyond the user's limit)."""
        op = Op(kind, params, AsyncResult())
        self.queue.put(op)
        return op.done

    def committed(self, kind: str, **params: Any) -> None:
        """Tell ``on_commit`` of a write committed outside the writer (a server-side join
        or leave, ``registry.record_server_membership``)."""
        if self.on_commit is not None:
            self.on_commit([Op(kind, params, AsyncResult())])

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
        keeps coming (no pool check-out and ping per batch), given back when idle. In
        autocommit mode: ``_apply`` says BEGIN and COMMIT itself, inside its pipeline."""
        if self._held is None:
            self._held = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
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
        backoff = Backoff(RETRY_MIN_S, RETRY_MAX_S)
        while True:
            try:
                work()
                self.healthy = True
                return
            except SQLAlchemyError as exc:
                if _is_data_error(exc):
                    raise
                self.healthy = False
                delay = backoff.next()
                log.warning("registry write failed (%s); retrying in %.1fs",
                            exc.__class__.__name__, delay)
                gevent.sleep(delay)

    def _apply(self, batch: list[Op]) -> None:
        """One transaction, sent as one pipeline: BEGIN, a statement per kind and wave,
        COMMIT, then a single wait for all of it."""
        runs = _runs([op for op in batch if op.kind != "noop"])
        refused: list[Op] = []
        if runs:
            db = cast("psycopg.Connection[Any]", self._connection().connection.driver_connection)
            returning = []
            try:
                with db.pipeline():
                    db.execute("BEGIN")
                    # no wait for the standby: see durability.REGISTRY
                    db.execute(durability.statement(durability.REGISTRY))
                    for kind, ops in runs:
                        cursor = APPLY[kind](db, [op.params for op in ops])
                        if cursor is not None:
                            returning.append((ops, cursor))
                    db.execute("COMMIT")
                for ops, cursor in returning:
                    taken = {row[0] for row in cursor.fetchall()}
                    refused += [op for op in ops if op.params["id"] not in taken]
            except BaseException as exc:
                with contextlib.suppress(psycopg.Error):
                    db.rollback()  # a statement failed: its transaction is still open
                if is_read_only(exc) and self._held is not None:
                    self._held.invalidate()  # its server takes no writes: never again
                self._release()  # and whatever went wrong, the next try starts afresh
                if isinstance(exc, psycopg.Error):  # as SQLAlchemy would have raised it
                    raise DBAPIError.instance(None, None, exc, psycopg.Error) from None
                raise
        for op in refused:
            op.done.set_exception(Refused(f"{op.kind} refused"))
        for op in batch:
            if not op.done.ready():
                op.done.set(True)
        if self.on_commit is not None and runs:
            try:
                self.on_commit([op for op in batch if op.kind != "noop" and op not in refused])
            except Exception:  # a hook's failure must not fail the writes
                log.exception("registry on_commit hook failed")

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
