"""Issue 11, security second round: each attack against a live frontend, refused, bounded or
closed with the documented code.

Two frontends with small limits serve the module: ``limited`` (hello deadline, outbox
bytes, connection limit) and ``tight`` (per-user quotas, replay and monitor caps), so each
attack meets its limit within a few frames.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import ENV, Cluster
from tests.rawws import RawClient
from tests.support import Client, Proc, api, wait_until

LIMITED = {"HERALD_HELLO_TIMEOUT": "2", "HERALD_OUTBOX_BYTES": str(256 * 1024),
           "HERALD_MAX_USER_CONNECTIONS": "3", "HERALD_USER_QUERIES_PER_MIN": "1000",
           "HERALD_RATE_BURST": "1000"}
TIGHT = {"HERALD_USER_QUERIES_PER_MIN": "3", "HERALD_USER_DURABLE_PER_MIN": "3",
         "HERALD_USER_TASKS_PER_MIN": "2", "HERALD_USER_REPLAY_PER_MIN": "100",
         "HERALD_REPLAY_LIMIT": "50", "HERALD_MAX_MONITORS": "3",
         "HERALD_MAX_MONITORED_MEMBERS": "1500"}
#: Bound of each wait for a close (the tests assert that it comes, never how fast).
CLOSE_WAIT_S = 20.0


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def fronts() -> Iterator[dict[str, Proc]]:
    c = Cluster()
    try:
        yield {"limited": c.frontend("lim", env=LIMITED), "tight": c.frontend("tight", env=TIGHT)}
    finally:
        c.stop()


def raw(fe: Proc, **kw: Any) -> RawClient:
    return RawClient("127.0.0.1", fe.port, **kw)


def raw_hello(c: RawClient, token: str, **fields: Any) -> dict[str, Any]:
    c.send_json({"op": "hello", "token": token, "ref": "h", **fields})
    welcome = c.read_json()
    assert welcome["op"] == "welcome", welcome
    return welcome


def ping_until_closed(c: RawClient, seconds: float) -> tuple[int | None, str]:
    """Send a WebSocket ping every 0.3 s (bounded) until the server closes; its code."""
    c.sock.settimeout(0.3)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            c.send_ping(b"keepalive")
        except OSError:
            return None, ""
        try:
            while True:
                opcode, payload = c.read_frame()
                if opcode == 8:
                    return int.from_bytes(payload[:2], "big"), payload[2:].decode()
        except TimeoutError:
            continue
        except (EOFError, OSError):
            return None, ""
    return None, "still open"


# --- 1. tokens -------------------------------------------------------------------------


def test_a_resume_token_opens_and_refreshes_nothing(fronts: Any, token: Any) -> None:
    fe = fronts["limited"]
    user = uid("u")
    c = Client(fe.ws_url)
    welcome = c.hello(token(user))
    resume = welcome["resume"]
    # as a login: refused with 4401, no welcome
    thief = Client(fe.ws_url)
    thief.send({"op": "hello", "token": resume, "ref": 1})
    err = thief.wait_for(lambda f: f.get("op") == "error")[0]
    assert err["code"] == "unauthorized"  # signed with the resume key: no valid client token
    assert thief.closed.wait(CLOSE_WAIT_S) and thief.close_code == 4401
    assert not any(f.get("op") == "welcome" for f in thief.frames)
    # as a refresh: refused, and the session keeps its own token's expiry
    reply = c.request("refresh", token=resume)
    assert reply["op"] == "error" and reply["code"] == "unauthorized"
    assert c.request("ping")["op"] == "pong"
    c.close()


def test_a_resume_token_works_once(fronts: Any, token: Any) -> None:
    fe = fronts["limited"]
    user, group = uid("u"), uid("room")
    first = raw(fe)
    r0 = raw_hello(first, token(user))["resume"]
    first.send_json({"op": "join", "group": group, "ref": "j"})
    assert first.read_json()["op"] == "ack"
    first.close()  # dropped without a goodbye: resumable
    wait_until(lambda: api(fe, "GET", f"/api/groups/default/{group}/members").json() == [])

    second = Client(fe.ws_url)
    w1 = second.hello(token(user), resume=r0, last_id=0)
    assert w1["resumed"] and w1["groups"] == [{"scope": "default", "group": group}]
    # the same token again: a fresh session, nothing of the old one, and the socket that
    # holds the session is left alone (no 4409)
    third = Client(fe.ws_url)
    w2 = third.hello(token(user), resume=r0, last_id=0)
    assert not w2["resumed"] and w2["groups"] == []
    assert w2["connection_id"] != w1["connection_id"]
    assert second.request("ping")["op"] == "pong" and not second.closed.is_set()
    # the token the resume issued is the one that works now
    second.ws.close(code=4000)  # not a goodbye: stays resumable
    assert second.closed.wait(CLOSE_WAIT_S)
    fourth = Client(fe.ws_url)
    w3 = fourth.hello(token(user), resume=w1["resume"])
    assert w3["resumed"] and w3["connection_id"] == w1["connection_id"]
    for c in (third, fourth):
        c.close()


def test_refresh_drops_ungranted_groups_and_takes_a_sooner_expiry(fronts: Any,
                                                                 token: Any) -> None:
    fe = fronts["limited"]
    user, a, b = uid("u"), uid("room"), uid("room")
    c = Client(fe.ws_url)
    cid = c.hello(token(user, join=("room-*",), ttl_s=600))["connection_id"]
    for g in (a, b):
        assert c.request("join", group=g)["op"] == "ack"
    assert c.request("monitor", group=b)["op"] == "ack"
    reply = c.request("refresh", token=token(user, join=(a,), ttl_s=4))
    assert reply["op"] == "ack" and reply["left"] == [{"scope": "default", "group": b}]
    assert reply["expires_at"] < time.time() + 10
    members = api(fe, "GET", f"/api/groups/default/{b}/members").json()
    assert cid not in {m["connection_id"] for m in members}
    for g, event in ((b, "gone"), (a, "marker")):
        assert api(fe, "POST", "/api/publish", json={
            "target": {"group": g}, "event": event, "data": 1, "durable": False}).status_code == 202
    c.wait_for(lambda f: f.get("event") == "marker")
    assert not c.events("gone")
    # the new token expires in 4 s, long before the old one: the session goes with it
    assert c.closed.wait(CLOSE_WAIT_S) and c.close_code == 4401


# --- 2 and 3. the hello deadline, and expiry on every upgrade path --------------------------


def test_pings_do_not_extend_the_hello_deadline(fronts: Any) -> None:
    c = raw(fronts["limited"])
    code, reason = ping_until_closed(c, CLOSE_WAIT_S)
    assert code == 4401 and "HERALD_HELLO_TIMEOUT" in reason, reason


def test_frames_before_hello_are_bounded(fronts: Any) -> None:
    c = raw(fronts["limited"])
    for _ in range(10):
        c.send_frame(0x1, b"not json")  # each gets an error; a non-hello op closes at once
    got, code, reason = c.collect_until_close(CLOSE_WAIT_S)
    assert code == 4401 and "HERALD_HELLO_MAX_FRAMES" in reason, (code, reason)
    assert [f["code"] for f in got] == ["bad_request"] * 3  # HERALD_HELLO_MAX_FRAMES: 3
    other = raw(fronts["limited"])
    other.send_json({"op": "ping"})
    got, code, reason = other.collect_until_close(CLOSE_WAIT_S)
    assert code == 4401 and [f["code"] for f in got] == ["unauthorized"]


def test_a_subprotocol_offer_stays_on_the_fast_path_and_expires(fronts: Any,
                                                              token: Any) -> None:
    fe = fronts["limited"]
    c = raw(fe, headers={"Sec-WebSocket-Protocol": "chat, superchat"})
    assert "sec-websocket-protocol" not in c.head.lower()  # none chosen, as simple-websocket
    raw_hello(c, token(uid("u"), ttl_s=3))
    code, _ = ping_until_closed(c, CLOSE_WAIT_S)
    assert code == 4401


def test_the_deflate_path_expires_tokens_too(cluster: Any, token: Any) -> None:
    """With HERALD_WS_DEFLATE on, a deflate offer is served by flask-sock's route (the
    slow path): pings must not keep it alive past the token, nor let events through."""
    fe = cluster.frontend("defl", env={"HERALD_WS_DEFLATE": "1"})
    group = uid("room")
    c = Client(fe.ws_url)  # websockets offers permessage-deflate
    assert "permessage-deflate" in (c.ws.response.headers.get("Sec-WebSocket-Extensions")
                                    or "")
    expires_at = int(time.time()) + 3
    c.hello(token(uid("u"), ttl_s=3))
    assert c.request("join", group=group)["op"] == "ack"
    deadline = time.monotonic() + CLOSE_WAIT_S
    while not c.closed.is_set() and time.monotonic() < deadline:
        try:
            c.ws.ping()
        except Exception:  # closed meanwhile
            break
        api(fe, "POST", "/api/publish", json={"target": {"group": group}, "event": "tick",
                                              "data": time.time(), "durable": False})
        time.sleep(0.3)
    assert c.closed.wait(CLOSE_WAIT_S) and c.close_code == 4401
    ticks = [f["data"] for f in c.events("tick")]
    assert ticks  # it was receiving while its token held
    # published after the token expired (a second for the clock and the publish): never
    assert max(ticks) < expires_at + 1.0, (max(ticks), expires_at)


def overflows(fe: Proc) -> float:
    text_ = api(fe, "GET", "/metrics", key="").text
    return sum(float(line.split()[-1]) for line in text_.splitlines()
               if line.startswith("herald_outbox_overflows"))


# --- 4. members and monitors --------------------------------------------------------------


def _ghost_group(engine: Any, n: int) -> tuple[str, set[str]]:
    """A group of ``n`` members on a registered frontend that holds no real socket."""
    from service.store import registry

    fe_id, group = uid("ghost-fe"), uid("big")
    registry.register_frontend(engine, fe_id, "ghost-host", None)
    with engine.begin() as db:
        db.execute(text("INSERT INTO connections (id, frontend_id, user_id) "
                        "SELECT :p || i, :fe, 'ghost' FROM generate_series(1, :n) AS i"),
                   {"p": f"{group}-c", "fe": fe_id, "n": n})
        db.execute(text("INSERT INTO memberships (connection_id, scope, group_name) "
                        "SELECT id, 'default', :g FROM connections WHERE frontend_id = :fe"),
                   {"g": group, "fe": fe_id})
    return group, {f"{group}-c{i}" for i in range(1, n + 1)}


def test_members_is_paged(fronts: Any, token: Any, engine: Any) -> None:
    group, ids = _ghost_group(engine, 2500)
    c = Client(fronts["limited"].ws_url)
    c.hello(token(uid("u")))
    whole = c.request("members", group=group)
    assert len(whole["members"]) == 1000 and whole["next"]  # HERALD_MEMBERS_LIMIT
    seen: list[str] = []
    after = None
    for _ in range(10):  # bounded: 2,500 members in pages of 700
        page = c.request("members", group=group, limit=700,
                         **({"after": after} if after else {}))
        assert len(page["members"]) <= 700
        seen += [m["connection_id"] for m in page["members"]]
        after = page["next"]
        if after is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    c.close()


def test_members_replies_cannot_pin_memory(fronts: Any, token: Any, engine: Any) -> None:
    """A client that stops reading and repeats `members` on a big group is closed with
    1013 once what is queued for it passes HERALD_OUTBOX_BYTES (256 KiB here)."""
    group, _ = _ghost_group(engine, 1000)
    fe = fronts["limited"]
    before = overflows(fe)
    c = raw(fe, rcvbuf=4096)
    raw_hello(c, token(uid("u")))
    c.sock.settimeout(5)
    sent = 0
    for i in range(400):  # ~100 KB a reply: far past the kernel's buffers and the outbox
        try:
            c.send_json({"op": "members", "group": group, "ref": i})
        except OSError:
            break  # closed meanwhile
        sent += 1
    wait_until(lambda: overflows(fe) > before, timeout=60)  # reading nothing meanwhile
    got, code, reason = c.collect_until_close(CLOSE_WAIT_S)
    assert code == 1013 and "HERALD_OUTBOX" in reason, (code, reason, sent)
    assert 0 < len([f for f in got if f["op"] == "members"]) < sent


def test_monitors_per_connection_are_capped(fronts: Any, token: Any) -> None:
    c = Client(fronts["tight"].ws_url)
    c.hello(token(uid("u")))
    for i in range(3):
        assert c.request("demonitor", group=f"g{i}")["op"] == "ack"  # costs nothing
    replies = [c.request("monitor", group=f"g{i}") for i in range(4)]
    assert [r["op"] for r in replies[:3]] == ["ack"] * 3
    assert replies[3]["code"] == "forbidden" and "HERALD_MAX_MONITORS=3" in replies[3]["message"]
    c.close()


def test_monitor_state_is_bounded_in_members(fronts: Any, token: Any, engine: Any) -> None:
    """Each monitor keeps what it was told of its group: one connection's monitors may
    track HERALD_MAX_MONITORED_MEMBERS (1,500 here) members in all."""
    big, _ = _ghost_group(engine, 1000)
    other, _ = _ghost_group(engine, 1000)
    c = Client(fronts["tight"].ws_url)
    c.hello(token(uid("u")))
    assert c.request("monitor", group=big)["op"] == "ack"
    c.wait_for(lambda f: f.get("op") == "presence" and f["group"] == big)
    refused = c.request("monitor", group=other)
    assert refused["code"] == "forbidden"
    assert "HERALD_MAX_MONITORED_MEMBERS=1500" in refused["message"]
    assert not [f for f in c.frames if f.get("op") == "presence" and f["group"] == other]
    c.close()


def test_members_and_monitor_reads_have_a_per_user_quota(fronts: Any, token: Any) -> None:
    user = uid("u")
    c = Client(fronts["tight"].ws_url)
    c.hello(token(user))
    replies = [c.request("members", group="g") for _ in range(4)]
    assert [r["op"] for r in replies[:3]] == ["members"] * 3
    assert replies[3]["code"] == "rate_limited"
    assert "HERALD_USER_QUERIES_PER_MIN=3" in replies[3]["message"]
    # per user, not per socket: another socket of the same user is out of quota too
    other = Client(fronts["tight"].ws_url)
    other.hello(token(user))
    assert other.request("members", group="g")["code"] == "rate_limited"
    for x in (c, other):
        x.close()


# --- 5. replay, durable publishes, tasks ----------------------------------------------------


def _publish_to_user(fe: Proc, user: str, n: int, size: int = 8) -> None:
    for i in range(n):
        r = api(fe, "POST", "/api/publish", json={"target": {"user": user}, "event": "m",
                                                  "data": {"i": i, "pad": "x" * size}})
        assert r.status_code == 202, r.text


def test_replay_is_capped_per_hello_and_per_user(fronts: Any, token: Any) -> None:
    fe = fronts["tight"]
    user = uid("u")
    _publish_to_user(fe, user, 120)
    got = []
    for _ in range(3):
        c = Client(fe.ws_url)
        w = c.hello(token(user), last_id=0)
        got.append((w["replayed"], w["gap"]))
        if w["replayed"]:
            c.wait_for(lambda f: f.get("op") == "event", count=w["replayed"])
        assert len(c.events()) == w["replayed"]
        c.close()
    # 50 a hello (HERALD_REPLAY_LIMIT), 100 a minute for the user (HERALD_USER_REPLAY_PER_MIN)
    assert got == [(50, True), (50, True), (0, True)]


def test_replay_streams_under_the_outbox_bound(fronts: Any, token: Any) -> None:
    """12 MB of missed messages reach a reading client whole through a 256 KiB outbox; a
    client that does not read is closed with 1013 instead of pinning them."""
    fe = fronts["limited"]
    user = uid("u")
    first = Client(fe.ws_url)
    seen = first.hello(token(user))["log_id"] or 0  # what this client had seen
    first.close()
    _publish_to_user(fe, user, 200, size=60_000)
    reader = Client(fe.ws_url)
    w = reader.hello(token(user), last_id=seen)
    # its own 200, and whatever other tests sent to everyone meanwhile
    assert w["replayed"] >= 200 and w["gap"] is False, w
    reader.wait_for(lambda f: f.get("event") == "m", count=200, timeout=60)
    assert [f["data"]["i"] for f in reader.events("m")] == list(range(200))
    reader.close()
    before = overflows(fe)
    stalled = raw(fe, rcvbuf=4096)
    stalled.send_json({"op": "hello", "token": token(user), "last_id": seen})
    # it reads nothing until the frontend has given up on it (bounded wait)
    wait_until(lambda: overflows(fe) > before, timeout=60)
    got, code, reason = stalled.collect_until_close(CLOSE_WAIT_S)
    assert code == 1013, (code, reason, len(got))


def test_client_durable_publishes_and_task_starts_have_a_per_user_quota(
        fronts: Any, token: Any) -> None:
    c = Client(fronts["tight"].ws_url)
    c.hello(token(uid("u")))
    durable = [c.request("publish", all=True, event="e", data=i, durable=True)
               for i in range(4)]
    assert [r["op"] for r in durable[:3]] == ["ack"] * 3
    assert durable[3]["code"] == "rate_limited"
    assert "HERALD_USER_DURABLE_PER_MIN=3" in durable[3]["message"]
    assert c.request("publish", all=True, event="e", data=0)["op"] == "ack"  # transient: free
    tasks = [c.request("task", name="demo.noop", args={}) for _ in range(3)]
    assert [r["op"] for r in tasks[:2]] == ["ack"] * 2
    assert tasks[2]["code"] == "rate_limited"
    assert "HERALD_USER_TASKS_PER_MIN=2" in tasks[2]["message"]
    c.close()


# --- 8 and the connection limit -------------------------------------------------------------


def test_deep_nesting_before_hello_is_a_bad_request_without_a_traceback(fronts: Any) -> None:
    fe = fronts["limited"]
    deep = "[" * 15_000 + "]" * 15_000  # 60 KB a frame: under HERALD_MAX_FRAME
    c = raw(fe)
    c.send_frame(0x1, f'{{"op": "hello", "token": {deep}, "ref": {deep}}}'.encode())
    c.send_frame(0x1, f'{{"op": {deep}}}'.encode())
    c.sock.settimeout(CLOSE_WAIT_S)
    replies = [c.read_json(), c.read_json()]
    assert [r["code"] for r in replies] == ["bad_request", "bad_request"]
    c.close()
    log = fe.log_path.read_text(errors="replace")
    assert "RecursionError" not in log and "Traceback" not in log


def test_connection_limit_says_which_limit(fronts: Any, token: Any) -> None:
    fe = fronts["limited"]
    user = uid("many")
    held = [Client(fe.ws_url) for _ in range(3)]
    for c in held:
        c.hello(token(user))
    extra = raw(fe)
    extra.send_json({"op": "hello", "token": token(user)})
    got, code, reason = extra.collect_until_close(CLOSE_WAIT_S)
    assert code == 1008 and "HERALD_MAX_USER_CONNECTIONS=3" in reason, reason
    assert got[0]["code"] == "rate_limited" and "HERALD_MAX_USER_CONNECTIONS" in got[0]["message"]
    for c in held:
        c.close()


def test_no_connection_limit_by_default(pair: Any, token: Any) -> None:
    """A load test with one user's token: 30 sockets, all welcomed (the limit is off by
    default, as Centrifugo's)."""
    user = uid("load")
    held = []
    for i in range(30):
        c = Client(pair[i % 2].ws_url)
        c.hello(token(user))
        held.append(c)
    assert len(api(pair[0], "GET", f"/api/users/{user}/connections").json()) == 30
    for c in held:
        c.close()


# --- 6. development and production modes ----------------------------------------------------


def test_production_has_no_demo_endpoint_and_no_demo_tasks(cluster: Any, token: Any) -> None:
    key = "p" * 40
    fe = cluster.frontend("prod", env={"HERALD_ENV": "production", "HERALD_API_KEYS": key,
                                       "HERALD_ALLOWED_ORIGINS": "https://app.example"})
    r = api(fe, "POST", "/demo/token", key="", json={"user": "admin"})
    assert r.status_code == 404 and "token" not in r.json()
    r = api(fe, "POST", "/api/tasks", key=key, json={"name": "demo.sleep", "args": {},
                                                     "notify": {"user": "x"}})
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    c = Client(fe.ws_url)
    c.hello(token(uid("u")))
    reply = c.request("task", name="demo.noop", args={})
    assert reply["code"] == "not_found" and "development" in reply["message"]
    c.close()
    log = fe.log_path.read_text(errors="replace")
    assert "DEVELOPMENT MODE" not in log


def test_a_production_worker_does_not_know_the_demo_tasks() -> None:
    import subprocess
    import sys

    from tests.support import ROOT

    code = ("from workers.celery_app import app; app.loader.import_default_modules(); "
            "import json; print(json.dumps(sorted(t for t in app.tasks if "
            "not t.startswith('celery.'))))")
    for env, has_demo in (({"HERALD_ENV": "production", "HERALD_SECRET_KEY": "s" * 40,
                            "HERALD_API_KEYS": "k" * 40,
                            "HERALD_ALLOWED_ORIGINS": "https://a.example"}, False),
                          ({"HERALD_ENV": "development"}, True)):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, env={**ENV, **env}, timeout=60, check=True)
        tasks = json.loads(out.stdout.strip().splitlines()[-1])
        assert ("demo.sleep" in tasks) is has_demo, tasks
        assert "herald.sweep_frontends" in tasks, tasks  # the modules were loaded


def test_development_mode_warns_at_every_start(cluster: Any) -> None:
    fe = cluster.frontend("dev")
    wait_until(lambda: "DEVELOPMENT MODE" in fe.log_path.read_text(errors="replace"))


def test_nothing_follows_the_answer_to_a_client_s_close(fronts: Any, token: Any) -> None:
    """Frames the client sent in the same write as its close are handled (a publish among
    them is delivered) but get no reply: the server's close answer is the last frame."""
    fe, user, room = fronts["limited"], uid("closer"), uid("room")
    listener = Client(fe.ws_url)
    listener.hello(token(uid("listener")))
    listener.request("join", group=room)
    c = raw(fe)
    raw_hello(c, token(user, join=("*",), publish=("*",)))
    c.sock.sendall(
        c.frame(0x1, json.dumps({"op": "ping", "ref": 1}).encode())
        + c.frame(0x1, json.dumps({"op": "publish", "ref": 2, "group": room,
                                   "event": "bye", "data": 1}).encode())
        + c.frame(0x8, (1000).to_bytes(2, "big")))
    c.sock.settimeout(CLOSE_WAIT_S)
    opcodes = []
    for _ in range(100):  # until the server ends the connection
        try:
            opcodes.append(c.read_frame()[0])
        except (EOFError, OSError):
            break
    c.close()
    assert opcodes and opcodes[-1] == 0x8 and opcodes.count(0x8) == 1, opcodes
    assert listener.wait_for(lambda f: f.get("event") == "bye")[0]["data"] == 1
    listener.close()
