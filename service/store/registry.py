"""The registry in Postgres: who is connected where and who is in which group.

Writes from sockets (open, join, leave, disconnect) go through the frontend's batching
``RegistryWriter`` (``registry_writer``); this module holds the frontends' own rows, the
resume, server-side membership changes and the look-ups.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection as DBConn
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from service.core.errors import NotFound
from service.store.models import ConnectionRecord, FrontendRecord, Membership

if TYPE_CHECKING:
    from service.store.registry_writer import Refused as Refused
    from service.store.registry_writer import RegistryWriter as RegistryWriter
    from service.store.registry_writer import settled as settled

_FROM_WRITER = ("Refused", "RegistryWriter", "settled")


def __getattr__(name: str) -> Any:
    """The writer's names, imported on first use: the writer runs on gevent, which the
    installable client (the look-ups and server-side membership only) does not have."""
    if name in _FROM_WRITER:
        from service.store import registry_writer

        return getattr(registry_writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# --- frontends ---------------------------------------------------------------------------

def register_frontend(engine: Engine, frontend_id: str, host: str,
                      queue: str | None) -> list[dict[str, Any]]:
    """(Re)register a frontend, first deleting rows an earlier run with this id left behind.

    Returns the memberships that were removed with them, for presence leaves.
    """
    with engine.begin() as db:
        stale = memberships_of_frontends(db, [frontend_id])
        detach_frontends(db, [frontend_id])
        db.execute(delete(FrontendRecord).where(FrontendRecord.id == frontend_id))
        db.execute(insert(FrontendRecord).values(id=frontend_id, host=host, queue=queue))
    return stale


def owners(engine: Engine, connection_ids: list[str]) -> dict[str, str | None]:
    """The frontend each of these connections' rows names now (None: detached); ids
    with no row are left out."""
    if not connection_ids:
        return {}
    with engine.connect() as db:
        rows = db.execute(select(ConnectionRecord.id, ConnectionRecord.frontend_id)
                          .where(ConnectionRecord.id.in_(connection_ids)))
        return {cid: fid for cid, fid in rows}


def detach_frontends(db: DBConn, frontend_ids: list[str]) -> None:
    """Detach every connection of these frontends (their clients may resume elsewhere)."""
    db.execute(update(ConnectionRecord).where(ConnectionRecord.frontend_id.in_(frontend_ids))
               .values(frontend_id=None, detached_at=func.now()))


def reattach(engine: Engine, connection_id: str, user_id: str, frontend_id: str,
             gen: int) -> tuple[list[tuple[str, str, dict[str, Any]]], datetime, int] | None:
    """Move a connection of ``user_id`` to ``frontend_id`` (a resume); return its groups
    (scope, group, meta), when it first connected, and its new resume generation.

    ``gen`` is the generation the client's resume token was issued for: the row moves only
    if it still is the current one, and the move bumps it, so a resume token works once.
    None when there is nothing to resume (unknown, another user's, pruned, or a token
    already used). The row may still be attached to a frontend that has not noticed the
    socket is gone: it moves all the same, and that frontend's clean-up is a no-op because
    it is guarded by frontend.
    """
    with engine.begin() as db:
        row = db.execute(
            update(ConnectionRecord).where(ConnectionRecord.id == connection_id,
                                           ConnectionRecord.user_id == user_id,
                                           ConnectionRecord.resume_gen == gen)
            .values(frontend_id=frontend_id, detached_at=None,
                    resume_gen=ConnectionRecord.resume_gen + 1)
            .returning(ConnectionRecord.connected_at, ConnectionRecord.resume_gen)).first()
        if row is None:
            return None
        rows = db.execute(select(Membership.scope, Membership.group, Membership.meta)
                          .where(Membership.connection_id == connection_id)
                          .order_by(Membership.joined_at)).all()
    return [(s, g, m or {}) for s, g, m in rows], row[0], row[1]


def memberships_of_frontends(db: DBConn, frontend_ids: list[str]) -> list[dict[str, Any]]:
    """Every membership held by connections of these frontends."""
    rows = db.execute(
        select(Membership.scope, Membership.group, Membership.connection_id,
               ConnectionRecord.user_id, ConnectionRecord.frontend_id, Membership.meta)
        .join(ConnectionRecord, ConnectionRecord.id == Membership.connection_id)
        .where(ConnectionRecord.frontend_id.in_(frontend_ids))
        .order_by(Membership.connection_id, Membership.joined_at)).all()
    return [{"scope": s, "group": g, "connection_id": c, "user_id": u, "frontend": f or "",
             "meta": m or {}} for s, g, c, u, f, m in rows]


def add_membership(engine: Engine, connection_id: str, scope: str, group: str,
                   meta: dict[str, Any] | None = None) -> bool:
    """Server-side join: add the row if the connection exists; False when it does not.
    A ``meta`` replaces that of a membership the connection already has."""
    exists = select(ConnectionRecord.id).where(ConnectionRecord.id == connection_id,
                                               ConnectionRecord.frontend_id.is_not(None))
    with engine.begin() as db:
        if db.execute(exists).first() is None:
            return False
        row = insert(Membership).values(connection_id=connection_id, scope=scope,
                                        group_name=group, meta=meta)
        db.execute(row.on_conflict_do_nothing() if meta is None else
                   row.on_conflict_do_update(index_elements=["connection_id", "scope",
                                                             "group_name"],
                                             set_={"meta": meta}))
    return True


def record_server_membership(engine: Engine, action: str, connection_id: str, scope: str,
                             group: str, meta: dict[str, Any] | None = None) -> None:
    """The registry half of a server-side join or leave; NotFound for an unknown connection."""
    if action == "join":
        if not add_membership(engine, connection_id, scope, group, meta):
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


def heartbeat(engine: Engine, frontend_id: str, queue: str | None, draining: bool,
              stats: dict[str, Any] | None = None) -> bool:
    """Refresh this frontend's heartbeat (and its ``stats``, when given); False when its
    row is gone (it was swept)."""
    values: dict[str, Any] = {"heartbeat_at": func.now(), "queue": queue, "draining": draining}
    if stats is not None:
        values["stats"] = stats
    with engine.begin() as db:
        result = db.execute(update(FrontendRecord).where(FrontendRecord.id == frontend_id)
                            .values(**values))
        return bool(result.rowcount)


def deregister_frontend(engine: Engine, frontend_id: str) -> None:
    """Remove a frontend; its connections stay, detached, for their clients to resume."""
    with engine.begin() as db:
        detach_frontends(db, [frontend_id])
        db.execute(delete(FrontendRecord).where(FrontendRecord.id == frontend_id))


def list_frontends(engine: Engine) -> list[dict[str, Any]]:
    """Every registered frontend with its attached connections and its last ``stats``."""
    counts = (select(ConnectionRecord.frontend_id, func.count().label("n"))
              .group_by(ConnectionRecord.frontend_id).subquery())
    stmt = (select(FrontendRecord, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.frontend_id == FrontendRecord.id)
            .order_by(FrontendRecord.id))
    with Session(engine) as db:
        rows = db.execute(stmt).all()
    return [{"id": f.id, "host": f.host, "started_at": f.started_at.timestamp(),
             "heartbeat_at": f.heartbeat_at.timestamp(), "connections": int(n),
             "draining": f.draining, "stats": f.stats} for f, n in rows]


# --- look-ups ----------------------------------------------------------------------------

def count_user_connections(engine: Engine, user_id: str, besides: str | None = None) -> int:
    """How many sockets a user holds across the cluster (``besides`` one of them)."""
    stmt = select(func.count()).select_from(ConnectionRecord).where(
        ConnectionRecord.user_id == user_id, ConnectionRecord.frontend_id.is_not(None))
    if besides is not None:
        stmt = stmt.where(ConnectionRecord.id != besides)
    with engine.connect() as db:
        return int(db.execute(stmt).scalar_one())


def get_members(engine: Engine, scope: str, group: str, *, limit: int | None = None,
                after: str | None = None) -> list[dict[str, Any]]:
    """Cluster-wide members of a group (pg:get_members), by connection id: at most
    ``limit`` of them, those after the connection id ``after`` (a page)."""
    stmt = (select(Membership.connection_id, ConnectionRecord.user_id,
                   ConnectionRecord.frontend_id, Membership.meta)
            .join(ConnectionRecord, ConnectionRecord.id == Membership.connection_id)
            .where(Membership.scope == scope, Membership.group == group,
                   ConnectionRecord.frontend_id.is_not(None))
            .order_by(Membership.connection_id))
    if after is not None:
        stmt = stmt.where(Membership.connection_id > after)
    if limit is not None:
        stmt = stmt.limit(limit)
    with engine.connect() as db:
        return [{"connection_id": c, "user_id": u, "frontend": f or "", "meta": m or {}}
                for c, u, f, m in db.execute(stmt)]


def which_groups(engine: Engine, scope: str | None = None) -> list[dict[str, Any]]:
    """Every group with members, with counts (pg:which_groups)."""
    stmt = (select(Membership.scope, Membership.group, func.count())
            .join(ConnectionRecord, ConnectionRecord.id == Membership.connection_id)
            .where(ConnectionRecord.frontend_id.is_not(None))
            .group_by(Membership.scope, Membership.group)
            .order_by(Membership.scope, Membership.group))
    if scope is not None:
        stmt = stmt.where(Membership.scope == scope)
    with engine.connect() as db:
        return [{"scope": s, "group": g, "members": n} for s, g, n in db.execute(stmt)]


def user_connections(engine: Engine, user_id: str) -> list[dict[str, Any]]:
    """Which frontends serve a user, and in which groups each connection is."""
    with Session(engine) as db:
        conns = db.execute(select(ConnectionRecord)
                           .where(ConnectionRecord.user_id == user_id,
                                  ConnectionRecord.frontend_id.is_not(None))
                           .order_by(ConnectionRecord.connected_at)).scalars().all()
        groups: dict[str, list[dict[str, str]]] = {c.id: [] for c in conns}
        if conns:
            for m in db.execute(select(Membership).where(
                    Membership.connection_id.in_(list(groups)))).scalars():
                groups[m.connection_id].append({"scope": m.scope, "group": m.group})
    return [{"connection_id": c.id, "frontend": c.frontend_id,
             "connected_at": c.connected_at.timestamp(), "groups": groups[c.id]} for c in conns]
