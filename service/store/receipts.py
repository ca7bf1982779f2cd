"""Delivery receipts in Postgres: the publisher's request, each frontend's count, the report.

Only messages published with ``receipt: true`` touch this table: the request row is
written with the log row (one transaction), and a frontend adds one row per message it
wrote to sockets, many messages in one statement (``cluster/receipts.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import Engine, select, text
from sqlalchemy.dialects.postgresql import insert

from service.core.envelope import Target
from service.store.messagelog import append_in
from service.store.models import Message, MessageReceipt

#: The ``frontend_id`` of the row that says a receipt was asked for.
REQUESTED = ""


def append_requested(engine: Engine, origin: str, target: Target, event: str,
                     data: msgspec.Raw) -> int:
    """Log a durable message and its receipt request in one transaction; its id."""
    with engine.begin() as db:
        msg_id = append_in(db, origin, target, event, data)
        db.execute(insert(MessageReceipt).values(message_id=msg_id, frontend_id=REQUESTED))
    return msg_id


def record(engine: Engine, frontend_id: str, counts: Sequence[tuple[int, int]]) -> None:
    """Add one frontend's ``(message id, sockets written)`` counts (a message delivered
    in two pieces adds up)."""
    if not counts:
        return
    stmt = insert(MessageReceipt).values(
        [{"message_id": m, "frontend_id": frontend_id, "sockets": n} for m, n in counts])
    stmt = stmt.on_conflict_do_update(
        index_elements=[MessageReceipt.message_id, MessageReceipt.frontend_id],
        set_={"sockets": MessageReceipt.sockets + stmt.excluded.sockets})
    with engine.begin() as db:
        db.execute(stmt)


def report(engine: Engine, msg_id: int) -> dict[str, Any] | None:
    """``{id, delivered: {frontend: sockets}, offline_users}``, or None when no receipt
    was asked for (or it is older than the log's retention)."""
    with engine.connect() as db:
        rows = db.execute(select(MessageReceipt.frontend_id, MessageReceipt.sockets)
                          .where(MessageReceipt.message_id == msg_id)).all()
        if not any(fe == REQUESTED for fe, _ in rows):
            return None
        target = db.execute(select(Message.target_kind, Message.target_key)
                            .where(Message.id == msg_id)).first()
    delivered = {fe: int(n) for fe, n in rows if fe != REQUESTED and n > 0}
    # a user-targeted message no frontend wrote to a socket of: that user was offline
    offline = ([target.target_key] if target is not None and target.target_kind == "user"
               and not delivered else [])
    return {"id": msg_id, "delivered": delivered, "offline_users": offline}


def prune(engine: Engine, ttl_s: float) -> None:
    """Delete receipts older than the log's retention (by the created_at index)."""
    with engine.begin() as db:
        db.execute(text("DELETE FROM message_receipts WHERE created_at < "
                        "now() - make_interval(secs => :ttl)"), {"ttl": ttl_s})
