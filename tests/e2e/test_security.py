"""Issue 5: the authorization matrix and the limits, against a live frontend pair."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from service.core.auth import issue_token
from tests.conftest import ENV
from tests.support import Client, api

SECRET = ENV["HERALD_SECRET_KEY"]


def uid(p: str) -> str:
    return f"{p}-{uuid.uuid4().hex[:6]}"


def connect(pa: Any, user: str, **grants: Any) -> Client:
    c = Client(pa.ws_url)
    c.hello(issue_token(SECRET, user, **grants))
    return c


def expect_code(reply: dict[str, Any], code: str) -> None:
    assert reply["op"] == "error" and reply["code"] == code, reply
    assert set(reply) <= {"op", "code", "message", "ref"}  # no data rides on an error


# --- tokens at hello ----------------------------------------------------------------------

def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("case", ["expired", "bad_signature", "alg_none", "no_exp", "garbage",
                                  "not_hello_first"])
def test_bad_tokens_are_refused_with_4401(pair: Any, case: str) -> None:
    pa, _ = pair
    now = int(time.time())
    token = {
        "expired": issue_token(SECRET, "u", ttl_s=-60),
        "bad_signature": issue_token("another-secret-another-secret-xx", "u"),
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'u', 'exp': now + 60})}.",
        "no_exp": f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64({'sub': 'u'})}.x",
        "garbage": "not-a-jwt",
        "not_hello_first": "",
    }[case]
    c = Client(pa.ws_url)
    if case == "not_hello_first":
        c.send({"op": "join", "group": "g", "ref": 1})
    else:
        c.send({"op": "hello", "token": token, "ref": 1})
    err = c.wait_for(lambda f: f.get("op") == "error")[0]
    expect_code(err, "unauthorized")
    c.closed.wait(10)
    assert c.close_code == 4401
    assert not [f for f in c.frames if f.get("op") == "welcome"]


def test_no_hello_in_time_closes_4401(cluster: Any) -> None:
    fe = cluster.frontend("slow", env={"HERALD_HELLO_TIMEOUT": "0.5"})
    c = Client(fe.ws_url)
    assert c.closed.wait(10) and c.close_code == 4401


# --- grants per op ------------------------------------------------------------------------

def test_join_members_monitor_grants(pair: Any) -> None:
    pa, pb = pair
    c = connect(pa, uid("u"), join=["chat:*", "other/exact"])
    assert c.request("join", group="chat:1")["op"] == "ack"
    expect_code(c.request("join", group="chatroom"), "forbidden")        # pattern edge
    expect_code(c.request("join", group="chat:1", scope="other"), "forbidden")  # wrong scope
    assert c.request("join", group="exact", scope="other")["op"] == "ack"
    expect_code(c.request("join", group="exact"), "forbidden")           # default scope
    assert c.request("members", group="chat:1")["op"] == "members"
    expect_code(c.request("members", group="chatroom"), "forbidden")
    assert c.request("monitor", group="chat:2")["op"] == "ack"
    expect_code(c.request("monitor", group="secret"), "forbidden")

    # a forbidden join delivers nothing from that group
    api(pb, "POST", "/api/publish", json={"target": {"group": "chatroom"}, "event": "leak"})
    api(pb, "POST", "/api/publish", json={"target": {"group": "chat:1"}, "event": "ok"})
    c.wait_for(lambda f: f.get("event") == "ok")
    assert c.events("leak") == []


def test_publish_grants(pair: Any) -> None:
    pa, pb = pair
    bob = uid("bob")
    target_sock = connect(pb, bob, join=["room:*"])
    tid = target_sock.request("ping") and target_sock.frames[0]["connection_id"]
    target_sock.request("join", group="room:1")
    allowed = connect(pa, uid("alice"), publish=["room:*", "@all", f"@user:{bob}",
                                                  "@connection:*"])
    denied = connect(pa, uid("eve"), publish=["room:2"])
    for fields in ({"group": "room:1"}, {"all": True}, {"user": bob}, {"connection": tid}):
        assert allowed.request("publish", event="ok", data=fields, **fields)["op"] == "ack"
        expect_code(denied.request("publish", event="no", **fields), "forbidden")
    expect_code(allowed.request("publish", event="no", user="someone-else"), "forbidden")
    expect_code(allowed.request("publish", event="no", group="room:1", scope="x"), "forbidden")
    target_sock.wait_for(lambda f: f.get("event") == "ok", count=4)
    assert target_sock.events("no") == []


def test_task_grants(pair: Any) -> None:
    pa, _ = pair
    c = connect(pa, uid("u"), tasks=["demo.sleep"])
    assert c.request("task", name="demo.sleep", args={"seconds": 0})["op"] == "ack"
    expect_code(c.request("task", name="demo.fail", args={}), "forbidden")
    expect_code(c.request("task", name="demo.sleepy", args={}), "forbidden")


def test_refresh_same_user_only(pair: Any) -> None:
    pa, _ = pair
    user = uid("u")
    c = connect(pa, user, join=[])
    expect_code(c.request("join", group="g"), "forbidden")
    assert c.request("refresh", token=issue_token(SECRET, user, join=["g"]))["op"] == "ack"
    assert c.request("join", group="g")["op"] == "ack"  # the new grants apply
    expect_code(c.request("refresh", token=issue_token(SECRET, uid("other"))), "forbidden")
    expect_code(c.request("refresh", token=issue_token(SECRET, user, ttl_s=-60)),
                "unauthorized")


def test_token_expiring_mid_session_closes_4401(pair: Any) -> None:
    pa, _ = pair
    c = Client(pa.ws_url)
    # exp is checked with a few seconds of leeway for clock skew
    c.hello(issue_token(SECRET, uid("u"), ttl_s=1))
    assert c.closed.wait(20) and c.close_code == 4401


# --- API keys -----------------------------------------------------------------------------

@pytest.mark.parametrize("header, status", [
    (None, 401), ("Bearer", 401), ("Bearer wrong", 401), ("Basic test-key-1", 401),
    ("Bearer test-key-1x", 401), ("Bearer test-key-1", 200), ("Bearer test-key-2", 200),
    ("bearer test-key-2", 200),
])
def test_api_keys(pair: Any, header: str | None, status: int) -> None:
    pa, _ = pair
    headers = {"Authorization": header} if header else {}
    r = api(pa, "GET", "/api/frontends", key="", headers=headers)
    assert r.status_code == status
    if status == 401:
        assert r.json()["error"] == "unauthorized" and set(r.json()) == {"error", "message"}


# --- origins and limits -------------------------------------------------------------------

def test_origin_allow_list(pair: Any, token: Any) -> None:
    pa, _ = pair
    ok = Client(pa.ws_url, origin="http://localhost:3000")
    ok.hello(token(uid("u")))
    bad = Client(pa.ws_url, origin="https://evil.example")
    assert bad.closed.wait(10) and bad.close_code == 1008


def test_frame_too_large_closes_1009(pair: Any, token: Any) -> None:
    pa, _ = pair
    c = Client(pa.ws_url)
    c.hello(token(uid("u")))
    c.send(json.dumps({"op": "publish", "all": True, "event": "e", "data": "x" * 70_000}))
    assert c.closed.wait(10) and c.close_code == 1009


def test_api_body_too_large_is_413(pair: Any) -> None:
    pa, _ = pair
    r = api(pa, "POST", "/api/publish", json={"target": {"all": True}, "event": "e",
                                              "data": "x" * 70_000})
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_rate_limit_then_close_when_abused(pair: Any, token: Any) -> None:
    pa, _ = pair
    c = Client(pa.ws_url)
    c.hello(token(uid("u")))
    for i in range(400):
        try:
            c.send({"op": "ping", "ref": i})
        except Exception:
            break
    assert c.closed.wait(20) and c.close_code == 1008
    assert [f for f in c.frames if f.get("code") == "rate_limited"]
    assert len([f for f in c.frames if f.get("op") == "pong"]) >= 100  # the burst went through


def test_group_limit_per_connection(pair: Any, token: Any) -> None:
    pa, _ = pair
    c = Client(pa.ws_url)
    c.hello(token(uid("u")))
    for i in range(100):
        assert c.request("join", group=f"g{i}")["op"] == "ack"
        time.sleep(0.005)  # stay under the frame rate limit
    expect_code(c.request("join", group="g100"), "forbidden")
    assert c.request("join", group="g5")["op"] == "ack"  # already a member: fine


def test_plain_http_to_ws_is_rejected(pair: Any) -> None:
    pa, _ = pair
    import requests

    r = requests.get(pa.url + "/ws", timeout=5)
    assert r.status_code < 500
    with pytest.raises((InvalidStatus, OSError)):
        Client(pa.url.replace("http", "ws") + "/nope")


ENDPOINTS = [
    ("POST", "/api/publish", {"target": {"all": True}, "event": "e", "durable": False}, 202),
    ("POST", "/api/tasks", {"name": "demo.noop", "args": {}, "notify": {"user": "u"}}, 202),
    ("GET", "/api/tasks/none-such", None, 404),
    ("GET", "/api/groups", None, 200),
    ("GET", "/api/groups/default/g/members", None, 200),
    ("PUT", "/api/groups/default/g/members/none-such", None, 404),
    ("DELETE", "/api/groups/default/g/members/none-such", None, 204),
    ("GET", "/api/users/u/connections", None, 200),
    ("GET", "/api/frontends", None, 200),
]


@pytest.mark.parametrize("method, path, body, allowed", ENDPOINTS)
def test_every_endpoint_needs_a_valid_key(pair: Any, method: str, path: str, body: Any,
                                          allowed: int) -> None:
    pa, _ = pair
    kw = {"json": body} if body is not None else {}
    for key in ("", "wrong-key"):
        denied = api(pa, method, path, key=key, **kw)
        assert denied.status_code == 401 and denied.json()["error"] == "unauthorized"
        assert set(denied.json()) == {"error", "message"}
    assert api(pa, method, path, **kw).status_code == allowed
