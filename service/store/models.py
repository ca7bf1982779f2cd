"""The registry and the log: typed SQLAlchemy 2 models shared by frontends, workers and manage.py.

Plain SQLAlchemy (no Flask-SQLAlchemy) so that every process uses one model module without
an application context. A naming convention keeps constraint names stable for Alembic.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LEN = 64
NAME_LEN = 128


class Base(DeclarativeBase):
    """Declarative base with the naming convention Alembic relies on."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class FrontendRecord(Base):
    """One frontend process: its id, where it runs and when it last said it was alive."""

    __tablename__ = "frontends"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    queue: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now())
    draining: Mapped[bool] = mapped_column(Boolean, server_default="false")
    #: Its Meter's counters and their per-second rates, written at each heartbeat
    #: (``core/metrics.Rates``); null until the first one.
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)


class ConnectionRecord(Base):
    """One WebSocket: which user holds it and which frontend serves it.

    A connection whose socket dropped (or whose frontend died) is *detached*: no frontend,
    ``detached_at`` set, memberships kept, so the client can resume it on any frontend
    within ``HERALD_HISTORY_TTL``. Only attached connections count as members.
    """

    __tablename__ = "connections"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    frontend_id: Mapped[str | None] = mapped_column(
        ForeignKey("frontends.id", ondelete="SET NULL"), index=True)
    user_id: Mapped[str] = mapped_column(String(NAME_LEN), index=True)
    connected_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now())
    detached_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    #: Bumped by every resume; a resume token names the generation it was issued for, so
    #: each one resumes at most once and an old one cannot replay a session that moved on.
    resume_gen: Mapped[int] = mapped_column(Integer, server_default="0")


class Membership(Base):
    """A connection's membership of a group within a scope (pg's join)."""

    __tablename__ = "memberships"

    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True)
    scope: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    group: Mapped[str] = mapped_column("group_name", String(NAME_LEN), primary_key=True)
    joined_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now())
    #: The member's presence meta (``join.meta``, ``update``); null: none given.
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)

    __table_args__ = (Index("ix_memberships_scope_group", "scope", "group_name"),)


class Message(Base):
    """The durable message log that resume and broker-outage recovery replay from.

    ``target_kind`` is all, group, user or connection; ``target_key`` is "" for all,
    "<scope>/<group>" for a group, else the user or connection id.

    Partitioned by ``created_at``, a partition per UTC day (``store/partitions.py``):
    retention drops whole partitions. Postgres wants the partition key in the primary
    key, hence (id, created_at); ids still come from one sequence, so they stay unique
    and ordered across partitions.
    """

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    target_kind: Mapped[str] = mapped_column(String(16))
    target_key: Mapped[str] = mapped_column(String(2 * NAME_LEN + 1))
    event: Mapped[str] = mapped_column(String(NAME_LEN))
    data: Mapped[Any] = mapped_column(JSONB)
    origin: Mapped[str] = mapped_column(String(ID_LEN))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), primary_key=True, index=True)

    __table_args__ = (Index("ix_messages_target", "target_kind", "target_key", "id"),
                      {"postgresql_partition_by": "RANGE (created_at)"})


class MessageKey(Base):
    """A task outcome's dedupe key and the id it was logged under: a task that runs again
    after a crash re-publishes under the same id, and clients drop the copy. Its own
    table because a unique index on the partitioned log would have to include the day."""

    __tablename__ = "message_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    message_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True)


class MessageReceipt(Base):
    """A delivery receipt: how many sockets one frontend wrote a receipt-flagged message to.

    The publisher writes a row with ``frontend_id`` "" (``store/receipts.REQUESTED``) when
    it asks for a receipt, so ``GET /api/messages/<id>`` tells "nobody had a socket" from
    "no receipt was asked for"; each frontend that wrote to sockets adds its own row."""

    __tablename__ = "message_receipts"

    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    frontend_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    sockets: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True)


class TaskRecord(Base):
    """A long-running task's state, whoever started it (API, client op or Celery directly)."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    args: Mapped[Any] = mapped_column(JSONB, server_default="{}")
    notify: Mapped[Any] = mapped_column(JSONB, nullable=True)
    state: Mapped[str] = mapped_column(String(16), server_default="queued")
    progress: Mapped[float] = mapped_column(Float, server_default="0")
    result: Mapped[Any] = mapped_column(JSONB, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now())


class WebhookState(Base):
    """What the webhooks last said of a user (``kind`` "user") or a group ("group",
    key "<scope>/<group>"): "on" (online/occupied sent) or "leaving" (its last socket went
    ``since``; offline/vacated goes out once the flap window has passed without a return).
    No row: offline/vacated, or never seen. ``workers/webhook_presence.py`` moves it."""

    __tablename__ = "webhook_state"

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    key: Mapped[str] = mapped_column(String(2 * NAME_LEN + 1), primary_key=True)
    state: Mapped[str] = mapped_column(String(8))
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LogEpoch(Base):
    """The log's epoch (one row, id 1): a random id replaced whenever the log lost
    continuity (``store/epoch.py``; a trigger on ``TRUNCATE messages`` renews it too)."""

    __tablename__ = "log_epoch"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[str] = mapped_column(String(ID_LEN))
    changed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now())
