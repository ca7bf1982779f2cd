"""Issue 16, part 1: presence with metadata (`join.meta`, `update`, metas in members and
presence frames) across two frontends, its limit, resume, and batched presence in a storm."""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests.support import Client, api, wait_until

#: Sockets joining one room at once in the storm test (bounded: one thread each).
STORM = 200
#: How long the storm's joins may take to be acknowledged, in all.
STORM_WAIT_S = 60.0
#: The storm arrives in waves (a reconnect storm is spread over a while, not one loop
#: turn): WAVES of STORM // WAVES joins, WAVE_GAP_S apart, far less than the batching
#: interval in all, so batches must span waves.
WAVES = 20
WAVE_GAP_S = 0.01


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def presence_frames(c: Client) -> list[dict[str, Any]]:
    return [f for f in list(c.frames) if f.get("op") == "presence"]


def entries(c: Client, kind: str) -> list[dict[str, Any]]:
    """Every entry of ``kind`` (joins, leaves, updates) in the presence frames so far."""
    return [m for f in presence_frames(c) for m in f.get(kind, [])]


def metas(members: list[dict[str, Any]]) -> dict[str, Any]:
    return {m["connection_id"]: m["meta"] for m in members}


def monitor(fe: Any, token: Any, room: str) -> Client:
    mon = Client(fe.ws_url)
    mon.hello(token(uid("mon")))
    assert mon.request("monitor", group=room)["op"] == "ack"
    mon.wait_for(lambda f: f.get("op") == "presence")  # the snapshot
    return mon


def test_meta_round_trips_through_join_members_and_presence_on_both_frontends(
        pair: Any, token: Any) -> None:
    pa, pb = pair
    room = uid("room")
    mon_a, mon_b = monitor(pa, token, room), monitor(pb, token, room)
    c = Client(pb.ws_url)
    cid = c.hello(token(uid("u")))["connection_id"]
    meta = {"status": "online", "device": "phone", "n": 1}
    assert c.request("join", group=room, meta=meta)["op"] == "ack"

    for mon in (mon_a, mon_b):  # the remote frontend's monitor and the local one
        mon.wait_for(lambda f: any(m["connection_id"] == cid for m in f.get("joins", [])))
        assert metas(entries(mon, "joins"))[cid] == meta
    reply = Client(pa.ws_url)
    reply.hello(token(uid("q")))
    assert metas(reply.request("members", group=room)["members"]) == {cid: meta}
    assert metas(api(pa, "GET", f"/api/groups/default/{room}/members").json()) == {cid: meta}
    local = api(pb, "GET", f"/api/groups/default/{room}/members?local=1").json()
    assert metas(local) == {cid: meta}
    assert metas(reply.request("members", group=room, local=True)["members"]) == {}  # on B

    away = {"status": "away"}
    assert c.request("update", group=room, meta=away)["op"] == "ack"
    for mon in (mon_a, mon_b):
        mon.wait_for(lambda f: any(m["connection_id"] == cid for m in f.get("updates", [])))
        assert metas(entries(mon, "updates")) == {cid: away}
        assert all("updates" in f for f in presence_frames(mon))
    assert metas(api(pa, "GET", f"/api/groups/default/{room}/members").json()) == {cid: away}
    assert metas(reply.request("members", group=room)["members"]) == {cid: away}

    assert c.request("join", group=room)["op"] == "ack"  # a re-join without meta: no change
    assert c.request("join", group=room, meta=away)["op"] == "ack"  # with one: an update
    assert c.request("leave", group=room)["op"] == "ack"
    for mon in (mon_a, mon_b):
        mon.wait_for(lambda f: any(m["connection_id"] == cid for m in f.get("leaves", [])))
        assert metas(entries(mon, "leaves")) == {cid: away}

    # a member without a meta has {}; a new join after a leave starts from its own meta
    assert c.request("join", group=room)["op"] == "ack"
    assert metas(api(pa, "GET", f"/api/groups/default/{room}/members").json()) == {cid: {}}


def test_meta_over_the_limit_and_update_outside_a_group_are_refused(
        pair: Any, token: Any) -> None:
    pa, _ = pair
    room = uid("room")
    c = Client(pa.ws_url)
    c.hello(token(uid("u")))
    big = {"blob": "x" * 1100}  # over the default HERALD_MAX_META of 1024 bytes
    err = c.request("join", group=room, meta=big)
    assert err["op"] == "error" and err["code"] == "bad_request", err
    assert "HERALD_MAX_META=1024" in err["message"]
    assert api(pa, "GET", f"/api/groups/default/{room}/members").json() == []
    for bad in ([1, 2], "text"):
        assert c.request("join", group=room, meta=bad)["code"] == "bad_request"

    err = c.request("update", group=room, meta={"status": "away"})
    assert err["op"] == "error" and "not a member" in err["message"], err
    assert c.request("join", group=room, meta={"a": 1})["op"] == "ack"
    err = c.request("update", group=room, meta=big)
    assert "HERALD_MAX_META" in err["message"], err
    members = api(pa, "GET", f"/api/groups/default/{room}/members").json()
    assert [m["meta"] for m in members] == [{"a": 1}]  # the refused update changed nothing
    assert c.request("ping")["op"] == "pong"  # the socket stays open


def test_server_side_join_takes_a_meta_body(pair: Any, token: Any) -> None:
    pa, pb = pair
    room = uid("room")
    mon = monitor(pa, token, room)
    c = Client(pb.ws_url)
    cid = c.hello(token(uid("u")))["connection_id"]
    path = f"/api/groups/default/{room}/members/{cid}"
    too_big = api(pa, "PUT", path, json={"meta": {"blob": "x" * 1100}})
    assert too_big.status_code == 400 and "HERALD_MAX_META" in too_big.json()["message"]
    assert api(pa, "PUT", path, json={"meta": ["no"]}).status_code == 400
    assert api(pa, "PUT", path, json={"meta": {"role": "host"}}).status_code == 204
    mon.wait_for(lambda f: any(m["connection_id"] == cid for m in f.get("joins", [])))
    assert metas(entries(mon, "joins")) == {cid: {"role": "host"}}
    wait_until(lambda: metas(api(pb, "GET",
                                 f"/api/groups/default/{room}/members?local=1").json())
               == {cid: {"role": "host"}})
    # a server-side join of a member with another meta: an update
    assert api(pa, "PUT", path, json={"meta": {"role": "guest"}}).status_code == 204
    mon.wait_for(lambda f: any(m["connection_id"] == cid for m in f.get("updates", [])))
    assert metas(entries(mon, "updates")) == {cid: {"role": "guest"}}
    assert api(pa, "PUT", path).status_code == 204  # no body: as before, nothing changes
    assert metas(api(pa, "GET", f"/api/groups/default/{room}/members").json()) == {
        cid: {"role": "guest"}}


def test_resume_restores_the_meta(pair: Any, token: Any) -> None:
    pa, pb = pair
    room, user = uid("room"), uid("u")
    c = Client(pa.ws_url)
    welcome = c.hello(token(user))
    cid = welcome["connection_id"]
    assert c.request("join", group=room, meta={"cursor": [1, 2]})["op"] == "ack"
    assert c.request("update", group=room, meta={"cursor": [3, 4]})["op"] == "ack"
    c.ws.close(code=4000)  # not a goodbye: resumable
    assert c.closed.wait(20)
    wait_until(lambda: api(pa, "GET", f"/api/groups/default/{room}/members").json() == [])
    mon = monitor(pa, token, room)

    again = Client(pb.ws_url)
    w = again.hello(token(user), resume=welcome["resume"])
    assert w["resumed"] is True and w["connection_id"] == cid
    mon.wait_for(lambda f: any(m["connection_id"] == cid for m in f.get("joins", [])))
    joined = [m for m in entries(mon, "joins") if m["connection_id"] == cid]
    assert joined[-1]["meta"] == {"cursor": [3, 4]} and joined[-1]["frontend"] == w["frontend"]
    assert metas(api(pa, "GET", f"/api/groups/default/{room}/members").json()) == {
        cid: {"cursor": [3, 4]}}
    local = api(pb, "GET", f"/api/groups/default/{room}/members?local=1").json()
    assert metas(local) == {cid: {"cursor": [3, 4]}}


def test_a_join_storm_reaches_a_monitor_in_a_few_batched_frames(
        pair: Any, token: Any) -> None:
    pa, pb = pair
    room = uid("storm")
    mon = monitor(pa, token, room)
    snapshot_frames = len(presence_frames(mon))
    clients = [Client(pb.ws_url) for _ in range(STORM)]
    try:
        ids = {c.hello(token(uid("s")))["connection_id"] for c in clients}
        for i, c in enumerate(clients):  # no waiting for acks in between
            c.send({"op": "join", "ref": "storm", "group": room, "meta": {"i": i}})
            if i % (STORM // WAVES) == STORM // WAVES - 1:
                time.sleep(WAVE_GAP_S)
        deadline = time.monotonic() + STORM_WAIT_S
        for c in clients:
            c.wait_for(lambda f: f.get("ref") == "storm",
                       timeout=max(1.0, deadline - time.monotonic()))
        wait_until(lambda: {m["connection_id"] for m in entries(mon, "joins")} >= ids,
                   timeout=STORM_WAIT_S)
        frames = presence_frames(mon)[snapshot_frames:]
        joined = entries(mon, "joins")
        assert len(joined) == STORM and {m["connection_id"] for m in joined} == ids
        assert sorted(m["meta"]["i"] for m in joined) == list(range(STORM))
        # batched per interval: each frame carries many joins, across waves (one frame
        # per join would be STORM, one per loop turn at least WAVES)
        assert len(frames) <= WAVES // 2, len(frames)
        assert len(api(pa, "GET", f"/api/groups/default/{room}/members").json()) == STORM
    finally:
        for c in clients:
            c.close()
