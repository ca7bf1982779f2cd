"""Issue 2, end to end: two frontends and a worker as real processes, real Postgres and RabbitMQ."""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.store.models import ConnectionRecord, FrontendRecord, Membership
from tests.conftest import ENV
from tests.support import Client, api, wait_until

RABBIT_API = "http://127.0.0.1:15672/api"
AUTH = ("guest", "guest")


@pytest.fixture
def two_frontends(cluster: Any) -> tuple[Any, Any]:
    a, b = cluster.frontends("a", "b")
    return a, b


def _task_events(client: Client, task_id: str) -> list[dict[str, Any]]:
    return [f for f in client.events() if f["data"].get("task_id") == task_id]


def test_task_progress_reaches_the_same_user_on_another_frontend(cluster: Any, two_frontends: Any,
                                                                 token: Any) -> None:
    a, b = two_frontends
    cluster.worker()
    x1, x2 = Client(a.ws_url), Client(b.ws_url)
    tok = token("user-u")
    x1.hello(tok)
    x2.hello(tok)

    ack = x1.request("task", name="demo.sleep", args={"seconds": 1.0, "steps": 4})
    assert ack["op"] == "ack"
    task_id = ack["task_id"]

    for client in (x1, x2):
        client.wait_for(lambda f: f.get("event") == "task.succeeded"
                        and f["data"]["task_id"] == task_id)
    seen = []
    for client in (x1, x2):
        events = _task_events(client, task_id)
        names = [e["event"] for e in events]
        assert names.count("task.progress") == 4, names
        assert names.count("task.succeeded") == 1, names
        assert names.count("task.started") == 1, names
        progress = [e["data"]["progress"] for e in events if e["event"] == "task.progress"]
        assert progress == [0.25, 0.5, 0.75, 1.0]
        succeeded = next(e for e in events if e["event"] == "task.succeeded")
        assert isinstance(succeeded["id"], int)  # durable: it carries a log id
        assert succeeded["data"]["result"] == {"slept": 1.0, "steps": 4}
        seen.append([(e["event"], e.get("id"), e["data"].get("progress")) for e in events
                     if e["event"] != "task.queued"])
    assert seen[0] == seen[1]  # the same events on both frontends

    for proc in (a, b):
        status = api(proc, "GET", f"/api/tasks/{task_id}").json()
        assert status["state"] == "succeeded" and status["progress"] == 1.0
        assert status["result"] == {"slept": 1.0, "steps": 4} and status["name"] == "demo.sleep"


def test_failed_task_reports_failure(cluster: Any, two_frontends: Any, token: Any) -> None:
    a, b = two_frontends
    cluster.worker()
    x = Client(b.ws_url)
    x.hello(token("user-f"))
    r = api(a, "POST", "/api/tasks", json={"name": "demo.fail", "args": {"message": "boom"},
                                           "notify": {"user": "user-f"}})
    assert r.status_code == 202
    task_id = r.json()["task_id"]
    failed = x.wait_for(lambda f: f.get("event") == "task.failed")[0]
    assert failed["data"]["task_id"] == task_id and "boom" in failed["data"]["error"]
    assert api(a, "GET", f"/api/tasks/{task_id}").json()["state"] == "failed"


def test_publish_to_all_reaches_every_client_once(two_frontends: Any, token: Any) -> None:
    a, b = two_frontends
    clients = [Client(a.ws_url) for _ in range(3)] + [Client(b.ws_url) for _ in range(3)]
    for i, c in enumerate(clients):
        c.hello(token(f"user-{i}"))

    r = api(a, "POST", "/api/publish", json={"target": {"all": True}, "event": "news",
                                             "data": {"n": 1}})
    assert r.status_code == 202 and isinstance(r.json()["id"], int)

    publisher = clients[0]
    ack = publisher.request("publish", all=True, event="chat", data={"from": "c0"})
    assert ack["op"] == "ack"

    for c in clients:
        c.wait_for(lambda f: f.get("event") == "news")
    for c in clients[1:]:
        c.wait_for(lambda f: f.get("event") == "chat")
    # a later marker from B's side proves nothing else is still in flight
    api(b, "POST", "/api/publish", json={"target": {"all": True}, "event": "marker",
                                         "durable": False})
    for c in clients:
        c.wait_for(lambda f: f.get("event") == "marker")
        assert len(c.events("news")) == 1
        assert c.events("news")[0]["data"] == {"n": 1}
    for c in clients[1:]:
        assert len(c.events("chat")) == 1 and c.events("chat")[0]["data"] == {"from": "c0"}
    assert publisher.events("chat") == []  # the publisher does not receive its own message


def _rows(engine: Any, model: Any, **where: Any) -> list[Any]:
    with Session(engine) as db:
        return list(db.execute(select(model).filter_by(**where)).scalars())


def test_registry_rows_follow_connections(two_frontends: Any, token: Any, engine: Any) -> None:
    a, _ = two_frontends
    c = Client(a.ws_url)
    welcome = c.hello(token("user-r"))
    cid = welcome["connection_id"]
    assert [r.user_id for r in _rows(engine, ConnectionRecord, id=cid)] == ["user-r"]
    assert _rows(engine, ConnectionRecord, id=cid)[0].frontend_id == welcome["frontend"]

    assert c.request("join", group="room:1")["op"] == "ack"
    assert c.request("join", group="room:1", scope="other")["op"] == "ack"
    rows = _rows(engine, Membership, connection_id=cid)
    assert sorted((m.scope, m.group) for m in rows) == [("default", "room:1"), ("other", "room:1")]

    assert c.request("leave", group="room:1", scope="other")["op"] == "ack"
    assert [(m.scope, m.group) for m in _rows(engine, Membership, connection_id=cid)] == [
        ("default", "room:1")]

    c.close()
    wait_until(lambda: not _rows(engine, ConnectionRecord, id=cid))
    assert _rows(engine, Membership, connection_id=cid) == []


def _bound_queues() -> set[str]:
    exchange = urllib.parse.quote(ENV["HERALD_EXCHANGE"], safe="")
    r = requests.get(f"{RABBIT_API}/exchanges/%2F/{exchange}/bindings/source", auth=AUTH, timeout=5)
    r.raise_for_status()
    return {b["destination"] for b in r.json() if b["destination_type"] == "queue"}


def _queue_exists(name: str) -> bool:
    r = requests.get(f"{RABBIT_API}/queues/%2F/{urllib.parse.quote(name, safe='')}",
                     auth=AUTH, timeout=5)
    return r.status_code == 200


def test_each_frontend_owns_a_bound_exclusive_queue(cluster: Any, engine: Any) -> None:
    a = cluster.frontend("q")
    fid = requests.get(a.url + "/healthz", timeout=5).json()["frontend"]
    queue = wait_until(lambda: (_rows(engine, FrontendRecord, id=fid) or [None])[0])
    name = queue.queue
    assert name and name.startswith("amq.gen-")
    assert name in _bound_queues()
    info = requests.get(f"{RABBIT_API}/queues/%2F/{urllib.parse.quote(name, safe='')}",
                        auth=AUTH, timeout=5).json()
    assert info["exclusive"] is True and info["auto_delete"] is True

    a.stop()
    wait_until(lambda: not _queue_exists(name))
    assert name not in _bound_queues()
    assert _rows(engine, FrontendRecord, id=fid) == []  # deregistered on a clean stop


@pytest.mark.parametrize("raw, code", [
    ("not json", "bad_request"),
    ("[1, 2]", "bad_request"),
    ('{"op": "dance"}', "unknown_op"),
    ('{"op": "join"}', "bad_request"),
    ('{"op": "join", "group": 5}', "bad_request"),
    ('{"op": "publish", "event": "e"}', "bad_request"),
    ('{"ref": 1}', "bad_request"),
])
def test_bad_frame_gets_error_and_connection_stays_usable(two_frontends: Any, token: Any,
                                                          raw: str, code: str) -> None:
    a, _ = two_frontends
    c = Client(a.ws_url)
    c.hello(token("user-bad"))
    c.send(raw)
    err = c.wait_for(lambda f: f.get("op") == "error")[0]
    assert err["code"] == code and err["message"]
    assert c.request("ping")["op"] == "pong"
    assert c.request("join", group="still-works")["op"] == "ack"
