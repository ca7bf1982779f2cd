"""The registry in Postgres: who is connected where and who is in which group.

Writes go through one ``RegistryWriter`` greenlet per frontend: callers queue operations
and may wait for their commit, the writer applies what has queued in order inside one
transaction. So a thousand sockets share one database connection, a connect storm
becomes a few large transactions, and per-connection order (connect, join, leave,
disconnect) is kept because one FIFO carries them all. While Postgres is down the queue
holds the operations and the writer retries with capped backoff until they land.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import gevent
from gevent.event import AsyncResult
from gevent.queue import Empty, Queue
from sqlalchemy import Connection as DBConn
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from .errors import NotFound
from .models import Connection, Frontend, Membership

log = logging.getLogger(__name__)

#: Largest number of operations applied in one transaction.
MAX_BATCH = 500
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0


@dataclass(slots=True)
class Op:
    """One registry write. ``kind`` selects the statement; ``done`` reports the commit."""

    kind: str
    params: dict[str, Any]
    done: AsyncResult


def _connect(db: DBConn, rows: list[dict[str, Any]]) -> None:
    db.execute(insert(Connection).on_conflict_do_nothing(), rows)


def _disconnect(db: DBConn, rows: list[dict[str, Any]]) -> None:
    # guarded by frontend: a connection resumed elsewhere meanwhile is not ours to delete
    for r in rows:
        db.execute(delete(Connection).where(Connection.id == r["id"],
                                            Connection.frontend_id == r["frontend_id"]))


def _detach(db: DBConn, rows: list[dict[str, Any]]) -> None:
    # the socket dropped without a goodbye: keep the row and its groups for a resume
    for r in rows:
        db.execute(update(Connection).where(Connection.id == r["id"],
                                            Connection.frontend_id == r["frontend_id"])
                   .values(frontend_id=None, detached_at=func.now()))


def _join(db: DBConn, rows: list[dict[str, Any]]) -> None:
    db.execute(insert(Membership).on_conflict_do_nothing(),
               [{"connection_id": r["connection_id"], "scope": r["scope"],
                 "group_name": r["group"]} for r in rows])


def _leave(db: DBConn, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        db.execute(delete(Membership).where(
            Membership.connection_id == r["connection_id"],
            Membership.scope == r["scope"], Membership.group == r["group"]))


#: Statement for each op kind; consecutive ops of one kind run as one executemany.
APPLY: dict[str, Callable[[DBConn, list[dict[str, Any]]], None]] = {
    "connect": _connect,
    "disconnect": _disconnect,
    "detach": _detach,
    "join": _join,
    "leave": _leave,
}


def _runs(batch: Sequence[Op]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Group consecutive operations of the same kind, keeping order."""
    runs: list[tuple[str, list[dict[str, Any]]]] = []
    for op in batch:
        if runs and runs[-1][0] == op.kind:
            runs[-1][1].append(op.params)
        else:
            runs.append((op.kind, [op.params]))
    return runs


class RegistryWriter:
    """Applies queued registry writes in order, in batches, retrying through outages."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: Queue[Op] = Queue()
        self.healthy = True
        self.should_stop = False
        self._greenlet: gevent.Greenlet[Any] | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def submit(self, kind: str, **params: Any) -> AsyncResult:
        """Queue one write; the result is set once it has committed (or failed for good)."""
        op = Op(kind, params, AsyncResult())
        self.queue.put(op)
        return op.done

    def pending(self) -> int:
        return int(self.queue.qsize())

    def write(self, kind: str, timeout_s: float, **params: Any) -> bool:
        """Queue a write and wait for it (bounded). True once committed; False while the
        database is away (the write stays queued and lands later). Raises if rejected."""
        done = self.submit(kind, **params)
        if not done.wait(timeout_s) and not done.ready():
            return False
        if not done.successful():
            raise done.exception
        return True

    def flush(self, timeout_s: float) -> None:
        """Wait (bounded) until everything queued so far has been applied."""
        self.submit("noop").wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.flush(timeout_s)
        self.should_stop = True
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1)

    def _run(self) -> None:
        while not self.should_stop:
            first = self.queue.get()
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except Empty:
                    break
            self._apply_with_retry(batch)

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
        if work:
            with self.engine.begin() as db:
                for kind, rows in _runs(work):
                    APPLY[kind](db, rows)
        for op in batch:
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


# --- frontends ---------------------------------------------------------------------------

def register_frontend(engine: Engine, frontend_id: str, host: str,
                      queue: str | None) -> list[dict[str, str]]:
    """(Re)register a frontend, first deleting rows an earlier run with this id left behind.

    Returns the memberships that were removed with them, for presence leaves.
    """
    with engine.begin() as db:
        stale = memberships_of_frontends(db, [frontend_id])
        detach_frontends(db, [frontend_id])
        db.execute(delete(Frontend).where(Frontend.id == frontend_id))
        db.execute(insert(Frontend).values(id=frontend_id, host=host, queue=queue))
    return stale


def detach_frontends(db: DBConn, frontend_ids: list[str]) -> None:
    """Detach every connection of these frontends (their clients may resume elsewhere)."""
    db.execute(update(Connection).where(Connection.frontend_id.in_(frontend_ids))
               .values(frontend_id=None, detached_at=func.now()))


def reattach(engine: Engine, connection_id: str, user_id: str,
             frontend_id: str) -> tuple[list[tuple[str, str]], datetime] | None:
    """Move a connection of ``user_id`` to ``frontend_id`` (a resume); return its groups
    and when it first connected.

    None when there is nothing to resume (unknown, another user's, or pruned). The row may
    still be attached to a frontend that has not noticed the socket is gone: it moves all
    the same, and that frontend's clean-up is a no-op because it is guarded by frontend.
    """
    with engine.begin() as db:
        connected_at = db.execute(
            update(Connection).where(Connection.id == connection_id,
                                     Connection.user_id == user_id)
            .values(frontend_id=frontend_id, detached_at=None)
            .returning(Connection.connected_at)).scalar()
        if connected_at is None:
            return None
        rows = db.execute(select(Membership.scope, Membership.group)
                          .where(Membership.connection_id == connection_id)
                          .order_by(Membership.joined_at)).all()
    return [(s, g) for s, g in rows], connected_at


def memberships_of_frontends(db: DBConn, frontend_ids: list[str]) -> list[dict[str, str]]:
    """Every membership held by connections of these frontends."""
    rows = db.execute(
        select(Membership.scope, Membership.group, Membership.connection_id,
               Connection.user_id, Connection.frontend_id)
        .join(Connection, Connection.id == Membership.connection_id)
        .where(Connection.frontend_id.in_(frontend_ids))
        .order_by(Membership.connection_id, Membership.joined_at)).all()
    return [{"scope": s, "group": g, "connection_id": c, "user_id": u, "frontend": f or ""}
            for s, g, c, u, f in rows]


def add_membership(engine: Engine, connection_id: str, scope: str, group: str) -> bool:
    """Server-side join: add the row if the connection exists; False when it does not."""
    exists = select(Connection.id).where(Connection.id == connection_id,
                                         Connection.frontend_id.is_not(None))
    with engine.begin() as db:
        if db.execute(exists).first() is None:
            return False
        db.execute(insert(Membership).values(connection_id=connection_id, scope=scope,
                                             group_name=group).on_conflict_do_nothing())
    return True


def record_server_membership(engine: Engine, action: str, connection_id: str, scope: str,
                             group: str) -> None:
    """The registry half of a server-side join or leave; NotFound for an unknown connection."""
    if action == "join":
        if not add_membership(engine, connection_id, scope, group):
            raise NotFound(f"no connection {connection_id!r}")
    elif action == "leave":
        remove_membership(engine, connection_id, scope, group)
    else:
        raise ValueError(action)


def remove_membership(engine: Engine, connection_id: str, scope: str, group: str) -> None:
    """Server-side leave (idempotent)."""
    with engine.begin() as db:
        db.execute(delete(Membership).where(Membership.connection_id == connection_id,
                                            Membership.scope == scope,
                                            Membership.group == group))


def heartbeat(engine: Engine, frontend_id: str, queue: str | None, draining: bool) -> bool:
    """Refresh this frontend's heartbeat; False when its row is gone (it was swept)."""
    with engine.begin() as db:
        result = db.execute(update(Frontend).where(Frontend.id == frontend_id).values(
            heartbeat_at=func.now(), queue=queue, draining=draining))
        return bool(result.rowcount)


def deregister_frontend(engine: Engine, frontend_id: str) -> None:
    """Remove a frontend; its connections stay, detached, for their clients to resume."""
    with engine.begin() as db:
        detach_frontends(db, [frontend_id])
        db.execute(delete(Frontend).where(Frontend.id == frontend_id))


def list_frontends(engine: Engine) -> list[dict[str, Any]]:
    counts = (select(Connection.frontend_id, func.count().label("n"))
              .group_by(Connection.frontend_id).subquery())
    stmt = (select(Frontend, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.frontend_id == Frontend.id).order_by(Frontend.id))
    with Session(engine) as db:
        rows = db.execute(stmt).all()
    return [{"id": f.id, "host": f.host, "started_at": f.started_at.timestamp(),
             "heartbeat_at": f.heartbeat_at.timestamp(), "connections": int(n),
             "draining": f.draining} for f, n in rows]


# --- look-ups ----------------------------------------------------------------------------

def count_user_connections(engine: Engine, user_id: str) -> int:
    """How many sockets a user holds across the cluster."""
    with engine.connect() as db:
        return int(db.execute(select(func.count()).select_from(Connection)
                              .where(Connection.user_id == user_id,
                                     Connection.frontend_id.is_not(None))).scalar_one())


def get_members(engine: Engine, scope: str, group: str) -> list[dict[str, str]]:
    """Cluster-wide members of a group (pg:get_members)."""
    stmt = (select(Membership.connection_id, Connection.user_id, Connection.frontend_id)
            .join(Connection, Connection.id == Membership.connection_id)
            .where(Membership.scope == scope, Membership.group == group,
                   Connection.frontend_id.is_not(None))
            .order_by(Membership.joined_at, Membership.connection_id))
    with engine.connect() as db:
        return [{"connection_id": c, "user_id": u, "frontend": f or ""}
                for c, u, f in db.execute(stmt)]


def which_groups(engine: Engine, scope: str | None = None) -> list[dict[str, Any]]:
    """Every group with members, with counts (pg:which_groups)."""
    stmt = (select(Membership.scope, Membership.group, func.count())
            .join(Connection, Connection.id == Membership.connection_id)
            .where(Connection.frontend_id.is_not(None))
            .group_by(Membership.scope, Membership.group)
            .order_by(Membership.scope, Membership.group))
    if scope is not None:
        stmt = stmt.where(Membership.scope == scope)
    with engine.connect() as db:
        return [{"scope": s, "group": g, "members": n} for s, g, n in db.execute(stmt)]


def user_connections(engine: Engine, user_id: str) -> list[dict[str, Any]]:
    """Which frontends serve a user, and in which groups each connection is."""
    with Session(engine) as db:
        conns = db.execute(select(Connection).where(Connection.user_id == user_id,
                                                    Connection.frontend_id.is_not(None))
                           .order_by(Connection.connected_at)).scalars().all()
        groups: dict[str, list[dict[str, str]]] = {c.id: [] for c in conns}
        if conns:
            for m in db.execute(select(Membership).where(
                    Membership.connection_id.in_(list(groups)))).scalars():
                groups[m.connection_id].append({"scope": m.scope, "group": m.group})
    return [{"connection_id": c.id, "frontend": c.frontend_id,
             "connected_at": c.connected_at.timestamp(), "groups": groups[c.id]} for c in conns]
