"""Issue 3: Erlang pg parity across two frontends: groups, scopes, members, monitors."""

from __future__ import annotations

import uuid
from typing import Any

from tests.support import Client, api, wait_until


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def marker(clients: list[Client], *frontends: Any) -> None:
    """Publish a transient `marker` to all through each of ``frontends`` and wait for every
    one everywhere: what came before it from the same publisher has been delivered (order
    holds per publisher only, so each frontend that published sends its own)."""
    tags = []
    for fe in frontends:
        tags.append(tag := uid("m"))
        api(fe, "POST", "/api/publish", json={"target": {"all": True}, "event": "marker",
                                              "data": tag, "durable": False})
    for c in clients:
        for tag in tags:
            c.wait_for(lambda f, tag=tag: f.get("event") == "marker" and f["data"] == tag)


def test_targets_reach_exactly_their_sockets(pair: Any, token: Any) -> None:
    pa, pb = pair
    room, alice, bob = uid("room"), uid("alice"), uid("bob")
    a1, a2, b1 = Client(pa.ws_url), Client(pb.ws_url), Client(pb.ws_url)
    w_a1, w_a2, w_b1 = a1.hello(token(alice)), a2.hello(token(alice)), b1.hello(token(bob))
    assert a1.request("join", group=room)["op"] == "ack"                # default scope, A
    assert b1.request("join", group=room)["op"] == "ack"                # default scope, B
    assert a2.request("join", group=room, scope="other")["op"] == "ack"  # same name, other scope
    everyone = [a1, a2, b1]

    api(pa, "POST", "/api/publish", json={"target": {"group": room}, "event": "g-default"})
    api(pb, "POST", "/api/publish", json={"target": {"group": room, "scope": "other"},
                                          "event": "g-other"})
    api(pb, "POST", "/api/publish", json={"target": {"user": alice}, "event": "to-alice"})
    api(pa, "POST", "/api/publish", json={"target": {"connection": w_b1["connection_id"]},
                                          "event": "to-b1"})
    b1.request("publish", group=room, event="from-b1", data=1)  # a frame, same rules
    marker(everyone, pa, pb)

    def got(c: Client) -> list[str]:
        return sorted(e["event"] for e in c.events() if e["event"] != "marker")

    assert got(a1) == ["from-b1", "g-default", "to-alice"]
    assert got(a2) == ["g-other", "to-alice"]
    assert got(b1) == ["g-default", "to-b1"]
    assert w_a1["frontend"] != w_a2["frontend"]


def _ids(members: list[dict[str, str]]) -> set[str]:
    return {m["connection_id"] for m in members}


def test_members_cluster_and_local_agree_with_sockets(pair: Any, token: Any) -> None:
    pa, pb = pair
    room, user = uid("room"), uid("u")
    on_a = [Client(pa.ws_url) for _ in range(3)]
    on_b = [Client(pb.ws_url) for _ in range(2)]
    cid = {c: c.hello(token(user))["connection_id"] for c in on_a + on_b}
    for c in on_a + on_b:
        c.request("join", group=room)
    on_a[0].request("leave", group=room)
    on_b[1].close()
    wait_until(lambda: len(on_a[1].request("members", group=room)["members"]) == 3)

    expect_a = {cid[on_a[1]], cid[on_a[2]]}
    expect_b = {cid[on_b[0]]}
    reply = on_a[1].request("members", group=room)
    assert _ids(reply["members"]) == expect_a | expect_b
    assert reply["group"] == room and reply["scope"] == "default"
    assert _ids(on_a[1].request("members", group=room, local=True)["members"]) == expect_a
    assert _ids(on_b[0].request("members", group=room, local=True)["members"]) == expect_b
    path = f"/api/groups/default/{room}/members"
    assert _ids(api(pb, "GET", path).json()) == expect_a | expect_b
    assert _ids(api(pa, "GET", path + "?local=1").json()) == expect_a
    assert _ids(api(pb, "GET", path + "?local=1").json()) == expect_b
    groups = api(pa, "GET", "/api/groups?scope=default").json()
    assert {"scope": "default", "group": room, "members": 3} in groups

    conns = api(pa, "GET", f"/api/users/{user}/connections").json()
    fe_a = on_a[0].request("ping") and requests_frontend(pa)
    fe_b = requests_frontend(pb)
    by_id = {c["connection_id"]: c for c in conns}
    assert set(by_id) == set(cid.values()) - {cid[on_b[1]]}
    for c in on_a:
        assert by_id[cid[c]]["frontend"] == fe_a
    assert by_id[cid[on_b[0]]]["frontend"] == fe_b
    assert by_id[cid[on_a[1]]]["groups"] == [{"scope": "default", "group": room}]
    assert by_id[cid[on_a[0]]]["groups"] == []


def requests_frontend(proc: Any) -> str:
    return str(api(proc, "GET", "/healthz").json()["frontend"])


def test_server_side_join_and_leave_across_frontends(pair: Any, token: Any) -> None:
    pa, pb = pair
    room = uid("room")
    c = Client(pb.ws_url)
    cid = c.hello(token(uid("u")))["connection_id"]
    path = f"/api/groups/default/{room}/members/{cid}"
    assert api(pa, "PUT", path).status_code == 204      # on A, for a socket on B
    wait_until(lambda: _ids(api(pb, "GET", f"/api/groups/default/{room}/members?local=1").json()))
    api(pa, "POST", "/api/publish", json={"target": {"group": room}, "event": "hello-room"})
    c.wait_for(lambda f: f.get("event") == "hello-room")
    assert api(pa, "DELETE", path).status_code == 204
    wait_until(lambda: not api(pb, "GET", f"/api/groups/default/{room}/members?local=1").json())
    assert api(pa, "GET", f"/api/groups/default/{room}/members").json() == []
    missing = api(pa, "PUT", f"/api/groups/default/{room}/members/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_monitor_sees_remote_joins_and_leaves_once_in_order(pair: Any, token: Any) -> None:
    pa, pb = pair
    room = uid("room")
    early = Client(pb.ws_url)
    early_id = early.hello(token(uid("e")))["connection_id"]
    early.request("join", group=room)

    mon = Client(pa.ws_url)
    mon.hello(token(uid("mon")))
    assert mon.request("monitor", group=room)["op"] == "ack"
    snap = mon.wait_for(lambda f: f.get("op") == "presence")[0]
    assert _ids(snap["joins"]) == {early_id} and snap["leaves"] == []

    others = [Client(pb.ws_url) for _ in range(3)]
    ids = [o.hello(token(uid("o")))["connection_id"] for o in others]
    for o in others:
        o.request("join", group=room)
        o.request("join", group=room)          # a second join changes nothing
    others[0].request("leave", group=room)
    others[1].close()                          # disconnect: an automatic leave
    early.request("leave", group=room)
    api(pb, "PUT", f"/api/groups/default/{room}/members/{ids[0]}")  # server-side re-join

    expected = 3 + 1 + 1 + 1 + 1  # joins, leave, disconnect, early's leave, re-join

    def changes() -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        # changes within PRESENCE_BATCH_S share a frame (the disconnect and early's leave
        # may), each connection once per frame: count entries, not frames
        frames = [f for f in list(mon.frames) if f.get("op") == "presence"][1:]
        return frames, [(m["connection_id"], kind) for f in frames
                        for kind in ("joins", "leaves", "updates") for m in f[kind]]

    wait_until(lambda: len(changes()[1]) >= expected)
    frames, log = changes()
    assert len(log) == expected, log
    assert [k for c, k in log if c == ids[0]] == ["joins", "leaves", "joins"]
    assert [k for c, k in log if c == ids[1]] == ["joins", "leaves"]
    assert [k for c, k in log if c == ids[2]] == ["joins"]
    assert [k for c, k in log if c == early_id] == ["leaves"]
    assert all(f["group"] == room and f["scope"] == "default" for f in frames)

    marker([mon], pa, pb)
    seen = len([f for f in mon.frames if f.get("op") == "presence"])
    assert len(changes()[1]) == expected  # nothing more came
    mon.request("demonitor", group=room)
    others[2].request("leave", group=room)
    marker([mon, others[2]], pa, pb)
    assert len([f for f in mon.frames if f.get("op") == "presence"]) == seen


def test_manage_py_registry_lookups(pair: Any, token: Any, runner: Any) -> None:
    import json

    pa, _ = pair
    room, user = uid("room"), uid("cli")
    c = Client(pa.ws_url)
    cid = c.hello(token(user))["connection_id"]
    c.request("join", group=room, scope="cli")
    fid = requests_frontend(pa)
    members = json.loads(runner("members", room, "--scope", "cli").stdout)
    assert [(m["connection_id"], m["user_id"], m["frontend"]) for m in members] == [
        (cid, user, fid)]
    conns = json.loads(runner("connections", "--user", user).stdout)
    assert [(x["connection_id"], x["frontend"]) for x in conns] == [(cid, fid)]
    assert conns[0]["groups"] == [{"scope": "cli", "group": room}]
    frontends = {f["id"]: f for f in json.loads(runner("frontends").stdout)}
    assert frontends[fid]["connections"] >= 1 and frontends[fid]["draining"] is False
