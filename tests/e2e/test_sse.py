"""``GET /sse`` against real frontends (issue 16, part 4): the events of a session as
``text/event-stream`` for its groups, its user and ``all``; keep-alive comments; refusals
before the stream; a resume by ``Last-Event-ID`` on another frontend after a SIGKILL."""

from __future__ import annotations

import re
import signal
import socket
import uuid
from typing import Any
from urllib.parse import quote

import requests

from tests.sse_client import SseClient
from tests.support import Client, Proc, api, wait_until

#: Durable events published in the resume test, before and after the kill (bounded).
BEFORE_KILL = 5
AFTER_KILL = 5
#: The stalled-reader test: a small outbox, and enough large events to overflow it.
STALL_OUTBOX = 20
STALL_EVENTS = 200
STALL_EVENT_BYTES = 16_000


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sse_url(fe: Proc, groups: str, token: str, **params: Any) -> str:
    extra = "".join(f"&{k}={quote(str(v))}" for k, v in params.items())
    return f"{fe.url}/sse?groups={quote(groups)}&token={quote(token)}{extra}"


def publish(fe: Proc, target: dict[str, Any], event: str, data: Any,
            durable: bool = True) -> int | None:
    r = api(fe, "POST", "/api/publish", json={"target": target, "event": event,
                                              "data": data, "durable": durable})
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body.get("id")


def members(fe: Proc, group: str) -> list[str]:
    r = api(fe, "GET", f"/api/groups/default/{group}/members")
    assert r.status_code == 200, r.text
    return [m["connection_id"] for m in r.json()]


def test_sse_streams_group_user_and_all_events(cluster: Any, token: Any) -> None:
    fe = cluster.frontend("sse")
    user, group = uid("u"), uid("room")
    s = SseClient(sse_url(fe, f"default/{group}", token(user)))
    try:
        assert s.response.status_code == 200
        assert s.response.headers["Content-Type"].startswith("text/event-stream")
        assert s.response.headers["X-Accel-Buffering"] == "no"
        welcome = s.wait_for(lambda ev: bool(ev))[0]
        assert welcome["event"] == "welcome" and welcome["data"]["op"] == "welcome"
        assert welcome["data"]["groups"] == [{"scope": "default", "group": group}]
        cid = welcome["data"]["connection_id"]
        # the registry sees it as a member, like any socket
        assert cid in members(fe, group)
        g = publish(fe, {"group": group}, "said", {"text": "hi\nthere"})
        u = publish(fe, {"user": user}, "direct", {"n": 1})
        a = publish(fe, {"all": True}, "everyone", [1, 2])
        publish(fe, {"group": uid("other")}, "elsewhere", 0)  # not ours
        e = publish(fe, {"group": group}, "fleeting", {"x": 1}, durable=False)
        assert e is None
        got = s.wait_for(lambda ev: len(ev) >= 5)[1:]
        assert [(x["event"], x.get("id")) for x in got] == [
            ("said", g), ("direct", u), ("everyone", a), ("fleeting", None)]
        assert got[0]["data"] == {"op": "event", "event": "said", "id": g,
                                  "data": {"text": "hi\nthere"},
                                  "target": {"group": group, "scope": "default"},
                                  "ts": got[0]["data"]["ts"]}
        assert got[1]["data"]["target"] == {"user": user}
        assert got[2]["data"]["data"] == [1, 2]
        # keep-alive comments every heartbeat (1 s in the tests)
        seen = s.comments
        wait_until(lambda: s.comments >= seen + 2, timeout=10)
    finally:
        s.close()
    # the disconnect leaves the group
    wait_until(lambda: cid not in members(fe, group), timeout=15)


def test_sse_refusals_come_before_the_stream(cluster: Any, token: Any) -> None:
    fe = cluster.frontend("sse-bad")
    good = token(uid("u"), join=("open/*",))
    r = requests.get(fe.url + "/sse?groups=secret/room", headers={
        "Authorization": f"Bearer {good}"}, timeout=10)
    assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    assert "secret/room" in r.json()["message"]
    r = requests.get(sse_url(fe, "open/room", "not-a-token"), timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = requests.get(fe.url + "/sse?groups=open/room", timeout=10)
    assert r.status_code == 401
    many = ",".join(f"open/r{i}" for i in range(101))
    r = requests.get(sse_url(fe, many, good), timeout=10)
    assert r.status_code == 400 and "HERALD_MAX_GROUPS" in r.json()["message"]
    r = requests.get(sse_url(fe, "open/a b", good), timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    r = requests.get(sse_url(fe, "open/room", good), headers={"Last-Event-ID": "x"},
                     timeout=10)
    assert r.status_code == 400 and "Last-Event-ID" in r.json()["message"]
    # the frontend still serves streams after all that
    s = SseClient(sse_url(fe, "open/room", good))
    try:
        assert s.wait_for(bool)[0]["event"] == "welcome"
    finally:
        s.close()


def test_sse_resumes_on_another_frontend_after_a_sigkill(cluster: Any, token: Any) -> None:
    """Every durable event once, in order, across a SIGKILL of the stream's frontend."""
    a, b = cluster.frontends("sse-a", "sse-b")
    user, group = uid("u"), uid("room")
    tok = token(user)
    s = SseClient(sse_url(a, f"default/{group}", tok))
    try:
        s.wait_for(bool)
        sent = [publish(b, {"group": group}, "n", i) for i in range(BEFORE_KILL)]
        s.wait_for(lambda ev: len([x for x in ev if x.get("event") == "n"]) >= BEFORE_KILL)
        last = max(x["id"] for x in s.events if "id" in x)
    finally:
        s.close()
    a.kill()
    # published while no stream is open: the resume gets them from the log
    sent += [publish(b, {"group": group}, "n", BEFORE_KILL + i) for i in range(AFTER_KILL)]
    r = SseClient(sse_url(b, f"default/{group}", tok), headers={"Last-Event-ID": str(last)})
    try:
        welcome = r.wait_for(bool)[0]["data"]
        assert welcome["replayed"] >= AFTER_KILL and welcome["gap"] is False
        assert welcome["recovered"] is True  # its groups and user, all replayed
        assert r.wait_for(bool)[0]["id"] == last  # where the next reconnect resumes from
        sent.append(publish(b, {"group": group}, "n", BEFORE_KILL + AFTER_KILL))
        r.wait_for(lambda ev: any(x.get("id") == sent[-1] for x in ev))
        ids = [x["id"] for x in list(s.events) + r.events if x.get("event") == "n"]
    finally:
        r.close()
    unique = list(dict.fromkeys(ids))  # repeats (the late-commit grace) have the same id
    assert unique == sent
    # the same resume point from another epoch's log: not recovered
    other = SseClient(sse_url(b, f"default/{group}", tok, epoch="another-log"),
                      headers={"Last-Event-ID": str(last)})
    try:
        assert other.wait_for(bool)[0]["data"]["recovered"] is False
    finally:
        other.close()


def test_a_websocket_member_sees_the_sse_client_join(cluster: Any, token: Any) -> None:
    fe = cluster.frontend("sse-ws")
    group = uid("room")
    c = Client(fe.ws_url)
    c.hello(token(uid("watcher")))
    c.request("join", group=group)
    s = SseClient(sse_url(fe, f"default/{group}", token(uid("u"))))
    try:
        s.wait_for(bool)
        ack = c.request("publish", group=group, event="from-ws", data=7, durable=True)
        assert ack["op"] == "ack", ack
        got = s.wait_for(lambda ev: any(x.get("event") == "from-ws" for x in ev))
        assert got[-1]["data"]["data"] == 7 and isinstance(got[-1]["id"], int)
    finally:
        s.close()
        c.close()


def test_a_stream_ends_with_a_close_event_when_its_token_expires(cluster: Any,
                                                                 token: Any) -> None:
    fe = cluster.frontend("sse-exp")
    s = SseClient(sse_url(fe, f"default/{uid('room')}", token(uid("u"), ttl_s=2)))
    try:
        s.wait_for(lambda ev: any(x.get("event") == "close" for x in ev))
        close = s.named("close")[0]["data"]
        assert close == {"op": "close", "code": 4401, "reason": "token expired"}
        wait_until(lambda: s.ended, timeout=10)  # and the response is over
    finally:
        s.close()


def test_a_stream_that_is_not_read_is_dropped_and_leaves(cluster: Any, token: Any) -> None:
    """HERALD_OUTBOX_LIMIT holds for a stream as for a socket: a reader that stopped
    reading is closed and cut, not buffered forever; a reading one gets everything."""
    fe = cluster.frontend("sse-slow", env={"HERALD_OUTBOX_LIMIT": str(STALL_OUTBOX)})
    group = uid("room")
    reader = SseClient(sse_url(fe, f"default/{group}", token(uid("reader"))))
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
    try:
        stalled.connect(("127.0.0.1", fe.port))
        stalled.sendall(f"GET /sse?groups=default/{group}&token={token(uid('slow'))} "
                        f"HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_until(lambda: len(members(fe, group)) == 2)
        reader.wait_for(bool)
        blob = "x" * STALL_EVENT_BYTES
        ids = [publish(fe, {"group": group}, "big", blob) for _ in range(STALL_EVENTS)]
        # the stalled stream was closed (1013) and, its close never read, cut: it leaves
        wait_until(lambda: len(members(fe, group)) == 1, timeout=30)
        reader.wait_for(lambda ev: any(x.get("id") == ids[-1] for x in ev), timeout=30)
        assert [x["id"] for x in reader.named("big")] == ids
        r = requests.get(fe.url + "/metrics", timeout=5).text
        assert re.search(r"^herald_outbox_overflows(_total)?({[^}]*})? [1-9]", r, re.M), r[:2000]
    finally:
        stalled.close()
        reader.close()


def test_a_draining_frontend_closes_its_streams_1012(cluster: Any, token: Any) -> None:
    fe = cluster.frontend("sse-drain")
    s = SseClient(sse_url(fe, f"default/{uid('room')}", token(uid("u"))))
    try:
        s.wait_for(bool)
        fe.signal_group(signal.SIGTERM)
        s.wait_for(lambda ev: any(x.get("event") == "close" for x in ev))
        assert s.named("close")[0]["data"]["code"] == 1012
        wait_until(lambda: s.ended, timeout=10)
    finally:
        s.close()
