"""Delivery receipts (PROTOCOL.md, "Additions, second round"): a publish with
``receipt: true``, then GET /api/messages/<id> reports the sockets each frontend wrote it
to, and the targeted user when nobody had a socket of theirs."""

from __future__ import annotations

import uuid
from typing import Any

from service.core.envelope import Target
from service.pg import Herald
from tests.support import Client, Proc, api, wait_until


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def frontend_id(p: Proc) -> str:
    return str(api(p, "GET", "/healthz").json()["frontend"])


def publish(p: Proc, target: dict[str, Any], event: str, **kw: Any) -> int:
    r = api(p, "POST", "/api/publish", json={"target": target, "event": event,
                                             "receipt": True, **kw})
    assert r.status_code == 202, r.text
    return int(r.json()["id"])


def received(clients: dict[str, tuple[Proc, Client]], event: str, fronts: tuple[Proc, Proc],
             count: int) -> dict[str, int]:
    """Wait for ``count`` clients to get ``event``; the sockets that got it, per frontend."""
    wait_until(lambda: sum(bool(c.events(event)) for _, c in clients.values()) >= count)
    got: dict[str, int] = {}
    for p, c in clients.values():
        if c.events(event):
            fe = frontend_id(p)
            got[fe] = got.get(fe, 0) + 1
    assert set(got) <= {frontend_id(f) for f in fronts}
    return got


def report(p: Proc, msg_id: int) -> dict[str, Any]:
    r = api(p, "GET", f"/api/messages/{msg_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_receipts_equal_the_sockets_that_received(pair: tuple[Proc, Proc], token: Any) -> None:
    pa, pb = pair
    u1, u2, u3, room = uid("u1"), uid("u2"), uid("u3"), uid("room")
    layout = {"a1": (pa, u1), "a2": (pa, u1), "a3": (pa, u2), "b1": (pb, u1), "b2": (pb, u3)}
    clients: dict[str, tuple[Proc, Client]] = {}
    conn_ids: dict[str, str] = {}
    for name, (p, user) in layout.items():
        c = Client(p.ws_url)
        conn_ids[name] = c.hello(token(user))["connection_id"]
        clients[name] = (p, c)
    for name in ("a1", "b1", "b2"):
        assert clients[name][1].request("join", group=room)["op"] == "ack"

    cases = [  # (publishing frontend, target, extra fields, clients that must get it)
        (pa, {"user": u1}, {}, {"a1", "a2", "b1"}),
        (pb, {"group": room}, {}, {"a1", "b1", "b2"}),
        (pa, {"all": True}, {"exclude_connection": conn_ids["a2"]}, {"a1", "a3", "b1", "b2"}),
    ]
    for p, target, extra, expected in cases:
        event = uid("r")
        msg_id = publish(p, target, event, **extra)
        got = received(clients, event, pair, len(expected))
        assert {n for n, (_, c) in clients.items() if c.events(event)} == expected
        # the reports land within a second; poll (bounded) rather than time them
        wait_until(lambda m=msg_id, g=got: report(pb, m)["delivered"] == g)
        rep = report(pa, msg_id)
        assert rep == {"id": msg_id, "delivered": got, "offline_users": []}
        assert sum(rep["delivered"].values()) == len(expected)


def test_an_offline_user_is_reported(pair: tuple[Proc, Proc]) -> None:
    pa, pb = pair
    nobody = uid("nobody")
    msg_id = publish(pa, {"user": nobody}, uid("r"))
    assert report(pb, msg_id) == {"id": msg_id, "delivered": {}, "offline_users": [nobody]}


def test_no_receipt_unless_asked_and_bad_combinations(pair: tuple[Proc, Proc]) -> None:
    pa, _ = pair
    plain = api(pa, "POST", "/api/publish", json={"target": {"all": True}, "event": "x"})
    r = api(pa, "GET", f"/api/messages/{plain.json()['id']}")
    assert r.status_code == 404 and "receipt: true" in r.json()["message"]
    assert api(pa, "GET", f"/api/messages/{2**64}").status_code == 404
    for extra, headers in (({"durable": False}, {}), ({}, {"Idempotency-Key": uid("k")})):
        r = api(pa, "POST", "/api/publish", headers=headers,
                json={"target": {"all": True}, "event": "x", "receipt": True, **extra})
        assert r.status_code == 400 and "receipt needs durable" in r.json()["message"], r.text
    r = api(pa, "POST", "/api/publish/batch", json={"messages": [
        {"target": {"all": True}, "event": "x", "receipt": True}]})
    assert r.status_code == 400  # receipts are for single publishes


def test_python_api_receipt(pair: tuple[Proc, Proc], token: Any) -> None:
    pa, _ = pair
    user = uid("py")
    c = Client(pa.ws_url)
    c.hello(token(user))
    herald = Herald()
    try:
        event = uid("r")
        msg_id = herald.publish(Target.user(user), event, 1, receipt=True)
        assert isinstance(msg_id, int)
        c.wait_for(lambda f: f.get("event") == event)
        want = {"id": msg_id, "delivered": {frontend_id(pa): 1}, "offline_users": []}
        wait_until(lambda: herald.receipt(msg_id) == want)
        assert herald.receipt(msg_id + 10**9) is None
    finally:
        herald.close()
