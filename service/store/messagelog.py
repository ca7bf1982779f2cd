"""The durable message log: rows written before a durable message is published (the
publish pipeline itself is ``cluster.pipeline``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from sqlalchemy import Connection, Engine, Text, bindparam, cast, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.exc import DataError

from service.core.envelope import Target
from service.core.errors import BadRequest
from service.store import durability
from service.store.models import Message, MessageKey

log = logging.getLogger(__name__)

#: Most messages one POST /api/publish/batch may carry.
PUBLISH_BATCH_MAX = 500
#: The sequence every message id comes from (the log's partitions share it).
MESSAGE_ID_SEQ = "messages_id_seq"
NUL_ERROR = "data cannot be stored (a \\u0000 in a string?)"


@dataclass(frozen=True, slots=True)
class Entry:
    """One message on its way to the log and the bus."""

    target: Target
    event: str
    data: msgspec.Raw
    exclude: str | None = None
    receipt: bool = False  # frontends report the sockets they wrote it to


def json_text(data: msgspec.Raw) -> str:
    # the publisher's JSON goes in as text and Postgres parses it: no decode here
    try:
        return bytes(data).decode() if len(data) else "null"
    except UnicodeDecodeError:
        raise BadRequest("data is not valid UTF-8") from None


def append(engine: Engine, origin: str, target: Target, event: str, data: msgspec.Raw,
           dedupe_key: str | None = None) -> int:
    """Write one durable message and return its log id.

    With a ``dedupe_key`` (a task's outcome) a second append returns the first one's id,
    so a task that runs again after a crash re-publishes under the same id and clients
    drop the copy.
    """
    try:
        with engine.begin() as db:
            return append_in(db, origin, target, event, data, dedupe_key)
    except DataError:
        # Postgres' jsonb has no \u0000; tell the publisher rather than fail inside
        raise BadRequest(NUL_ERROR) from None


def append_in(db: Connection, origin: str, target: Target, event: str, data: msgspec.Raw,
              dedupe_key: str | None = None) -> int:
    """``append`` inside the caller's transaction (a task's outcome commits with its
    record in one round trip); that transaction then commits at the log's level."""
    durability.commit_at(db, durability.LOG)
    values = {
        "target_kind": target.kind,
        "target_key": target.log_key(),
        "event": event,
        "data": cast(literal(json_text(data), Text), JSONB),
        "origin": origin,
    }
    if dedupe_key is None:
        return int(db.execute(insert(Message).values(**values).returning(Message.id))
                   .scalar_one())
    # claim the key with the id the message will get; a second append finds it taken
    # (waiting for the first one's commit, if it is still open) and returns that id
    msg_id = int(db.execute(select(func.nextval(MESSAGE_ID_SEQ))).scalar_one())
    claimed = db.execute(insert(MessageKey).values(key=dedupe_key, message_id=msg_id)
                         .on_conflict_do_nothing(index_elements=[MessageKey.key])
                         .returning(MessageKey.key)).first()
    if claimed is None:
        return int(db.execute(select(MessageKey.message_id)
                              .where(MessageKey.key == dedupe_key)).scalar_one())
    db.execute(insert(Message).values(id=msg_id, **values))
    return msg_id


_MANY = insert(Message).values(
    target_kind=bindparam("k"), target_key=bindparam("key"), event=bindparam("e"),
    data=cast(bindparam("d", type_=Text), JSONB), origin=bindparam("o"),
).returning(Message.id, sort_by_parameter_order=True)


def loggable(entries: Sequence[Entry]
             ) -> tuple[list[int | BadRequest], list[tuple[Entry, str]]]:
    """Each entry's JSON text to write, or the BadRequest that entry alone earned (bad
    UTF-8): a result per entry (-1 where an id will go) and the (entry, text) pairs."""
    out: list[int | BadRequest] = []
    texts: list[tuple[Entry, str]] = []
    for entry in entries:
        try:
            texts.append((entry, json_text(entry.data)))
            out.append(-1)
        except BadRequest as exc:
            out.append(exc)
    return out, texts


def append_many(engine: Engine, origin: str, entries: Sequence[Entry]
                ) -> list[int | BadRequest]:
    """Write many durable messages in one statement and one commit; ids in entry order.

    Returns an id per entry, or the BadRequest that entry alone earned (bad UTF-8, a
    \\u0000): a bad entry never fails the others.
    """
    out, texts = loggable(entries)
    rows = [{"k": entry.target.kind, "key": entry.target.log_key(), "e": entry.event,
             "d": text, "o": origin} for entry, text in texts]
    if not rows:
        return out
    try:
        with engine.begin() as db:
            durability.commit_at(db, durability.LOG)  # a 202 survives a failover
            ids = [int(r[0]) for r in db.execute(_MANY, rows)]
    except DataError:
        if len(rows) == 1:
            return [BadRequest(NUL_ERROR) if r == -1 else r for r in out]
        # one row Postgres refused spoils the statement: write them one at a time
        return [r if isinstance(r, BadRequest) else _append_one(engine, origin, e)
                for r, e in zip(out, entries, strict=True)]
    it = iter(ids)
    return [r if isinstance(r, BadRequest) else next(it) for r in out]


def _append_one(engine: Engine, origin: str, entry: Entry) -> int | BadRequest:
    try:
        return append(engine, origin, entry.target, entry.event, entry.data)
    except BadRequest as exc:
        return exc


_KEYED = insert(Message).values(
    id=bindparam("i"), target_kind=bindparam("k"), target_key=bindparam("key"),
    event=bindparam("e"), data=cast(bindparam("d", type_=Text), JSONB), origin=bindparam("o"))


def append_keyed_many(db: Connection, origin: str, entries: Sequence[Entry],
                      keys: Sequence[str]) -> list[int]:
    """``append_in`` with a dedupe key each, for many messages, in the caller's transaction
    (the outbox relay): a key seen before gets its first id back and writes nothing. Four
    statements whatever the count (one per message was a round trip each)."""
    durability.commit_at(db, durability.LOG)
    # ids in entry order: the log's order is the caller's
    ids = sorted(int(i) for i in db.execute(
        select(func.nextval(MESSAGE_ID_SEQ)).select_from(func.generate_series(1, len(keys)))
    ).scalars())
    claimed = set(db.execute(
        insert(MessageKey).values([{"key": k, "message_id": i} for k, i in zip(keys, ids,
                                                                                strict=True)])
        .on_conflict_do_nothing(index_elements=[MessageKey.key]).returning(MessageKey.key)
    ).scalars())
    taken = [k for k in keys if k not in claimed]
    first: dict[str, int] = {}
    if taken:
        first = {k: int(i) for k, i in db.execute(
            select(MessageKey.key, MessageKey.message_id).where(MessageKey.key.in_(taken)))}
    rows = [{"i": i, "k": e.target.kind, "key": e.target.log_key(), "e": e.event,
             "d": json_text(e.data), "o": origin}
            for e, k, i in zip(entries, keys, ids, strict=True) if k in claimed]
    if rows:
        db.execute(_KEYED, rows)
    return [i if k in claimed else first[k] for k, i in zip(keys, ids, strict=True)]
