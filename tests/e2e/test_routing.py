"""Targeted routing on the real RabbitMQ and Postgres, with frontends as processes: a
message reaches only the frontends that hold a recipient (seen through the broker's
bindings and each frontend's count of received events), exactly once and in order; a
join that was acked gets every later message; bindings come back after a broker
reconnect; the last member leaving stops delivery there; a resume elsewhere keeps its
groups."""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Any

import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.envelope import Target
from service.pg import Herald
from service.store.db import get_engine
from service.store.models import FrontendRecord
from tests.conftest import ENV
from tests.e2e.test_metrics import scrape, value
from tests.support import Client, ResumingClient, api, wait_until

RABBIT_API = "http://127.0.0.1:15672/api"
AUTH = ("guest", "guest")
#: Join-then-publish rounds of the race test (bounded: each is one join and one publish).
RACE_ROUNDS = 40


def frontend_id(fe: Any) -> str:
    return str(api(fe, "GET", "/healthz").json()["frontend"])


def queue_of(fe: Any) -> str:
    """The frontend's current queue, as its registry row says (its heartbeat updates it)."""
    with Session(get_engine(ENV["HERALD_DATABASE_URL"])) as db:
        return str(db.execute(select(FrontendRecord.queue)
                              .where(FrontendRecord.id == frontend_id(fe))).scalar_one())


def keys_of(queue: str) -> set[str]:
    """The routing keys the broker has this queue bound to on the routed exchange."""
    url = f"{RABBIT_API}/queues/%2F/{urllib.parse.quote(queue, safe='')}/bindings"
    return {b["routing_key"] for b in requests.get(url, auth=AUTH, timeout=5).json()
            if b["source"] == ENV["HERALD_EXCHANGE"] + ".routed"}


def events_received(fe: Any) -> float:
    return value(scrape(fe), "herald_bus_events_total")


def test_only_the_frontends_with_a_recipient_receive(cluster: Any, token: Any) -> None:
    a, b, c = cluster.frontends("ra", "rb", "rc")
    group = f"g-{uuid.uuid4().hex[:6]}"
    member, bob = Client(a.ws_url), Client(b.ws_url)
    try:
        member.hello(token("mia"))
        assert member.request("join", group=group)["op"] == "ack"
        bob.hello(token("bob"))
        # the broker's view: each queue is bound to exactly its recipients' keys
        qa, qb, qc = queue_of(a), queue_of(b), queue_of(c)
        assert f"g.default/{group}" in keys_of(qa) and "u.bob" not in keys_of(qa)
        assert "u.bob" in keys_of(qb) and f"g.default/{group}" not in keys_of(qb)
        assert keys_of(qc) == set()
        for i in range(10):
            api(c, "POST", "/api/publish", json={"target": {"group": group}, "event": "g",
                                                 "data": i, "durable": False})
            api(c, "POST", "/api/publish", json={"target": {"user": "bob"}, "event": "u",
                                                 "data": i})
        member.wait_for(lambda f: f.get("event") == "g" and f.get("data") == 9)
        bob.wait_for(lambda f: f.get("event") == "u" and f.get("data") == 9)
        assert [e["data"] for e in member.events("g")] == list(range(10))  # once, in order
        assert [e["data"] for e in bob.events("u")] == list(range(10))
        assert not member.events("u") and not bob.events("g")
        # each frontend received exactly the events it had a recipient for
        wait_until(lambda: events_received(a) == 10 and events_received(b) == 10)
        assert events_received(c) == 0
    finally:
        member.close()
        bob.close()


def test_a_member_whose_join_was_acked_gets_every_later_message(cluster: Any,
                                                                 token: Any) -> None:
    a = cluster.frontend("race")
    client = Client(a.ws_url)
    herald = Herald()  # publishes straight to the broker from here, sub-millisecond
    try:
        client.hello(token("racer"))
        for i in range(RACE_ROUNDS):
            group = f"race-{i}-{uuid.uuid4().hex[:4]}"
            assert client.request("join", group=group)["op"] == "ack"
            herald.publish(Target.group(group), "first", i, durable=False)
        for i in range(RACE_ROUNDS):
            client.wait_for(lambda f, i=i: f.get("event") == "first" and f.get("data") == i)
        assert sorted(e["data"] for e in client.events("first")) == list(range(RACE_ROUNDS))
    finally:
        client.close()
        herald.close()


def test_the_last_member_leaving_stops_delivery_there(cluster: Any, token: Any) -> None:
    a, b = cluster.frontends("la", "lb")
    group = f"g-{uuid.uuid4().hex[:6]}"
    one, two = Client(a.ws_url), Client(a.ws_url)
    try:
        one.hello(token("one"))
        two.hello(token("two"))
        one.request("join", group=group)
        two.request("join", group=group)
        one.request("leave", group=group)
        api(b, "POST", "/api/publish", json={"target": {"group": group}, "event": "x"})
        two.wait_for(lambda f: f.get("event") == "x")
        two.request("leave", group=group)
        queue = queue_of(a)
        wait_until(lambda: f"g.default/{group}" not in keys_of(queue))
        before = events_received(a)
        for _ in range(5):
            api(b, "POST", "/api/publish", json={"target": {"group": group}, "event": "y"})
        api(b, "POST", "/api/publish", json={"target": {"user": "two"}, "event": "marker"})
        two.wait_for(lambda f: f.get("event") == "marker")
        wait_until(lambda: events_received(a) == before + 1)  # the marker alone
        assert not two.events("y")
    finally:
        one.close()
        two.close()


def test_bindings_come_back_after_a_broker_reconnect_and_a_resume(cluster: Any,
                                                                   token: Any) -> None:
    a, b = cluster.frontends("ca", "cb")
    group = f"g-{uuid.uuid4().hex[:6]}"
    r = ResumingClient(a.ws_url, token("rita"))
    try:
        assert r.current.request("join", group=group)["op"] == "ack"
        old_queue = queue_of(a)
        url = f"{RABBIT_API}/queues/%2F/{urllib.parse.quote(old_queue, safe='')}"
        consumers = wait_until(lambda: requests.get(url, auth=AUTH, timeout=5).json().get(
            "consumer_details"), timeout=30, interval=0.5)
        name = consumers[0]["channel_details"]["connection_name"]
        requests.delete(f"{RABBIT_API}/connections/{urllib.parse.quote(name, safe='')}",
                        auth=AUTH, timeout=5)
        wait_until(lambda: value(scrape(a), "herald_bus_reconnects_total") == 1)
        new_queue = wait_until(lambda: (q := queue_of(a)) != old_queue and q)
        assert {f"g.default/{group}", "u.rita"} <= keys_of(new_queue)
        first = api(b, "POST", "/api/publish",
                    json={"target": {"group": group}, "event": "back"}).json()["id"]
        r.current.wait_for(lambda f: f.get("id") == first)
        # A goes away; the session resumes on B, which binds its group before the welcome
        a.stop()
        welcome = r.connect(b.ws_url)
        assert welcome["resumed"] and {"scope": "default", "group": group} in welcome["groups"]
        assert f"g.default/{group}" in keys_of(queue_of(b))
        second = api(b, "POST", "/api/publish",
                     json={"target": {"group": group}, "event": "moved"}).json()["id"]
        r.current.wait_for(lambda f: f.get("id") == second)
        seen = r.unique_in_order()
        assert seen.index(first) < seen.index(second)
    finally:
        r.current.close()
