"""The durable log's day partitions on the real Postgres: made ahead, idempotent, a late
day's rows moved out of the default partition, expired days dropped whole, and an
existing log migrated by ``manage.py db upgrade``."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import Engine, create_engine, text

from service.core.envelope import Target
from service.store import messagelog, partitions
from service.store.db import drop_database
from tests.conftest import ENV

DAY_S = 24 * 3600


def where(engine: Engine, msg_id: int) -> str | None:
    """The partition a message's row is in (None: gone)."""
    with engine.connect() as db:
        return db.execute(text("SELECT tableoid::regclass::text FROM messages WHERE id = :i"),
                          {"i": msg_id}).scalar()


def test_maintain_makes_the_coming_days_once(engine: Engine) -> None:
    now = datetime.now(UTC)
    partitions.maintain(engine, DAY_S, now)
    made, dropped = partitions.maintain(engine, DAY_S, now)  # again: nothing to do
    assert (made, dropped) == ([], [])
    with engine.connect() as db:
        days = partitions.day_partitions(db)
    today = now.date()
    assert {today + timedelta(days=n) for n in range(partitions.AHEAD_DAYS + 1)} <= set(days)
    msg_id = messagelog.append(engine, "t", Target.all(), "e", msgspec.Raw(b"1"))
    assert where(engine, msg_id) == partitions.partition_name(today)
    with engine.connect() as db:  # each day has the parent's indexes, replay's among them
        indexes = set(db.execute(text(
            "SELECT indexdef FROM pg_indexes WHERE tablename = :t"),
            {"t": partitions.partition_name(today)}).scalars())
    assert any("(target_kind, target_key, id)" in i for i in indexes), indexes


def test_a_day_without_its_partition_is_moved_in_when_it_is_made(engine: Engine) -> None:
    later = datetime.now(UTC) + timedelta(days=40)  # past what maintenance made ahead
    msg_id = messagelog.append(engine, "t", Target.user("u"), "late", msgspec.Raw(b"2"))
    with engine.begin() as db:
        db.execute(text("UPDATE messages SET created_at = :at WHERE id = :i"),
                   {"at": later, "i": msg_id})
    assert where(engine, msg_id) == partitions.DEFAULT
    results: list[Any] = []

    def maintainer() -> None:
        try:
            results.append(partitions.maintain(engine, 100 * DAY_S, later))  # nothing expires
        except Exception as exc:  # reported below: the test fails on it
            results.append(exc)

    threads = [threading.Thread(target=maintainer) for _ in range(2)]  # two at once
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2 and not [r for r in results if isinstance(r, Exception)], results
    made = [name for r in results for name in r[0]]
    assert made.count(partitions.partition_name(later.date())) == 1  # made once, by one
    assert where(engine, msg_id) == partitions.partition_name(later.date())


def test_two_maintainers_drop_an_expired_day_once(engine: Engine) -> None:
    now = datetime.now(UTC)
    old_day = (now - timedelta(days=9)).date()
    with engine.begin() as db:
        partitions.create_day(db, old_day)
    results: list[Any] = []

    def maintainer() -> None:
        try:
            results.append(partitions.maintain(engine, 3 * DAY_S, now))
        except Exception as exc:  # reported below: the test fails on it
            results.append(exc)

    threads = [threading.Thread(target=maintainer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2 and not [r for r in results if isinstance(r, Exception)], results
    dropped = [name for r in results for name in r[1]]
    assert dropped.count(partitions.partition_name(old_day)) == 1


def test_retention_drops_whole_days(engine: Engine) -> None:
    now = datetime.now(UTC)
    old_day = (now - timedelta(days=5)).date()
    with engine.begin() as db:
        partitions.create_day(db, old_day)
        # a day's worth of rows, quickly: the drop costs the same for any number of them
        db.execute(text(
            "INSERT INTO messages (target_kind, target_key, event, data, origin, created_at) "
            "SELECT 'all', '', 'old', '1', 't', :at FROM generate_series(1, 20000)"),
            {"at": datetime(old_day.year, old_day.month, old_day.day, 12, tzinfo=UTC)})
    kept = messagelog.append(engine, "t", Target.all(), "kept", msgspec.Raw(b"3"))
    _, dropped = partitions.maintain(engine, 2 * DAY_S, now)
    assert partitions.partition_name(old_day) in dropped
    with engine.connect() as db:
        assert db.execute(text("SELECT count(*) FROM messages WHERE event = 'old'")).scalar() == 0
        assert old_day not in partitions.day_partitions(db)
    assert where(engine, kept) is not None


def test_upgrade_migrates_an_existing_log_and_downgrade_restores_it(runner: Any) -> None:
    url = ENV["HERALD_DATABASE_URL"] + "_part_" + uuid.uuid4().hex[:6]
    env = {"HERALD_DATABASE_URL": url}
    try:
        runner("db", "upgrade", "0003", env=env)
        engine = create_engine(url)
        with engine.begin() as db:
            db.execute(text(
                "INSERT INTO messages (target_kind, target_key, event, data, origin, "
                "dedupe_key, created_at) VALUES ('user', 'u', 'a', '1', 't', NULL, "
                "now() - interval '3 days'), ('user', 'u', 'b', '2', 't', 'task-1:done', "
                "now())"))
            before = db.execute(text("SELECT id, event FROM messages ORDER BY id")).all()
        runner("db", "upgrade", env=env)
        with engine.connect() as db:
            after = db.execute(text("SELECT id, event FROM messages ORDER BY id")).all()
            keys = db.execute(text("SELECT key, message_id FROM message_keys")).all()
            kinds = db.execute(text("SELECT relkind FROM pg_class WHERE relname = 'messages'"))
            assert kinds.scalar() == "p"  # partitioned
        assert after == before and keys == [("task-1:done", before[1][0])]
        new = messagelog.append(engine, "t", Target.all(), "c", msgspec.Raw(b"3"))
        assert new > before[-1][0]  # the same sequence goes on
        again = messagelog.append(engine, "t", Target.user("u"), "b", msgspec.Raw(b"9"),
                                  "task-1:done")
        assert again == before[1][0]  # a migrated dedupe key still dedupes
        runner("db", "downgrade", "0003", env=env)
        with engine.connect() as db:
            flat = db.execute(text("SELECT id, event, dedupe_key FROM messages ORDER BY id"))
            assert [tuple(r) for r in flat] == [(before[0][0], "a", None),
                                                (before[1][0], "b", "task-1:done"),
                                                (new, "c", None)]
        engine.dispose()
    finally:
        drop_database(url)
