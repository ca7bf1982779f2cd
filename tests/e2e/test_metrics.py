"""Issue 6: /metrics after a scripted session has every metric with the expected counts;
logs are JSON lines when HERALD_LOG_JSON=1."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from service.core.envelope import Target
from service.pg import Herald
from tests.rawws import RawClient
from tests.support import Client, ResumingClient, api, wait_until

RABBIT_API = "http://127.0.0.1:15672/api"
AUTH = ("guest", "guest")


def scrape(fe: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(fe.url + "/metrics", timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "frontend"))
            out[(s.name, labels)] = s.value
    return out


def value(m: dict[Any, float], name: str, **labels: str) -> float:
    return m[(name, tuple(sorted(labels.items())))]


def test_metrics_count_a_scripted_session(cluster: Any, token: Any) -> None:
    fe = cluster.frontend("m", env={"HERALD_OUTBOX_LIMIT": "64", "HERALD_LOG_JSON": "1"})
    g1, g2 = f"g1-{uuid.uuid4().hex[:4]}", f"g2-{uuid.uuid4().hex[:4]}"
    c1, c2 = Client(fe.ws_url), Client(fe.ws_url)
    c1.hello(token("alice"))
    c2.hello(token("bob"))
    c1.request("join", group=g1)
    c2.request("join", group=g1)
    c2.request("join", group=g2)
    c1.request("publish", group=g1, event="hi", data=1)          # group publish (frame)
    api(fe, "POST", "/api/publish", json={"target": {"all": True}, "event": "news"})
    api(fe, "POST", "/api/publish", json={"target": {"user": "bob"}, "event": "dm"})
    for c in (c1, c2):
        c.wait_for(lambda f: f.get("event") == "news")
    c2.wait_for(lambda f: f.get("event") == "dm")
    c2.wait_for(lambda f: f.get("event") == "hi")
    sent_frames = 2 + 3 + 1  # hellos, joins, publish
    received = len(c1.frames) + len(c2.frames)
    events = len(c1.events()) + len(c2.events())

    m = wait_until(lambda: (lambda m: m if value(m, "herald_frames_out_total") == received
                            else None)(scrape(fe)))
    assert value(m, "herald_connections") == 2
    assert value(m, "herald_memberships") == 3
    assert value(m, "herald_frames_in_total") == sent_frames
    assert value(m, "herald_publishes_total", target="group") == 1
    assert value(m, "herald_publishes_total", target="all") == 1
    assert value(m, "herald_publishes_total", target="user") == 1
    assert value(m, "herald_publishes_total", target="connection") == 0
    assert value(m, "herald_delivery_latency_seconds_count") == events
    assert value(m, "herald_delivery_latency_seconds_bucket", le="+Inf") == events
    assert value(m, "herald_outbox_overflows_total") == 0
    assert value(m, "herald_bus_reconnects_total") == 0

    # a reader that stalls overflows its outbox: closed with 1013, counted
    stalled = RawClient("127.0.0.1", fe.port, rcvbuf=4096)
    stalled.send_json({"op": "hello", "token": token("slow")})
    stalled.read_json()
    herald = Herald()
    for i in range(3000):
        herald.publish(Target.user("slow"), "flood", {"i": i, "pad": "x" * 1000}, durable=False)
    assert stalled.read_until_close() == 1013
    wait_until(lambda: value(scrape(fe), "herald_outbox_overflows_total") == 1)

    # a resume with last_id replays what was missed, counted
    r = ResumingClient(fe.ws_url, token("carol"))
    first = herald.publish(Target.user("carol"), "kept", 1)
    r.current.wait_for(lambda f: f.get("id") == first)
    r.current.close()
    missed = [herald.publish(Target.user("carol"), "missed", n) for n in (2, 3)]
    welcome = r.connect(fe.ws_url)
    # the late-commit grace re-sends a few rows the client has (it drops them by id)
    assert welcome["replayed"] >= 2
    wait_until(lambda: set(missed) <= set(r.durable_ids()))
    assert value(scrape(fe), "herald_replayed_messages_total") == welcome["replayed"]

    # the broker drops this frontend's consumer connection: it reconnects, counted
    fid = api(fe, "GET", "/healthz").json()["frontend"]
    conn_name = _consumer_connection(fid)
    requests.delete(f"{RABBIT_API}/connections/{urllib.parse.quote(conn_name, safe='')}",
                    auth=AUTH, timeout=5)
    wait_until(lambda: value(scrape(fe), "herald_bus_reconnects_total") == 1)
    herald.close()

    lines = [ln for ln in fe.log_path.read_text().splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]
    assert any(r["logger"].startswith("service.bus") for r in records)
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)


def _consumer_connection(frontend_id: str) -> str:
    """The broker-side name of the connection that owns this frontend's queue."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from service.store.db import get_engine
    from service.store.models import FrontendRecord
    from tests.conftest import ENV

    with Session(get_engine(ENV["HERALD_DATABASE_URL"])) as db:
        queue = db.execute(select(FrontendRecord.queue)
                           .where(FrontendRecord.id == frontend_id)).scalar_one()
    url = f"{RABBIT_API}/queues/%2F/{urllib.parse.quote(queue, safe='')}"
    # the management plugin samples its statistics every few seconds: poll for them
    consumers = wait_until(lambda: requests.get(url, auth=AUTH, timeout=5).json().get(
        "consumer_details"), timeout=30, interval=0.5)
    return str(consumers[0]["channel_details"]["connection_name"])


def test_the_metrics_port_is_a_listener_of_its_own(cluster: Any) -> None:
    """HERALD_METRICS_PORT: gunicorn listens on it too; it serves the metrics and the
    probes, the public port no longer serves the metrics."""
    from tests.support import free_port

    port = free_port()
    fe = cluster.frontend("mport", env={"HERALD_METRICS_PORT": str(port)})
    internal = f"http://127.0.0.1:{port}"
    r = requests.get(internal + "/metrics", timeout=5)
    assert r.status_code == 200 and "herald_connections" in r.text
    assert requests.get(internal + "/readyz", timeout=5).json()["ready"] is True
    assert requests.get(internal + "/healthz", timeout=5).status_code == 200
    assert requests.get(internal + "/api/frontends", timeout=5).status_code == 404
    for path in ("/metrics", "//metrics", "/%6Detrics"):
        r = requests.get(fe.url + path, timeout=5)
        assert r.status_code == 404 and "herald_" not in r.text, path
    assert requests.get(fe.url + "/readyz", timeout=5).status_code == 200
