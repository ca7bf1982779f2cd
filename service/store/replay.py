"""Replay from the durable log: what a resuming client, or a frontend whose queue was
gone, missed.

Log ids come from a sequence when a row is inserted but become visible when its
transaction commits, so id 100 can appear after id 101 has been delivered. A client
that reports ``last_id = 101`` therefore gets everything after 101 *and* every row of its
targets created up to ``LATE_COMMIT_GRACE_S`` before row 101 was. Rows it already had come
again with the same id and the client drops them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
from sqlalchemy import Engine, Text, and_, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from service.core.envelope import Envelope, Target
from service.store.models import Message

#: How far before ``last_id``'s own row a replay looks for rows that committed late.
LATE_COMMIT_GRACE_S = 5.0
#: Default most messages replayed to one hello (``HERALD_REPLAY_LIMIT``); beyond it the
#: client is told ``gap: true`` and resyncs.
DEFAULT_REPLAY_LIMIT = 1000
#: Rows read and queued at a time while a replay streams (the rest are only ids).
REPLAY_SLICE = 100
#: Cap of the frontend's own bus-gap replay (``since``), not a client's.
MAX_SINCE = 100_000


@dataclass(frozen=True)
class Replay:
    envelopes: list[Envelope]
    gap: bool  # True: some of what the client missed is gone (retention) or not replayed


@dataclass(frozen=True)
class Plan:
    """What one client is to be replayed: the ids (8 bytes each), and the rows already read
    when they all fit one slice (the common case: a resume that missed a few messages)."""

    ids: list[int]
    gap: bool
    read: list[Envelope] | None = None  # every row of ``ids``, when read with the plan

    def batches(self, engine: Engine, size: int = REPLAY_SLICE) -> Iterator[list[Envelope]]:
        """The messages in log order, a slice at a time (read as they are asked for)."""
        if self.read is not None:
            yield self.read
            return
        for i in range(0, len(self.ids), size):
            yield fetch(engine, self.ids[i:i + size])


def _envelopes(rows: Iterable[tuple[int, str, str, str, str, datetime, str]]) -> list[Envelope]:
    return [Envelope(origin=origin, kind="event", target=Target.from_log(kind, key).as_json(),
                     event=event, data=msgspec.Raw(data.encode()), ts=created.timestamp(),
                     id=msg_id)
            for msg_id, kind, key, event, data, created, origin in rows]


_COLUMNS = (Message.id, Message.target_kind, Message.target_key, Message.event,
            Message.data.cast(Text), Message.created_at, Message.origin)


#: A message's time is its transaction's start; it reached sockets at most this much later.
OPEN_MARGIN_S = 1.0


def plan(engine: Engine, *, user_id: str, connection_id: str | None,
         groups: Iterable[tuple[str, str]], last_id: int,
         session_start: datetime | None = None,
         limit: int = DEFAULT_REPLAY_LIMIT) -> Plan:
    """What this client is to be replayed: the durable messages for its targets that it has
    not seen, in log order, at most ``limit`` of them (``gap`` when there were more); the
    rows too when they fit one slice, else only their ids.

    ``session_start``: when the resumed connection first connected; nothing older is
    replayed, however far the late-commit grace reaches back."""
    addressed = [Message.target_kind == "all",
                 and_(Message.target_kind == "user", Message.target_key == user_id)]
    if connection_id:
        addressed.append(and_(Message.target_kind == "connection",
                              Message.target_key == connection_id))
    group_keys = [f"{scope}/{group}" for scope, group in groups]
    if group_keys:
        addressed.append(and_(Message.target_kind == "group",
                              Message.target_key.in_(group_keys)))
    with engine.connect() as db:
        anchor = db.execute(select(Message.created_at).where(Message.id == last_id)).scalar()
        newer = Message.id > last_id
        if anchor is not None:
            newer = or_(newer, Message.created_at >= anchor - timedelta(
                seconds=LATE_COMMIT_GRACE_S))
        if session_start is not None:
            newer = and_(newer, Message.created_at >= session_start - timedelta(
                seconds=OPEN_MARGIN_S))
        wanted = (or_(*addressed), newer)
        # what the grace re-sends (ids up to last_id) does not use up the limit: the
        # window is ``limit`` messages after last_id (at most ``limit`` more re-sent)
        again = 0 if anchor is None else min(limit, db.execute(
            select(func.count()).select_from(Message)
            .where(*wanted, Message.id <= last_id)).scalar_one())
        limit += again
        head = min(limit, REPLAY_SLICE)
        rows = db.execute(select(*_COLUMNS).where(*wanted).order_by(Message.id)
                          .limit(head + 1)).all()
        read: list[Envelope] | None = None
        if len(rows) <= head:  # it all fits one slice: no second query
            ids, read = [row[0] for row in rows], _envelopes(rows)
        else:  # more: only the ids now; the rows come a slice at a time as they are sent
            ids = list(db.execute(select(Message.id).where(*wanted).order_by(Message.id)
                                  .limit(limit + 1)).scalars())
        oldest = db.execute(select(func.min(Message.id))).scalar()
    # last_id's row pruned while newer ones remain: some of what followed it may be gone
    gap = last_id > 0 and anchor is None and oldest is not None and oldest > last_id + 1
    if len(ids) > limit:
        ids, gap = ids[:limit], True
    return Plan(ids, gap, read)


def fetch(engine: Engine, ids: list[int]) -> list[Envelope]:
    """The messages with these ids, in log order (one slice of a replay; a row pruned
    since the plan was made is simply not there)."""
    if not ids:
        return []
    with engine.connect() as db:
        rows = db.execute(select(*_COLUMNS).where(Message.id.in_(ids))
                          .order_by(Message.id)).all()
    return _envelopes(rows)


def missed(engine: Engine, *, user_id: str, connection_id: str | None,
           groups: Iterable[tuple[str, str]], last_id: int,
           session_start: datetime | None = None,
           limit: int = DEFAULT_REPLAY_LIMIT) -> Replay:
    """``plan`` and every slice of it at once (for callers that want the whole list)."""
    p = plan(engine, user_id=user_id, connection_id=connection_id, groups=groups,
             last_id=last_id, session_start=session_start, limit=limit)
    return Replay([env for batch in p.batches(engine) for env in batch], p.gap)


def latest_id(engine: Engine) -> int:
    """The newest id in the log (0 when empty)."""
    with engine.connect() as db:
        return int(db.execute(select(func.coalesce(func.max(Message.id), 0))).scalar_one())


class LogHead:
    """The newest durable id a frontend knows of, for ``welcome.log_id``, without a query
    per hello: read from the log once, then raised by every durable id the frontend logs
    or receives.

    It may trail the log (a message still on its way here), never lead it. A client that
    has seen no durable id resumes from it; one that trails only makes the replay reach
    back further, and the replay never goes past the client's own session start, so
    nothing is lost and nothing older than the session is sent.
    """

    def __init__(self) -> None:
        self.id: int | None = None  # None: not read from the log yet
        self._reading = threading.Lock()  # one read, not one per hello of the first storm

    def seen(self, msg_id: int | None) -> None:
        if msg_id is not None and (self.id is None or msg_id > self.id):
            self.id = msg_id

    def current(self, engine: Engine) -> int | None:
        """The newest id; reads the log the first time (None while it cannot)."""
        if self.id is None:
            with self._reading:
                if self.id is None:
                    try:
                        self.seen(latest_id(engine))
                    except SQLAlchemyError:
                        return None
        return self.id


def since(engine: Engine, start: datetime) -> list[Envelope]:
    """Every durable message logged since ``start`` (minus the grace), for a frontend
    that was cut off from the fanout; its local sockets get what matches them."""
    cutoff = start - timedelta(seconds=LATE_COMMIT_GRACE_S)
    with engine.connect() as db:
        rows = db.execute(select(*_COLUMNS).where(Message.created_at >= cutoff)
                          .order_by(Message.id).limit(MAX_SINCE)).all()
    return _envelopes(rows)
