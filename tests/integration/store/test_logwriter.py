"""service.store.logwriter.LogWriter (the group commit's one-round-trip insert) against
this run's real Postgres: ids in entry order, what it stores, refusals, its connection."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DataError, OperationalError

from service.core.envelope import Target
from service.core.errors import BadRequest
from service.store import logwriter
from service.store.logwriter import LogWriter
from service.store.messagelog import Entry
from tests.support import in_threads


def entry(target: Target, event: str, data: bytes) -> Entry:
    return Entry(target, event, msgspec.Raw(data))


def rows(engine: Engine, ids: list[int]) -> list[dict[str, Any]]:
    with engine.connect() as db:
        found = db.execute(text(
            "SELECT id, target_kind, target_key, event, data, origin FROM messages "
            "WHERE id = ANY(:ids) ORDER BY id"), {"ids": ids}).mappings().all()
    return [dict(r) for r in found]


def test_a_batch_gets_ids_in_entry_order_and_is_stored_as_given(engine: Engine) -> None:
    origin = f"fe-{uuid.uuid4().hex[:8]}"
    writer = LogWriter(engine, origin)
    batch = [entry(Target.group("room", "acme"), "a", b'{"n": 1}'),
             entry(Target.user("u1"), "b", b""),  # no data: JSON null
             entry(Target.all(), "c", b'"\xff"'),  # not UTF-8: this entry alone refused
             entry(Target.connection("c1"), "d", b"[1, 2]")]
    ids = writer.append_many(batch)
    assert isinstance(ids[2], BadRequest) and "UTF-8" in ids[2].message
    good = [i for i in ids if isinstance(i, int)]
    assert good == sorted(good) and len(set(good)) == 3
    stored = rows(engine, good)
    assert [(r["target_kind"], r["target_key"], r["event"], r["data"], r["origin"])
            for r in stored] == [("group", "acme/room", "a", {"n": 1}, origin),
                                 ("user", "u1", "b", None, origin),
                                 ("connection", "c1", "d", [1, 2], origin)]
    writer.close()


def test_concurrent_batches_each_keep_their_order(engine: Engine) -> None:
    writer = LogWriter(engine, "fe-order")
    results: list[list[int | BadRequest]] = []

    def one(k: int) -> None:
        results.append(writer.append_many([entry(Target.all(), f"e{k}", str(j).encode())
                                           for j in range(20)]))

    in_threads(one, 4)
    assert len(results) == 4
    for ids in results:
        stored = rows(engine, [i for i in ids if isinstance(i, int)])
        assert [r["data"] for r in stored] == list(range(20))
    writer.close()


def test_a_row_postgres_refuses_raises_data_error_and_the_writer_goes_on(
        engine: Engine) -> None:
    writer = LogWriter(engine, "fe-nul")
    with pytest.raises(DataError):
        writer.append_many([entry(Target.all(), "x", b'"a\\u0000b"')])
    [ok] = writer.append_many([entry(Target.all(), "y", b"1")])
    assert isinstance(ok, int)
    writer.close()


def test_a_connection_killed_under_it_costs_one_publish_then_it_reconnects(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = LogWriter(engine, "fe-kill")
    writer.append_many([entry(Target.all(), "x", b"1")])
    held = writer._held
    assert held is not None  # kept for the next batch
    pid = held.connection.driver_connection.info.backend_pid
    with engine.connect() as db:
        db.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        db.commit()
    with pytest.raises(OperationalError):
        writer.append_many([entry(Target.all(), "x", b"2")])
    [ok] = writer.append_many([entry(Target.all(), "x", b"3")])
    assert isinstance(ok, int)
    # idle past HELD_IDLE_S: the connection goes back to the pool (which pings it) first
    monkeypatch.setattr(logwriter, "HELD_IDLE_S", 0.0)
    before = writer._held
    writer.append_many([entry(Target.all(), "x", b"4")])
    assert writer._held is not before
    writer.close()
    assert writer._held is None


def test_a_log_publisher_gives_its_connection_back_when_no_batch_waits(
        engine: Engine) -> None:
    """Many publishers on one engine (a backend process, a test run) that each publish and
    go quiet: none keeps a connection out of the pool."""
    from service.bus.memory import MemoryPublisher
    from service.cluster.pipeline import LogPublisher

    before = engine.pool.checkedout()  # type: ignore[attr-defined]
    publishers = [LogPublisher(engine, MemoryPublisher("memory://logwriter", "x"), f"fe-{k}")
                  for k in range(12)]  # more than the pool's size and overflow
    for pub in publishers:
        assert pub.publish(Target.all(), "e", msgspec.Raw(b"1"), True) is not None
    assert engine.pool.checkedout() == before  # type: ignore[attr-defined]
