"""service.store.messagelog.append against this run's real Postgres database."""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec
import pytest
from sqlalchemy import Engine, text

from service.core.envelope import Target
from service.store.messagelog import append
from tests.support import in_threads


def origin() -> str:
    return f"fe-{uuid.uuid4().hex[:12]}"


def row(engine: Engine, msg_id: int) -> dict[str, Any]:
    with engine.connect() as db:
        r = db.execute(text("SELECT target_kind, target_key, event, data, origin, "
                            "jsonb_typeof(data) AS typ, data IS NULL AS sql_null "
                            "FROM messages WHERE id = :i"), {"i": msg_id}).mappings().one()
    return dict(r)


def same_json(engine: Engine, msg_id: int, raw: bytes) -> bool:
    """Compare in SQL: the stored JSONB equals the publisher's JSON text parsed by Postgres."""
    with engine.connect() as db:
        return bool(db.execute(text("SELECT data = CAST(:raw AS jsonb) FROM messages "
                                    "WHERE id = :i"), {"raw": raw.decode(), "i": msg_id}).scalar())


def test_append_returns_increasing_ids(engine: Engine) -> None:
    o = origin()
    ids = [append(engine, o, Target.all(), "e", msgspec.Raw(str(i).encode())) for i in range(5)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    with engine.connect() as db:
        stored = db.execute(text("SELECT id, data FROM messages WHERE origin = :o ORDER BY id"),
                            {"o": o}).all()
    assert [(r.id, r.data) for r in stored] == list(zip(ids, range(5), strict=True))


@pytest.mark.parametrize("raw", [
    b'{"text": "hello", "n": 1.5, "nested": {"list": [1, null, true]}}',
    b'"\\u00e9t\\u00e9 \xe2\x82\xac"',
    b"[]",
    b"12345678901234567890",
    b"null",
    b'{"b": 1,\n "a": [ ] }',
])
def test_data_is_stored_exactly(engine: Engine, raw: bytes) -> None:
    msg_id = append(engine, origin(), Target.user("u1"), "evt", msgspec.Raw(raw))
    assert same_json(engine, msg_id, raw)
    r = row(engine, msg_id)
    assert r["data"] == json.loads(raw)
    assert r["sql_null"] is False  # JSON null is stored as JSON, not as SQL NULL


def test_empty_raw_is_stored_as_json_null(engine: Engine) -> None:
    msg_id = append(engine, origin(), Target.all(), "e", msgspec.Raw(b""))
    r = row(engine, msg_id)
    assert (r["typ"], r["data"], r["sql_null"]) == ("null", None, False)


@pytest.mark.parametrize(("target", "kind", "key"), [
    (Target.all(), "all", ""),
    (Target.group("g", "room"), "group", "room/g"),
    (Target.group("g"), "group", "default/g"),
    (Target.user("u7"), "user", "u7"),
    (Target.connection("c7"), "connection", "c7"),
])
def test_target_columns(engine: Engine, target: Target, kind: str, key: str) -> None:
    o = origin()
    msg_id = append(engine, o, target, "evt.name", msgspec.Raw(b"{}"))
    r = row(engine, msg_id)
    assert (r["target_kind"], r["target_key"], r["event"], r["origin"]) == (
        kind, key, "evt.name", o)


def test_dedupe_key_returns_the_first_id(engine: Engine) -> None:
    key = f"task-{uuid.uuid4().hex}:succeeded"
    o = origin()
    first = append(engine, o, Target.user("u"), "task.succeeded", msgspec.Raw(b'{"r": 1}'), key)
    second = append(engine, o, Target.user("u"), "task.succeeded", msgspec.Raw(b'{"r": 2}'), key)
    assert second == first
    assert row(engine, first)["data"] == {"r": 1}  # the copy changed nothing
    with engine.connect() as db:
        assert db.execute(text("SELECT message_id FROM message_keys WHERE key = :k"),
                          {"k": key}).scalars().all() == [first]
        assert db.execute(text("SELECT count(*) FROM messages WHERE id = :i"),
                          {"i": first}).scalar() == 1
    third = append(engine, o, Target.user("u"), "task.succeeded", msgspec.Raw(b"1"), key + "x")
    assert third > first


def test_without_dedupe_key_every_append_is_new(engine: Engine) -> None:
    o = origin()
    a = append(engine, o, Target.all(), "e", msgspec.Raw(b"1"))
    b = append(engine, o, Target.all(), "e", msgspec.Raw(b"1"))
    assert b > a


def test_append_many_writes_in_order_and_a_bad_entry_fails_alone(engine: Engine) -> None:
    from service.store.messagelog import Entry, append_many

    o = origin()
    entries = [Entry(Target.all(), "e", msgspec.Raw(b'{"i": %d}' % i)) for i in range(5)]
    entries.insert(2, Entry(Target.user("u"), "e", msgspec.Raw(b'"nul \\u0000"')))
    entries.insert(4, Entry(Target.all(), "e", msgspec.Raw(b'"\xff"')))
    out = append_many(engine, o, entries)
    assert [type(r).__name__ for r in out] == ["int", "int", "BadRequest", "int",
                                               "BadRequest", "int", "int"]
    ids = [r for r in out if isinstance(r, int)]
    assert ids == sorted(ids)
    with engine.connect() as db:
        stored = db.execute(text("SELECT id, data FROM messages WHERE origin = :o ORDER BY id"),
                            {"o": o}).all()
    assert [(r.id, r.data) for r in stored] == [(i, {"i": n}) for i, n in zip(ids, range(5),
                                                                               strict=True)]


def test_concurrent_durable_publishes_share_inserts_and_bus_messages(engine: Engine) -> None:
    """LogPublisher from 8 threads on the real broker: every message logged once with its
    own id, and what reached the exchange (batches included) is exactly the logged
    messages, in id order."""
    from kombu import Connection, Queue

    from service.bus.amqp import BusPublisher, fanout_exchange, routed_exchange
    from service.cluster.pipeline import LogPublisher
    from service.core.envelope import decode_bus
    from tests.conftest import ENV

    url, name = ENV["HERALD_BROKER_URL"], f"herald_test_{ENV['HERALD_NS']}.log.{origin()}"
    with Connection(url) as conn:
        channel = conn.channel()
        exchange = fanout_exchange(name)
        exchange(channel).declare()
        queue = Queue("", exchange=exchange, exclusive=True, auto_delete=True, channel=channel)
        queue.declare()
        bus, o = BusPublisher(url, name, confirm=True), origin()  # routed when it returns
        pub = LogPublisher(engine, bus, o)
        ids: list[int] = []

        def work(t: int) -> None:
            for i in range(25):
                msg_id = pub.publish(Target.all(), "e", msgspec.Raw(b'[%d, %d]' % (t, i)),
                                     True)
                assert msg_id is not None
                ids.append(msg_id)

        try:
            in_threads(work, 8)
            bodies = []
            while (message := queue.get(no_ack=True)) is not None:
                bodies.append(message.body)
        finally:
            bus.close()
            exchange(channel).delete()
            routed_exchange(name)(channel).delete()  # the publisher declares both
    assert len(set(ids)) == 200
    envs = [e for body in bodies for e in decode_bus(body)]
    assert [e.id for e in envs] == sorted(ids)  # one bus order, the log's order
    assert len(bodies) < 200  # some publishes shared a batch
    with engine.connect() as db:
        n = db.execute(text("SELECT count(*) FROM messages WHERE origin = :o"), {"o": o}).scalar()
    assert n == 200
