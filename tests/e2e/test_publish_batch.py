"""POST /api/publish/batch (Herald's addition): many publishes in one request, in order,
across frontends; bad input is refused before anything is published."""

from __future__ import annotations

import uuid
from typing import Any

from tests.support import Client, api


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_a_batch_arrives_in_order_on_the_other_frontend(pair: Any, token: Any) -> None:
    pa, pb = pair
    room, user = uid("room"), uid("u")
    member, outsider = Client(pb.ws_url), Client(pb.ws_url)
    member.hello(token(user))
    outsider.hello(token(uid("other")))
    assert member.request("join", group=room)["op"] == "ack"
    messages: list[dict[str, Any]] = []
    for i in range(60):
        target = {"group": room} if i % 3 == 0 else {"all": True}
        messages.append({"target": target, "event": "b", "data": {"i": i},
                         "durable": i < 40})  # a durable run, then a transient one
    messages[7]["data"] = "nul \u0000"  # Postgres refuses this one alone
    r = api(pa, "POST", "/api/publish/batch", json={"messages": messages})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["errors"] == [{"index": 7, "error": "bad_request", "message": body["errors"][0]
                               ["message"]}]
    ids = body["ids"]
    durable = [ids[i] for i in range(40) if i != 7]
    assert ids[7] is None and all(isinstance(x, int) for x in durable)
    assert durable == sorted(durable) and len(set(durable)) == 39
    assert all(x is None for x in ids[40:])
    sent = [i for i in range(60) if i != 7]
    member.wait_for(lambda f: f.get("event") == "b" and f["data"]["i"] == 59)
    got = [e["data"]["i"] for e in member.events("b")]
    assert got == sent  # every message once, in the order of the request
    assert [e.get("id") for e in member.events("b")][:39] == durable
    outsider.wait_for(lambda f: f.get("event") == "b" and f["data"]["i"] == 59)
    assert [e["data"]["i"] for e in outsider.events("b")] == [i for i in sent if i % 3]


def test_bad_batches_are_refused_whole(pair: Any, token: Any) -> None:
    pa, pb = pair
    watcher = Client(pb.ws_url)
    watcher.hello(token(uid("w")))
    ok = {"target": {"all": True}, "event": "never"}
    cases = [
        {"messages": []},
        {"messages": [ok] * 501},
        {"messages": [ok, {"target": {"all": True, "user": "x"}, "event": "e"}]},
        {"messages": [ok, {"target": {"all": True}, "event": "bad/name"}]},
        {"messages": [ok, {"target": {"all": True}}]},
        {"messages": ok},
        {"message": [ok]},
    ]
    for case in cases:
        r = api(pa, "POST", "/api/publish/batch", json=case)
        assert r.status_code == 400, (case, r.text)
        assert r.json()["error"] == "bad_request"
    assert "messages[1].target" in api(pa, "POST", "/api/publish/batch",
                                       json=cases[2]).json()["message"]
    tag = uid("after")
    api(pa, "POST", "/api/publish", json={"target": {"all": True}, "event": "marker",
                                          "data": tag})
    watcher.wait_for(lambda f: f.get("event") == "marker" and f["data"] == tag)
    assert watcher.events("never") == []  # nothing of a refused batch was published


def test_with_a_write_delay_everything_arrives_once_in_order(pair: Any, cluster: Any,
                                                             token: Any) -> None:
    """HERALD_WRITE_DELAY_MS on the receiving frontend: single publishes from the other
    frontend and a batch all arrive once, in order; a reply is not held back by it."""
    pa = pair[0]
    pb = cluster.frontend("wd-b", env={"HERALD_WRITE_DELAY_MS": "50"})
    room = uid("room")
    members = [Client(pb.ws_url) for _ in range(3)]
    for c in members:
        c.hello(token(uid("u")))
        assert c.request("join", group=room)["op"] == "ack"
    for i in range(30):
        r = api(pa, "POST", "/api/publish", json={"target": {"group": room}, "event": "w",
                                                  "data": i, "durable": i % 2 == 0})
        assert r.status_code == 202, r.text
    r = api(pa, "POST", "/api/publish/batch", json={"messages": [
        {"target": {"group": room}, "event": "w", "data": 30 + i} for i in range(20)]})
    assert r.status_code == 202, r.text
    for c in members:
        c.wait_for(lambda f: f.get("event") == "w" and f["data"] == 49)
        assert [e["data"] for e in c.events("w")] == list(range(50))
        assert c.request("ping")["op"] == "pong"
        c.close()
