"""Replay from the log: a row that commits late is still replayed; gaps are reported;
retention prunes old messages and unresumed connections."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import msgspec
from sqlalchemy import func, insert, select, update

from service.core.envelope import Target
from service.store import messagelog, replay
from service.store.models import ConnectionRecord, FrontendRecord, Message


def _raw(v: Any) -> msgspec.Raw:
    return msgspec.Raw(msgspec.json.encode(v))


def test_a_row_that_commits_late_is_replayed(engine: Any) -> None:
    user = f"late-{uuid.uuid4().hex[:6]}"
    values = {"target_kind": "user", "target_key": user, "event": "e", "data": {"n": 1},
              "origin": "t"}
    slow = engine.connect()
    slow_tx = slow.begin()
    # takes its id first but is not visible until it commits
    early_id = slow.execute(insert(Message).values(**values).returning(Message.id)).scalar_one()
    later_id = messagelog.append(engine, "t", Target.user(user), "e", _raw({"n": 2}))
    assert later_id > early_id
    # the client sees `later_id` live and remembers it; only now does the slow row commit
    # (a large limit: the shared log holds other tests' messages to everyone too)
    seen_then = replay.missed(engine, user_id=user, connection_id=None, groups=[], last_id=0,
                              limit=1_000_000)
    seen_ids = [e.id for e in seen_then.envelopes]
    assert later_id in seen_ids and early_id not in seen_ids  # invisible until its commit
    slow_tx.commit()
    slow.close()

    again = replay.missed(engine, user_id=user, connection_id=None, groups=[],
                          last_id=later_id, limit=1_000_000)
    ids = [e.id for e in again.envelopes]
    assert early_id in ids  # not skipped although its id is below last_id
    assert ids == sorted(ids) and again.gap is False


def test_replay_addresses_only_this_clients_targets(engine: Any) -> None:
    me, other = f"me-{uuid.uuid4().hex[:6]}", f"ot-{uuid.uuid4().hex[:6]}"
    base = replay.latest_id(engine)
    mine = [messagelog.append(engine, "t", t, "e", _raw(i)) for i, t in enumerate(
        [Target.user(me), Target.group("g1", "s"), Target.connection("c-me")])]
    messagelog.append(engine, "t", Target.user(other), "e", _raw(0))
    messagelog.append(engine, "t", Target.group("g2", "s"), "e", _raw(0))
    got = replay.missed(engine, user_id=me, connection_id="c-me", groups=[("s", "g1")],
                        last_id=base, limit=1_000_000)
    by_id = {e.id: e for e in got.envelopes}
    assert set(mine) <= set(by_id)
    assert by_id[mine[1]].target == {"group": "g1", "scope": "s"}
    assert all(e.target != {"user": other} and e.target != {"group": "g2", "scope": "s"}
               for e in got.envelopes)


def test_a_gap_past_retention_is_flagged(engine: Any) -> None:
    user = f"gap-{uuid.uuid4().hex[:6]}"
    first = messagelog.append(engine, "t", Target.user(user), "e", _raw(1))
    kept = messagelog.append(engine, "t", Target.user(user), "e", _raw(2))
    kept2 = messagelog.append(engine, "t", Target.user(user), "e", _raw(3))
    with engine.begin() as db:  # retention removed everything up to `kept`
        db.execute(Message.__table__.delete().where(Message.id <= kept))
    got = replay.missed(engine, user_id=user, connection_id=None, groups=[], last_id=first)
    assert got.gap is True and kept2 in [e.id for e in got.envelopes]


def test_prune_removes_old_messages_and_unresumed_connections(engine: Any) -> None:
    from workers.maintenance import prune_log

    fid, cid = f"fe-{uuid.uuid4().hex[:6]}", f"c-{uuid.uuid4().hex[:6]}"
    old = messagelog.append(engine, "t", Target.all(), "old", _raw(0))
    new = messagelog.append(engine, "t", Target.all(), "new", _raw(0))
    with engine.begin() as db:
        db.execute(insert(FrontendRecord).values(id=fid, host="h"))
        db.execute(insert(ConnectionRecord).values(id=cid, frontend_id=None, user_id="u",
                                             detached_at=func.now() - timedelta(days=30)))
        db.execute(update(Message).where(Message.id == old)
                   .values(created_at=func.now() - timedelta(days=30)))
    assert prune_log() == 0  # no day partition expired; the old row was in the default one
    with engine.connect() as db:
        left = set(db.execute(select(Message.id).where(Message.id.in_([old, new]))).scalars())
        conn_left = db.execute(select(ConnectionRecord.id)
                               .where(ConnectionRecord.id == cid)).first()
    assert left == {new} and conn_left is None


def test_log_head_reads_the_log_once_then_follows_what_it_sees(engine: Any) -> None:
    head = replay.LogHead()
    first = messagelog.append(engine, "t", Target.all(), "e", _raw(1))
    assert head.current(engine) == first == replay.latest_id(engine)
    later = messagelog.append(engine, "t", Target.all(), "e", _raw(2))
    assert head.current(engine) == first  # no query per call: it trails until told
    head.seen(later)
    head.seen(first)  # an older id never moves it back
    head.seen(None)  # a transient message has no id
    assert head.current(engine) == later
