"""The outbox (``service.store.outbox``) and the relay's step (``service.cluster.relay``)
against this run's real Postgres and RabbitMQ: keyed appends, rollbacks, a step that fails
half way."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from sqlalchemy import Engine, MetaData, Table, func, select, text
from sqlalchemy.orm import Session

from service.bus import make_publisher
from service.cluster.pipeline import LogPublisher
from service.cluster.relay import Relay
from service.core.envelope import Target
from service.store.messagelog import Entry, append_keyed_many
from service.store.models import Message
from service.store.outbox import create_outbox, enqueue, outbox_table
from tests.conftest import ENV


@pytest.fixture
def table(engine: Engine) -> Iterator[Table]:
    name = f"outbox_{uuid.uuid4().hex[:8]}"
    create_outbox(engine, name)
    yield outbox_table(MetaData(), name)
    with engine.begin() as db:
        db.execute(text(f"DROP TABLE {name}"))


@pytest.fixture
def publisher(engine: Engine) -> Iterator[LogPublisher]:
    bus = make_publisher(ENV["HERALD_BROKER_URL"], ENV["HERALD_EXCHANGE"], confirm=True)
    yield LogPublisher(engine, bus, "relay-test")
    bus.close()


def _entry(n: int) -> Entry:
    return Entry(Target.user("outbox-user"), "ob", msgspec.Raw(b'{"n": %d}' % n))


def _rows(engine: Engine, ids: list[int]) -> int:
    with engine.connect() as db:
        return int(db.execute(select(func.count()).where(Message.id.in_(ids))).scalar_one())


def test_keyed_appends_give_a_repeated_key_its_first_id_and_no_row(engine: Engine) -> None:
    keys = [f"outbox:{uuid.uuid4()}" for _ in range(4)]
    with engine.begin() as db:
        first = append_keyed_many(db, "o", [_entry(n) for n in range(2)], keys[:2])
    assert first == sorted(first)
    with engine.begin() as db:  # two seen before, two new, in one call
        again = append_keyed_many(db, "o", [_entry(n) for n in range(4)], keys)
    assert again[:2] == first and len(set(again)) == 4 and again[2] < again[3]
    assert _rows(engine, again) == 4


def test_enqueue_commits_and_rolls_back_with_the_callers_transaction(
        engine: Engine, table: Table) -> None:
    with engine.begin() as db:
        kept = enqueue(db, Target.group("g"), "e", {"a": 1}, table=table)
    with Session(engine) as session:
        enqueue(session, Target.all(), "e", None, table=table)
        session.rollback()
    with engine.connect() as db:
        assert db.execute(select(table.c.id, table.c.target_kind, table.c.target_key,
                                 table.c.data)).all() == [(kept, "group", "default/g",
                                                           {"a": 1})]


def test_a_step_that_fails_after_logging_leaves_its_rows_and_the_next_logs_nothing_new(
        engine: Engine, table: Table, publisher: LogPublisher,
        monkeypatch: Any) -> None:
    with engine.begin() as db:
        for n in range(3):
            enqueue(db, Target.user("outbox-user"), "ob", {"n": n}, table=table)
    relay = Relay(engine, engine, publisher, "test", batch=2, table=table)

    def broken_send(entries: Any, ids: list[int]) -> None:
        sent.extend(ids)
        raise ConnectionError("the relay dies here")
    sent: list[int] = []
    monkeypatch.setattr(publisher, "send_logged_many", broken_send)
    with pytest.raises(ConnectionError):
        relay.step()
    monkeypatch.undo()
    with engine.connect() as db:  # nothing deleted: the step rolled back
        assert db.execute(select(func.count()).select_from(table)).scalar_one() == 3
    resent: list[list[int]] = []
    monkeypatch.setattr(publisher, "send_logged_many", lambda e, ids: resent.append(ids))
    assert relay.step() == 2 and relay.step() == 1 and relay.step() == 0
    assert resent[0] == sent  # the same ids again, no new rows for them
    assert _rows(engine, sent) == 2 and _rows(engine, resent[1]) == 1
