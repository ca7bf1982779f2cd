"""Issue 16, parts 2 and 3 against a live frontend: the `history` op and its HTTP twin
(paging, grants), `join`'s `rewind` (after the ack, before live events), and the
recovery result (`welcome.recovered`, `welcome.epoch`) at the recovery window's edge.

The frontend replays at most ``REPLAY_LIMIT`` messages a hello, so the window's edge is
a few messages away.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from service.store.models import Message
from tests.conftest import Cluster
from tests.support import Client, Proc, api, wait_until

REPLAY_LIMIT = 5
#: Live events a publisher sends while a client joins with a rewind (bounded).
LIVE_COUNT = 40


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def fe() -> Iterator[Proc]:
    c = Cluster()
    try:
        yield c.frontend("hist", env={"HERALD_REPLAY_LIMIT": str(REPLAY_LIMIT)})
    finally:
        c.stop()


def publish(fe: Proc, group: str, n: int, scope: str = "default") -> list[int]:
    ids = []
    for i in range(n):
        r = api(fe, "POST", "/api/publish", json={
            "target": {"group": group, "scope": scope}, "event": "h", "data": {"i": i}})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def test_history_pages_by_id_over_the_socket_and_http(fe: Proc, token: Any) -> None:
    group = uid("room")
    ids = publish(fe, group, 7)
    c = Client(fe.ws_url)
    c.hello(token(uid("u")))
    newest = c.request("history", group=group, limit=3)
    assert newest["op"] == "history" and newest["group"] == group
    assert newest["scope"] == "default" and newest["gap"] is False
    assert [e["id"] for e in newest["events"]] == ids[4:]
    first = newest["events"][0]  # an event frame as it was delivered live
    assert first["op"] == "event" and first["event"] == "h" and first["data"] == {"i": 4}
    assert first["target"] == {"group": group, "scope": "default"} and "ts" in first
    back = c.request("history", group=group, limit=3, before=ids[4])
    assert [e["id"] for e in back["events"]] == ids[1:4]
    fwd = c.request("history", group=group, after=ids[2])
    assert [e["id"] for e in fwd["events"]] == ids[3:] and fwd["gap"] is False
    r = api(fe, "GET", f"/api/groups/default/{group}/history?limit=2&before={ids[3]}")
    assert r.status_code == 200 and r.json()["gap"] is False
    assert [e["id"] for e in r.json()["events"]] == ids[1:3]
    r = api(fe, "GET", f"/api/groups/default/{group}/history?after={ids[5]}")
    assert [e["id"] for e in r.json()["events"]] == ids[6:]
    # bad input: a clear refusal, the socket stays open
    too_many = c.request("history", group=group, limit=101)
    assert too_many["op"] == "error" and too_many["code"] == "bad_request"
    assert api(fe, "GET", f"/api/groups/default/{group}/history?limit=0").status_code == 400
    assert api(fe, "GET", f"/api/groups/default/{group}/history?after=x").status_code == 400
    assert c.request("ping")["op"] == "pong"
    c.close()


def test_history_needs_the_join_grant(fe: Proc, token: Any) -> None:
    group = uid("secret")
    publish(fe, group, 1)
    c = Client(fe.ws_url)
    c.hello(token(uid("u"), join=("public/*",)))
    reply = c.request("history", group=group)
    assert reply["op"] == "error" and reply["code"] == "forbidden", reply
    assert c.request("history", group="x", scope="public")["op"] == "history"
    c.close()
    path = f"/api/groups/default/{group}/history"
    assert api(fe, "GET", path, key="").status_code == 401
    assert api(fe, "GET", path, key="wrong").status_code == 401


def test_rewind_follows_the_ack_and_precedes_live_events(fe: Proc, token: Any) -> None:
    group = uid("room")
    before = publish(fe, group, 5)
    live_ids: list[int] = []
    started = threading.Event()

    def live() -> None:
        started.set()
        live_ids.extend(publish(fe, group, LIVE_COUNT))

    c = Client(fe.ws_url)
    c.hello(token(uid("u")))
    pub = threading.Thread(target=live, daemon=True)
    pub.start()
    started.wait(10)
    ack = c.request("join", group=group, rewind=3)
    # the last 3, and whatever was logged while the join was made (it follows, in order)
    assert ack["op"] == "ack" and ack["rewound"] >= 3
    pub.join(60)
    assert len(live_ids) == LIVE_COUNT
    c.wait_for(lambda f: f.get("id") == live_ids[-1])
    frames = [f for f in c.frames if f.get("op") in ("ack", "event")]
    at = frames.index(ack)
    assert all(f["op"] != "event" for f in frames[:at])  # nothing of the group before it
    events = frames[at + 1:]
    rewound = [e["id"] for e in events[:3]]
    # the group's last 3 when the join read them: from before the join or the live ones
    assert rewound == sorted(rewound) and set(rewound) <= set(before + live_ids)
    ids = [e["id"] for e in events]
    first_copies = [i for n, i in enumerate(ids) if i not in ids[:n]]
    assert first_copies == sorted(first_copies)  # order kept; repeats are the same ids
    assert set(live_ids) - set(rewound) <= set(ids)  # every later live event came
    c.close()


def test_rewind_one_is_a_last_value_channel(fe: Proc, token: Any) -> None:
    group = uid("price")
    ids = publish(fe, group, 3)
    c = Client(fe.ws_url)
    c.hello(token(uid("u")))
    assert c.request("join", group=group, rewind=1)["rewound"] == 1
    got = c.wait_for(lambda f: f.get("op") == "event")
    assert [e["id"] for e in got] == [ids[-1]] and got[0]["data"] == {"i": 2}
    assert c.request("join", group=uid("empty"), rewind=1)["rewound"] == 0
    c.close()


def _dropped_member(fe: Proc, token: str, group: str) -> tuple[dict[str, Any], int]:
    """A session in ``group`` that saw one durable event, then lost its socket (not a
    goodbye: resumable); its welcome and last id."""
    c = Client(fe.ws_url)
    welcome = c.hello(token)
    assert c.request("join", group=group)["op"] == "ack"
    seen = publish(fe, group, 1)[0]
    c.wait_for(lambda f: f.get("id") == seen)
    c.ws.close(code=4000)
    assert c.closed.wait(20)
    wait_until(lambda: api(fe, "GET", f"/api/groups/default/{group}/members").json() == [])
    return welcome, seen


def _resume(fe: Proc, token: str, welcome: dict[str, Any], last_id: int,
            **fields: Any) -> tuple[Client, dict[str, Any]]:
    c = Client(fe.ws_url)
    w = c.hello(token, resume=welcome["resume"], last_id=last_id, **fields)
    assert w["resumed"] is True
    if w["replayed"]:
        c.wait_for(lambda f: f.get("op") == "event", count=w["replayed"])
    return c, w


def test_recovered_just_inside_the_window(fe: Proc, token: Any) -> None:
    user, group = uid("u"), uid("room")
    tok = token(user)
    welcome, seen = _dropped_member(fe, tok, group)
    assert isinstance(welcome["epoch"], str) and welcome["epoch"]
    assert welcome["recovered"] is False  # a fresh session recovered nothing
    missed = publish(fe, group, REPLAY_LIMIT)  # exactly what one hello replays
    c, w = _resume(fe, tok, welcome, seen, epoch=welcome["epoch"])
    assert w["recovered"] is True and w["gap"] is False and w["epoch"] == welcome["epoch"]
    # the last_id's own row comes again (the late-commit grace), and then all it missed
    assert [e["id"] for e in c.events() if e["id"] > seen] == missed
    c.close()


def test_not_recovered_just_outside_the_window(fe: Proc, token: Any) -> None:
    user, group = uid("u"), uid("room")
    tok = token(user)
    welcome, seen = _dropped_member(fe, tok, group)
    missed = publish(fe, group, REPLAY_LIMIT + 1)  # one more than a hello replays
    c, w = _resume(fe, tok, welcome, seen, epoch=welcome["epoch"])
    assert w["recovered"] is False and w["gap"] is True
    assert [e["id"] for e in c.events() if e["id"] > seen] == missed[:REPLAY_LIMIT]
    c.close()


def test_not_recovered_past_retention(fe: Proc, token: Any, engine: Any) -> None:
    user, group = uid("u"), uid("room")
    tok = token(user)
    welcome, seen = _dropped_member(fe, tok, group)
    missed = publish(fe, group, 3)
    with engine.begin() as db:  # retention took last_id's row and the first one missed
        db.execute(Message.__table__.delete().where(Message.id <= missed[0]))
    c, w = _resume(fe, tok, welcome, seen, epoch=welcome["epoch"])
    assert w["recovered"] is False and w["gap"] is True
    assert [e["id"] for e in c.events()] == missed[1:]
    # the history op says the same of the group's range
    h = c.request("history", group=group, after=seen)
    assert h["gap"] is True and [e["id"] for e in h["events"]] == missed[1:]
    c.close()


def test_not_recovered_in_another_epoch_or_without_a_resume(fe: Proc, token: Any) -> None:
    user, group = uid("u"), uid("room")
    tok = token(user)
    welcome, seen = _dropped_member(fe, tok, group)
    publish(fe, group, 1)
    c, w = _resume(fe, tok, welcome, seen, epoch="another-log")
    assert w["recovered"] is False and w["gap"] is False and w["replayed"] == 2
    c.ws.close(code=4000)
    assert c.closed.wait(20)
    # no resume: the groups are not restored, so what they got is not replayed
    fresh = Client(fe.ws_url)
    w2 = fresh.hello(tok, last_id=seen, epoch=welcome["epoch"])
    assert w2["resumed"] is False and w2["recovered"] is False
    fresh.close()
