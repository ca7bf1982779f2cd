"""Issue 15, part 1: transactional publish for a backend sharing Herald's database. The
business write and the publish commit or roll back together; the message reaches sockets
only after the commit, once, and never when rolled back (a real frontend, Postgres and
RabbitMQ)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from service.core.envelope import Target
from service.core.errors import BadRequest
from service.pg import Herald
from service.store.models import Message
from tests.support import Client

#: How long a test waits for a message that must not come (after a later one came).
NOTHING_MORE_S = 1.0


@pytest.fixture
def herald() -> Iterator[Herald]:
    h = Herald()
    yield h
    h.close()


@pytest.fixture
def orders(engine: Engine) -> str:
    """The backend's own table, in Herald's database (the shared-database case)."""
    name = f"orders_{uuid.uuid4().hex[:8]}"
    with engine.begin() as db:
        db.execute(text(f"CREATE TABLE {name} (id serial PRIMARY KEY, item text NOT NULL)"))
    return name


@pytest.fixture
def listener(pair: Any, token: Any) -> Iterator[tuple[Client, str]]:
    user = f"tx-{uuid.uuid4().hex[:8]}"
    c = Client(pair[0].ws_url)
    c.hello(token(user))
    yield c, user
    c.close()


def _marker(herald: Herald, client: Client, user: str) -> None:
    """Publish a plain message after the ones under test and wait for it: anything the
    same publisher sent before it has arrived by then (one bus, in order)."""
    herald.publish(Target.user(user), "marker", {"n": uuid.uuid4().hex})
    client.wait_for(lambda f: f.get("event") == "marker")
    time.sleep(NOTHING_MORE_S)  # and a bounded wait for a late copy


def _logged(engine: Engine, msg_id: int | None) -> int:
    with engine.connect() as db:
        return len(db.execute(select(Message.id).where(Message.id == msg_id)).all())


def _count(engine: Engine, table: str, item: str) -> int:
    with engine.connect() as db:
        return int(db.execute(text(f"SELECT count(*) FROM {table} WHERE item = :i"),
                              {"i": item}).scalar_one())


def test_committed_is_delivered_once_and_only_after_the_commit(
        engine: Engine, herald: Herald, orders: str, listener: tuple[Client, str]) -> None:
    client, user = listener
    with Session(engine) as session:
        session.execute(text(f"INSERT INTO {orders} (item) VALUES ('book')"))
        msg_id = herald.publish(Target.user(user), "order.created", {"item": "book"},
                                session=session)
        assert isinstance(msg_id, int)
        _marker(herald, client, user)
        assert client.events("order.created") == []  # not before the commit
        assert _logged(engine, msg_id) == 0  # nor visible to others
        session.commit()
    got = client.wait_for(lambda f: f.get("event") == "order.created")[0]
    assert got["id"] == msg_id and got["data"] == {"item": "book"}
    _marker(herald, client, user)
    assert len(client.events("order.created")) == 1
    assert _logged(engine, msg_id) == 1 and _count(engine, orders, "book") == 1


def test_rolled_back_is_never_delivered_nor_logged(
        engine: Engine, herald: Herald, orders: str, listener: tuple[Client, str]) -> None:
    client, user = listener
    with Session(engine) as session:
        session.execute(text(f"INSERT INTO {orders} (item) VALUES ('pen')"))
        msg_id = herald.publish(Target.user(user), "order.created", {"item": "pen"},
                                session=session)
        session.rollback()
        # the session goes on: its next transaction's commit must not send the dropped one
        session.execute(text(f"INSERT INTO {orders} (item) VALUES ('ink')"))
        session.commit()
    _marker(herald, client, user)
    assert client.events("order.created") == []
    assert _logged(engine, msg_id) == 0 and _count(engine, orders, "pen") == 0


def test_a_savepoints_rollback_drops_only_what_it_published(
        engine: Engine, herald: Herald, orders: str, listener: tuple[Client, str]) -> None:
    client, user = listener
    with Session(engine) as session:
        kept = herald.publish(Target.user(user), "step", {"n": 1}, session=session)
        nested = session.begin_nested()
        dropped = herald.publish(Target.user(user), "step", {"n": 2}, session=session)
        nested.rollback()
        released = session.begin_nested()
        last = herald.publish(Target.user(user), "step", {"n": 3}, session=session)
        released.commit()
        session.commit()
    client.wait_for(lambda f: f.get("event") == "step", count=2)
    _marker(herald, client, user)
    assert [(e["id"], e["data"]["n"]) for e in client.events("step")] == [(kept, 1), (last, 3)]
    assert _logged(engine, dropped) == 0


def test_transient_waits_for_the_commit_too(
        engine: Engine, herald: Herald, listener: tuple[Client, str]) -> None:
    client, user = listener
    with Session(engine) as session:
        assert herald.publish(Target.user(user), "typing", None, durable=False,
                              session=session) is None
        _marker(herald, client, user)
        assert client.events("typing") == []
        session.commit()
    got = client.wait_for(lambda f: f.get("event") == "typing")
    assert len(got) == 1 and "id" not in got[0]
    with Session(engine) as session:
        herald.publish(Target.user(user), "typing", None, durable=False, session=session)
        session.rollback()
    _marker(herald, client, user)
    assert len(client.events("typing")) == 1


def test_publish_many_in_a_session_goes_out_in_order_after_the_commit(
        engine: Engine, herald: Herald, listener: tuple[Client, str]) -> None:
    client, user = listener
    with Session(engine) as session:
        ids = herald.publish_many([(Target.user(user), "many", {"n": n}) for n in range(3)],
                                  session=session)
        _marker(herald, client, user)
        assert client.events("many") == []
        session.commit()
    client.wait_for(lambda f: f.get("event") == "many", count=3)
    assert [(e["id"], e["data"]["n"]) for e in client.events("many")] == list(
        zip(ids, range(3), strict=True))


def test_a_scoped_session_as_flask_sqlalchemy_has_it(
        engine: Engine, herald: Herald, orders: str, listener: tuple[Client, str]) -> None:
    client, user = listener
    db_session = scoped_session(sessionmaker(engine))
    db_session.execute(text(f"INSERT INTO {orders} (item) VALUES ('cup')"))
    msg_id = herald.publish(Target.user(user), "order.created", {"item": "cup"},
                            session=db_session)
    _marker(herald, client, user)
    assert client.events("order.created") == []
    db_session.commit()
    assert client.wait_for(lambda f: f.get("event") == "order.created")[0]["id"] == msg_id
    db_session.remove()


def test_data_postgres_refuses_is_a_bad_request_and_the_session_recovers(
        engine: Engine, herald: Herald, orders: str) -> None:
    with Session(engine) as session:
        session.execute(text(f"INSERT INTO {orders} (item) VALUES ('nul')"))
        with pytest.raises(BadRequest, match="roll it back"):
            herald.publish(Target.all(), "x", {"s": "a\u0000b"}, session=session)
        session.rollback()
        session.execute(text(f"INSERT INTO {orders} (item) VALUES ('after')"))
        session.commit()
    assert _count(engine, orders, "nul") == 0 and _count(engine, orders, "after") == 1


def test_a_connection_is_refused_with_what_to_pass_instead(engine: Engine,
                                                           herald: Herald) -> None:
    with engine.connect() as db, pytest.raises(TypeError, match=r"sqlalchemy\.orm\.Session"):
        herald.publish(Target.all(), "x", session=db)  # type: ignore[arg-type]
