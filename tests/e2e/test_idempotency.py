"""Idempotent publish (PROTOCOL.md, "Additions, second round"): an Idempotency-Key
repeated within HERALD_IDEMPOTENCY_TTL answers the first id and is delivered once, also
when the repeats race each other on two frontends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from service.core.envelope import Target
from service.core.errors import BadRequest
from service.pg import Herald
from tests.conftest import ENV, Cluster
from tests.support import Client, Proc, api, in_threads, wait_until

#: Short, so that a repeat after it can be waited for; long enough for 8 racing requests.
TTL_S = 4
#: The concurrent repeats of one key the race test sends (alternating frontends).
RACERS = 8


@pytest.fixture(scope="module")
def fronts() -> Iterator[tuple[Proc, Proc]]:
    c = Cluster()
    env = {"HERALD_IDEMPOTENCY_TTL": str(TTL_S)}
    try:
        a, b = c.frontends("ia", "ib", env=env)
        yield a, b
    finally:
        c.stop()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def watchers(fronts: tuple[Proc, Proc], token: Any) -> list[Client]:
    clients = [Client(p.ws_url) for p in fronts]
    for c in clients:
        c.hello(token(uid("w")))
    return clients


def settle(fronts: tuple[Proc, Proc], clients: list[Client]) -> None:
    """A marker from each frontend, received by every client: whatever was published
    before it has arrived (each publisher's messages keep their order)."""
    tags = []
    for p in fronts:
        tag = uid("marker")
        tags.append(tag)
        api(p, "POST", "/api/publish", json={"target": {"all": True}, "event": "marker",
                                             "data": tag})
    for c in clients:
        for tag in tags:
            c.wait_for(lambda f, t=tag: f.get("event") == "marker" and f["data"] == t)


def publish(p: Proc, key: str, event: str, data: Any = None, **kw: Any) -> Any:
    return api(p, "POST", "/api/publish", headers={"Idempotency-Key": key},
               json={"target": {"all": True}, "event": event, "data": data}, **kw)


def rows(engine: Engine, event: str) -> int:
    with engine.connect() as db:
        return int(db.execute(text("SELECT count(*) FROM messages WHERE event = :e"),
                              {"e": event}).scalar_one())


def test_racing_repeats_on_two_frontends_are_delivered_once(
        fronts: tuple[Proc, Proc], token: Any, engine: Engine) -> None:
    clients = watchers(fronts, token)
    key, event = str(uuid.uuid4()), uid("race")
    ids: list[int] = []

    def send(i: int) -> None:
        r = publish(fronts[i % 2], key, event, {"try": i})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])

    in_threads(send, RACERS)
    assert len(ids) == RACERS and len(set(ids)) == 1 and isinstance(ids[0], int)
    settle(fronts, clients)
    assert rows(engine, event) == 1
    for c in clients:
        got = c.events(event)
        assert [e["id"] for e in got] == ids[:1]  # once, on either frontend


def test_a_repeat_after_the_ttl_is_a_new_message(
        fronts: tuple[Proc, Proc], token: Any, engine: Engine) -> None:
    clients = watchers(fronts, token)
    key, event = uid("k"), uid("ttl")
    first = publish(fronts[0], key, event, 1).json()["id"]
    assert publish(fronts[1], key, event, 2).json()["id"] == first  # within the TTL
    # bounded: the claim expires TTL_S after the first publish
    wait_until(lambda: publish(fronts[1], key, event, 3).json()["id"] != first,
               timeout=TTL_S * 5, interval=0.5)
    settle(fronts, clients)
    assert rows(engine, event) == 2
    for c in clients:
        got = c.events(event)
        assert len(got) == 2 and got[0]["id"] == first and got[0]["data"] == 1
        assert got[1]["id"] > first and got[1]["data"] == 3


def test_batch_entries_with_keys(fronts: tuple[Proc, Proc], token: Any) -> None:
    clients = watchers(fronts, token)
    event = uid("batch")
    k1, k2 = uid("k1"), uid("k2")

    def batch(p: Proc, *entries: tuple[str | None, int]) -> list[int]:
        msgs = [{"target": {"all": True}, "event": event, "data": n,
                 **({"idempotency_key": k} if k else {})} for k, n in entries]
        r = api(p, "POST", "/api/publish/batch", json={"messages": msgs})
        assert r.status_code == 202, r.text
        assert r.json()["errors"] == []
        return list(r.json()["ids"])

    a = batch(fronts[0], (k1, 1), (None, 2), (k2, 3))
    b = batch(fronts[1], (k2, 4), (k1, 5), (None, 6), (k1, 7))
    assert b[0] == a[2] and b[1] == a[0] and b[3] == a[0]
    assert len({*a, b[2]}) == 4
    settle(fronts, clients)
    for c in clients:
        assert [e["data"] for e in c.events(event)] == [1, 2, 3, 6]


def test_tenants_do_not_share_keys(fronts: tuple[Proc, Proc]) -> None:
    key, event = uid("shared"), uid("tenant")
    one = api(fronts[0], "POST", "/api/publish", key="test-key-1",
              headers={"Idempotency-Key": key}, json={"target": {"all": True}, "event": event})
    two = api(fronts[0], "POST", "/api/publish", key="test-key-2",
              headers={"Idempotency-Key": key}, json={"target": {"all": True}, "event": event})
    assert one.json()["id"] != two.json()["id"]


@pytest.mark.parametrize("bad", ["", "with space", "x" * 129])
def test_bad_keys_and_transient_keys_are_refused(fronts: tuple[Proc, Proc], token: Any,
                                                 bad: str) -> None:
    clients = watchers(fronts, token)
    event = uid("never")
    r = publish(fronts[0], bad, event)
    assert r.status_code == 400 and "Idempotency-Key must be 1-128" in r.json()["message"]
    r = api(fronts[0], "POST", "/api/publish", headers={"Idempotency-Key": uid("t")},
            json={"target": {"all": True}, "event": event, "durable": False})
    assert r.status_code == 400 and "needs durable" in r.json()["message"]
    ok = {"target": {"all": True}, "event": event}
    r = api(fronts[1], "POST", "/api/publish/batch", json={"messages": [
        ok, {**ok, "idempotency_key": bad}]})
    assert r.status_code == 400 and "messages[1].idempotency_key" in r.json()["message"]
    r = api(fronts[1], "POST", "/api/publish/batch", json={"messages": [
        ok, {**ok, "durable": False, "idempotency_key": uid("t")}]})
    assert r.status_code == 400 and "needs durable" in r.json()["message"]
    settle(fronts, clients)
    for c in clients:
        assert c.events(event) == []  # nothing of a refused request was published


def test_python_api_keys(fronts: tuple[Proc, Proc], token: Any) -> None:
    assert ENV["HERALD_API_KEYS"]  # the in-process Herald reads this run's settings
    clients = watchers(fronts, token)
    herald = Herald()
    try:
        key, event = uid("py"), uid("pyevent")
        first = herald.publish(Target.all(), event, 1, idempotency_key=key)
        assert herald.publish(Target.all(), event, 2, idempotency_key=key) == first
        many = herald.publish_many([(Target.all(), event, 3), (Target.all(), event, 4)],
                                   idempotency_keys=[key, None])
        assert many[0] == first and many[1] != first
        with pytest.raises(BadRequest, match="durable"):
            herald.publish(Target.all(), event, 5, durable=False, idempotency_key=key)
        with pytest.raises(BadRequest, match="idempotency_key must be"):
            herald.publish(Target.all(), event, 6, idempotency_key="bad key")
    finally:
        herald.close()
    settle(fronts, clients)
    for c in clients:
        assert [e["data"] for e in c.events(event)] == [1, 4]
