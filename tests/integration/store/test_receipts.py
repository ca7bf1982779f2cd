"""service.store.receipts against this run's real Postgres."""

from __future__ import annotations

import msgspec
from sqlalchemy import Engine, text

from service.core.envelope import Target
from service.store import receipts
from service.store.messagelog import append


def test_counts_add_up_per_frontend_and_only_requested_messages_report(engine: Engine) -> None:
    msg_id = receipts.append_requested(engine, "o", Target.user("ann"), "e", msgspec.Raw(b"1"))
    assert receipts.report(engine, msg_id) == {"id": msg_id, "delivered": {},
                                               "offline_users": ["ann"]}
    receipts.record(engine, "fe-a", [(msg_id, 2)])
    receipts.record(engine, "fe-a", [(msg_id, 1)])  # delivered in two pieces
    receipts.record(engine, "fe-b", [(msg_id, 1)])
    assert receipts.report(engine, msg_id) == {"id": msg_id,
                                               "delivered": {"fe-a": 3, "fe-b": 1},
                                               "offline_users": []}
    plain = append(engine, "o", Target.all(), "e", msgspec.Raw(b"1"))
    receipts.record(engine, "fe-a", [(plain, 1)])  # a stray count asks for nothing
    assert receipts.report(engine, plain) is None


def test_prune_deletes_receipts_past_the_retention(engine: Engine) -> None:
    old = receipts.append_requested(engine, "o", Target.all(), "e", msgspec.Raw(b"1"))
    new = receipts.append_requested(engine, "o", Target.all(), "e", msgspec.Raw(b"2"))
    with engine.begin() as db:
        db.execute(text("UPDATE message_receipts SET created_at = now() - interval '2 days' "
                        "WHERE message_id = :m"), {"m": old})
    receipts.prune(engine, 24 * 3600)
    assert receipts.report(engine, old) is None
    assert receipts.report(engine, new) is not None
