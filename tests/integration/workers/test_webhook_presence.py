"""The presence webhooks' state machine against this run's real Postgres (no Celery: the
checks are called directly, their events collected)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from service.store import registry
from workers.webhook_presence import check

FLAP_S = 0.3


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def frontend(engine: Engine) -> Iterator[str]:
    fid = uid("fe")
    registry.register_frontend(engine, fid, "host-1", None)
    yield fid
    registry.deregister_frontend(engine, fid)


class Sent:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((kind, data))


def run(engine: Engine, kind: str, key: str, sent: Sent, final: bool = False) -> float | None:
    with engine.begin() as db:
        return check(db, kind, key, final, FLAP_S, sent)


def connect(engine: Engine, frontend: str, user: str) -> str:
    cid = uid("c")
    with engine.begin() as db:
        db.execute(text("INSERT INTO connections (id, frontend_id, user_id) VALUES"
                        " (:c, :f, :u)"), {"c": cid, "f": frontend, "u": user})
    return cid


def drop(engine: Engine, cid: str) -> None:
    with engine.begin() as db:
        db.execute(text("DELETE FROM connections WHERE id = :c"), {"c": cid})


def test_racing_checks_send_one_online(engine: Engine, frontend: str) -> None:
    user, sent = uid("u"), Sent()
    connect(engine, frontend, user)
    threads = [threading.Thread(target=run, args=(engine, "user", user, sent))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sent.events == [("user.online", {"user_id": user})]


def test_offline_only_after_the_whole_window(engine: Engine, frontend: str) -> None:
    user, sent = uid("u"), Sent()
    cid = connect(engine, frontend, user)
    assert run(engine, "user", user, sent) is None
    drop(engine, cid)
    assert run(engine, "user", user, sent) == FLAP_S  # leaving: a final check is due
    assert run(engine, "user", user, sent) is None  # already leaving: nothing new
    due = run(engine, "user", user, sent, final=True)  # too early: the rest of the window
    assert due is not None and 0 < due <= FLAP_S
    time.sleep(FLAP_S)
    assert run(engine, "user", user, sent, final=True) is None
    assert [k for k, _ in sent.events] == ["user.online", "user.offline"]
    assert run(engine, "user", user, sent, final=True) is None  # a repeat sends nothing
    assert len(sent.events) == 2


def test_a_return_within_the_window_cancels_both(engine: Engine, frontend: str) -> None:
    user, group, sent = uid("u"), uid("g"), Sent()
    cid = connect(engine, frontend, user)
    registry.add_membership(engine, cid, "default", group)
    key = f"default/{group}"
    run(engine, "user", user, sent)
    run(engine, "group", key, sent)
    drop(engine, cid)  # its membership goes with it
    run(engine, "user", user, sent)
    run(engine, "group", key, sent)
    back = connect(engine, frontend, user)
    registry.add_membership(engine, back, "default", group)
    run(engine, "user", user, sent)
    run(engine, "group", key, sent)
    time.sleep(FLAP_S)
    assert run(engine, "user", user, sent, final=True) is None
    assert run(engine, "group", key, sent, final=True) is None
    assert sent.events == [("user.online", {"user_id": user}),
                           ("group.occupied", {"scope": "default", "group": group})]
