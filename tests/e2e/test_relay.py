"""Issue 15, part 1: the outbox relay for a backend with a database of its own. Rows the
backend commits into ``herald_outbox`` reach sockets once, in commit order; rolled-back
ones never; a relay SIGKILLed mid-batch loses none and logs none twice."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from service.core.envelope import Target
from service.store.db import drop_database, ensure_database, get_engine
from service.store.models import Message
from service.store.outbox import OUTBOX_TABLE, create_outbox, enqueue
from tests.conftest import ENV, Cluster
from tests.support import Client, wait_until

#: Messages of the crash test, and rows per relay step there: enough steps that the kill
#: lands while rows are left (the test checks it did).
CRASH_MESSAGES = 2000
CRASH_BATCH = 5
#: Messages the crash test waits for before the SIGKILL.
KILL_AFTER = 50
ENQUEUE_TX = 100  # rows per backend transaction


@pytest.fixture
def backend() -> Iterator[tuple[str, Engine]]:
    """The backend's own database, with the outbox the migration helper creates."""
    url = ENV["HERALD_DATABASE_URL"] + "_app"
    ensure_database(url)
    engine = get_engine(url)
    create_outbox(engine)
    create_outbox(engine)  # idempotent: a second run of the migration changes nothing
    yield url, engine
    engine.dispose()
    drop_database(url)


def _left(engine: Engine) -> int:
    with engine.connect() as db:
        return int(db.execute(text(f"SELECT count(*) FROM {OUTBOX_TABLE}")).scalar_one())


def _logged(engine: Engine, user: str) -> tuple[int, int]:
    """Log rows for ``user``: how many, and how many distinct ``n``."""
    with engine.connect() as db:
        rows, distinct = db.execute(select(func.count(), func.count(Message.data["n"].distinct()))
                                    .where(Message.target_key == user)).one()
    return int(rows), int(distinct)


def _listener(cluster: Cluster, token: Any) -> tuple[Client, str]:
    fe = cluster.frontend()
    user = f"ob-{uuid.uuid4().hex[:8]}"
    client = Client(fe.ws_url)
    client.hello(token(user))
    return client, user


def test_committed_rows_are_delivered_once_rolled_back_never(
        cluster: Cluster, token: Any, engine: Engine, backend: tuple[str, Engine]) -> None:
    url, app_db = backend
    client, user = _listener(cluster, token)
    with app_db.begin() as db:  # a Core connection
        enqueue(db, Target.user(user), "ob", {"n": 1})
    with Session(app_db) as session:  # an ORM session, rolled back
        enqueue(session, Target.user(user), "ob", {"n": "dropped"})
        session.rollback()
    cluster.relay({"HERALD_RELAY_SOURCE": url})
    client.wait_for(lambda f: f.get("event") == "ob")
    with Session(app_db) as session:
        enqueue(session, Target.user(user), "ob", {"n": 2})
        session.commit()
    client.wait_for(lambda f: f.get("event") == "ob" and f["data"]["n"] == 2)
    wait_until(lambda: _left(app_db) == 0)
    # the table recreated (its ids start again at 1): still a new message, not an old id
    with app_db.begin() as db:
        db.execute(text(f"DROP TABLE {OUTBOX_TABLE}"))
    create_outbox(app_db)
    with app_db.begin() as db:
        enqueue(db, Target.user(user), "ob", {"n": 3})
    client.wait_for(lambda f: f.get("event") == "ob" and f["data"]["n"] == 3)
    assert [e["data"]["n"] for e in client.events("ob")] == [1, 2, 3]
    assert len({e["id"] for e in client.events("ob")}) == 3
    assert _logged(engine, user) == (3, 3)


def test_a_relay_killed_mid_batch_loses_none_and_logs_none_twice(
        cluster: Cluster, token: Any, engine: Engine, backend: tuple[str, Engine]) -> None:
    url, app_db = backend
    client, user = _listener(cluster, token)
    for start in range(0, CRASH_MESSAGES, ENQUEUE_TX):
        with app_db.begin() as db:
            for n in range(start, start + ENQUEUE_TX):
                enqueue(db, Target.user(user), "ob", {"n": n})
    env = {"HERALD_RELAY_SOURCE": url, "HERALD_RELAY_BATCH": str(CRASH_BATCH)}
    first = cluster.relay(env)
    client.wait_for(lambda f: f.get("event") == "ob", count=KILL_AFTER)
    first.kill()
    assert _left(app_db) > 0  # the kill came while rows were left
    cluster.relay(env)

    def distinct() -> set[int]:
        return {e["data"]["n"] for e in client.events("ob")}
    wait_until(lambda: len(distinct()) == CRASH_MESSAGES)
    wait_until(lambda: _left(app_db) == 0)
    events = client.events("ob")
    # a copy re-sent after the crash carries its first id (clients drop it by id)
    ids: dict[int, int] = {}
    for e in events:
        assert ids.setdefault(e["data"]["n"], e["id"]) == e["id"]
    assert len(set(ids.values())) == CRASH_MESSAGES
    assert _logged(engine, user) == (CRASH_MESSAGES, CRASH_MESSAGES)  # none logged twice
    # in commit order: each message first arrives after every one committed before it
    firsts = list(dict.fromkeys(e["data"]["n"] for e in events))
    assert firsts == sorted(firsts)
    assert len(events) - CRASH_MESSAGES <= CRASH_BATCH  # at most the step in flight again


def test_the_relay_refuses_to_start_without_its_source(runner: Any) -> None:
    result = runner("run", "relay", check=False, env={"HERALD_RELAY_SOURCE": ""})
    assert result.returncode != 0
    assert "HERALD_RELAY_SOURCE" in result.stderr
