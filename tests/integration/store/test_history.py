"""A group's history from the log: pages by id both ways, ``gap`` at the retention edge,
one index walk per page (EXPLAIN), and the log's epoch changing when continuity is lost."""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec
from sqlalchemy import create_engine, text

from service.core.envelope import Target
from service.store import epoch, history, messagelog
from service.store.db import drop_database
from service.store.models import Message
from tests.conftest import ENV


def _group() -> tuple[str, str]:
    return "hs", f"g-{uuid.uuid4().hex[:8]}"


def _publish(engine: Any, scope: str, group: str, n: int) -> list[int]:
    return [messagelog.append(engine, "t", Target.group(group, scope), "e",
                              msgspec.Raw(msgspec.json.encode({"i": i}))) for i in range(n)]


def test_pages_go_back_and_forth_by_id(engine: Any) -> None:
    scope, group = _group()
    ids = _publish(engine, scope, group, 7)
    _publish(engine, scope, "other-" + group, 3)  # another group's events never show
    newest = history.page(engine, scope, group, limit=3)
    assert [e.id for e in newest.events] == ids[4:] and newest.gap is False
    back = history.page(engine, scope, group, limit=3, before=ids[4])
    assert [e.id for e in back.events] == ids[1:4] and back.gap is False
    forward = history.page(engine, scope, group, limit=3, after=ids[1])
    assert [e.id for e in forward.events] == ids[2:5] and forward.gap is False
    rest = history.page(engine, scope, group, limit=100, after=ids[4])
    assert [e.id for e in rest.events] == ids[5:] and rest.gap is False
    between = history.page(engine, scope, group, after=ids[1], before=ids[4])
    assert [e.id for e in between.events] == ids[2:4]
    env = newest.events[-1]
    assert env.target == {"group": group, "scope": scope} and env.event == "e"
    assert msgspec.json.decode(env.data) == {"i": 6}
    assert history.rewind(engine, scope, group, 1)[0].id == ids[-1]  # last value


def test_gap_when_retention_cut_the_range(engine: Any) -> None:
    scope, group = _group()
    ids = _publish(engine, scope, group, 4)
    with engine.begin() as db:  # retention removed everything up to ids[1]
        db.execute(Message.__table__.delete().where(Message.id <= ids[1]))
    cut = history.page(engine, scope, group, after=ids[0] - 1)
    assert [e.id for e in cut.events] == ids[2:] and cut.gap is True
    exhausted = history.page(engine, scope, group, limit=10)
    assert [e.id for e in exhausted.events] == ids[2:] and exhausted.gap is True
    # a page that does not reach back to the edge vouches for its own range
    assert history.page(engine, scope, group, limit=1).gap is False
    assert history.page(engine, scope, group, after=ids[2]).gap is False


def test_a_page_is_one_walk_of_the_target_index(engine: Any) -> None:
    scope, group = _group()
    _publish(engine, scope, group, 3)
    with engine.connect() as db:
        db.execute(text("SET enable_seqscan = off"))  # tiny test tables: ask what it can use
        for cursor in ("AND id < 1000000000", "AND id > 0"):
            order = "ASC" if ">" in cursor else "DESC"
            plan = "\n".join(db.execute(text(
                "EXPLAIN SELECT id FROM messages WHERE target_kind = 'group' AND "
                f"target_key = :k {cursor} ORDER BY id {order} LIMIT 100"),
                {"k": f"{scope}/{group}"}).scalars())
            # each partition's copy of ix_messages_target, in id order: no sort
            assert "messages_p" in plan and "target_kind_target_key_id_idx" in plan, plan
            assert not re.search(r"(^|->)\s*Sort\s+\(", plan, re.M), plan


def test_epoch_changes_when_the_log_loses_continuity(runner: Any) -> None:
    url = ENV["HERALD_DATABASE_URL"] + "_ep_" + uuid.uuid4().hex[:6]
    env = {"HERALD_DATABASE_URL": url}
    try:
        runner("db", "upgrade", env=env)
        eng = create_engine(url)
        first = epoch.read(eng)
        assert first and epoch.read(eng) == first  # stable while nothing happens
        cached, fresh = epoch.EpochCache(refresh_s=3600), epoch.EpochCache(refresh_s=0)
        assert cached.current(eng) == fresh.current(eng) == first
        renewed = runner("db", "new-epoch", env=env).stdout.strip()
        assert renewed == epoch.read(eng) != first
        # a frontend serves what it read until its refresh is due, then the new one
        assert cached.current(eng) == first and fresh.current(eng) == renewed
        seen = {first, renewed}
        for statement in ("TRUNCATE messages", "ALTER SEQUENCE messages_id_seq RESTART",
                          "TRUNCATE messages RESTART IDENTITY"):
            with eng.begin() as db:
                db.execute(text(statement))
            now = epoch.read(eng)
            assert now not in seen, statement
            seen.add(now)
        runner("db", "upgrade", env=env)  # an upgrade keeps the epoch
        assert epoch.read(eng) == now
        eng.dispose()
    finally:
        drop_database(url)
