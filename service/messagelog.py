"""The durable message log: written before a durable message is published."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from sqlalchemy import Engine, Text, cast, literal, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.exc import DataError

from .envelope import Target
from .errors import BadRequest
from .models import Message

log = logging.getLogger(__name__)


def append(engine: Engine, origin: str, target: Target, event: str, data: msgspec.Raw,
           dedupe_key: str | None = None) -> int:
    """Write one durable message and return its log id.

    With a ``dedupe_key`` (a task's outcome) a second append returns the first one's id,
    so a task that runs again after a crash re-publishes under the same id and clients
    drop the copy.
    """
    try:
        raw_text = bytes(data).decode() if len(data) else "null"
    except UnicodeDecodeError:
        raise BadRequest("data is not valid UTF-8") from None
    values = {
        "target_kind": target.kind,
        "target_key": target.log_key(),
        "event": event,
        # the publisher's JSON goes in as text and Postgres parses it: no decode here
        "data": cast(literal(raw_text, Text), JSONB),
        "origin": origin,
        "dedupe_key": dedupe_key,
    }
    try:
        return _insert(engine, values, dedupe_key)
    except DataError:
        # Postgres' jsonb has no \u0000; tell the publisher rather than fail inside
        raise BadRequest("data cannot be stored (a \\u0000 in a string?)") from None


def _insert(engine: Engine, values: dict[str, Any], dedupe_key: str | None) -> int:
    with engine.begin() as db:
        stmt = insert(Message).values(**values)
        if dedupe_key is not None:
            stmt = stmt.on_conflict_do_nothing(index_elements=[Message.dedupe_key])
        msg_id = db.execute(stmt.returning(Message.id)).scalar()
        if msg_id is None:
            msg_id = db.execute(
                select(Message.id).where(Message.dedupe_key == dedupe_key)).scalar_one()
    return int(msg_id)


def log_and_publish(engine: Engine, bus: Any, origin: str, target: Target, event: str,
                    data: msgspec.Raw, durable: bool, dedupe_key: str | None = None) -> int | None:
    """A write-only publisher's path (workers, backends): log first when durable, then
    publish. A broker outage is survivable for a durable message (it is in the log and
    frontends replay it when they reconnect), not for a transient one."""
    from .bus import BROKER_ERRORS
    from .envelope import encode, make_envelope

    msg_id = append(engine, origin, target, event, data, dedupe_key) if durable else None
    try:
        bus.publish(encode(make_envelope(origin, target, event, data, msg_id)))
    except BROKER_ERRORS as exc:
        if not durable:
            raise
        log.warning("broker unavailable, message %s stays in the log for replay: %s",
                    msg_id, exc)
    return msg_id
