"""The HTTP API of a frontend on the in-memory bus, through Flask's test client (the
tutorial's ``app`` and ``client`` fixtures); the registry and log are the real Postgres.
Every route, its success body and its refusals, with sockets placed on the frontend."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.cluster.frontend import Frontend
from tests.fakes import events, socket_on, wait
from tests.integration.http.conftest import memory_app

KEY = {"Authorization": "Bearer test-key-1"}


@pytest.fixture
def app(database: str) -> Iterator[Flask]:
    with memory_app("api", heartbeat_s=0.5) as app:
        yield app


def error(r: Any) -> str:
    return str(r.get_json()["error"])


def test_publish_and_batch_deliver_in_order_with_ids(client: FlaskClient, node: Frontend) -> None:
    conn = socket_on(node, "alice")
    r = client.post("/api/publish", headers=KEY, json={"target": {"user": "alice"},
                                                        "event": "one", "data": [1]})
    assert r.status_code == 202 and isinstance(r.get_json()["id"], int)
    batch = client.post("/api/publish/batch", headers=KEY, json={"messages": [
        {"target": {"all": True}, "event": "two"},
        {"target": {"user": "alice"}, "event": "three", "data": "a\u0000b"},  # Postgres: no
        {"target": {"connection": conn.id}, "event": "four", "durable": False}]})
    body = batch.get_json()
    assert batch.status_code == 202, body
    assert isinstance(body["ids"][0], int) and body["ids"][1:] == [None, None]
    assert [e["index"] for e in body["errors"]] == [1]
    assert body["errors"][0]["error"] == "bad_request"
    wait(lambda: events(conn, "four"))
    got = [e["event"] for name in ("one", "two", "four") for e in events(conn, name)]
    assert got == ["one", "two", "four"] and not events(conn, "three")


@pytest.mark.parametrize(("body", "why"), [
    ({"target": {"group": "a/b"}, "event": "e"}, "target.group"),
    ({"target": {"all": True, "user": "u"}, "event": "e"}, "target must be one of"),
    ({"target": {"all": True}, "event": ""}, "event"),
    ({"target": {"all": True}, "event": "e", "extra": 1}, "extra"),
    ({"target": {"all": True}}, "event"),
])
def test_a_bad_publish_is_a_400_that_says_why(client: FlaskClient, body: dict[str, Any],
                                             why: str) -> None:
    r = client.post("/api/publish", headers=KEY, json=body)
    assert r.status_code == 400 and error(r) == "bad_request" and why in r.get_json()["message"]


def test_refusals_carry_their_code(client: FlaskClient) -> None:
    assert error(client.get("/api/frontends")) == "unauthorized"
    r = client.post("/api/publish", headers=KEY, data="x", content_type="text/plain")
    assert r.status_code == 400 and "JSON" in r.get_json()["message"]
    r = client.patch("/api/publish", headers=KEY)
    assert r.status_code == 405 and "POST" in r.headers["Allow"]
    assert client.get("/api/tasks/nope", headers=KEY).status_code == 404
    r = client.post("/api/publish/batch", headers=KEY, json={"messages": []})
    assert r.status_code == 400 and "messages must hold" in r.get_json()["message"]


def test_server_side_join_members_and_leave(client: FlaskClient, node: Frontend) -> None:
    conn = socket_on(node, "bob")
    path = f"/api/groups/default/room/members/{conn.id}"
    assert client.put(path, headers=KEY).status_code == 204
    assert ("default", "room") in conn.groups
    cluster = client.get("/api/groups/default/room/members", headers=KEY).get_json()
    local = client.get("/api/groups/default/room/members?local=1", headers=KEY).get_json()
    assert [m["connection_id"] for m in cluster] == [conn.id] == [m["connection_id"] for m in local]
    assert cluster[0]["frontend"] == node.id and cluster[0]["user_id"] == "bob"
    groups = client.get("/api/groups?scope=default", headers=KEY).get_json()
    assert {"scope": "default", "group": "room", "members": 1} in groups
    user = client.get("/api/users/bob/connections", headers=KEY).get_json()
    assert user[0]["connection_id"] == conn.id
    assert user[0]["groups"] == [{"scope": "default", "group": "room"}]
    assert client.delete(path, headers=KEY).status_code == 204
    assert client.delete(path, headers=KEY).status_code == 204  # idempotent
    assert ("default", "room") not in conn.groups
    assert client.get("/api/groups/default/room/members", headers=KEY).get_json() == []
    assert error(client.put("/api/groups/default/a%40b/members/x", headers=KEY)) == "bad_request"


def test_probes_and_the_frontend_list(client: FlaskClient, node: Frontend) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok", "frontend": node.id}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["ready"] is True
    listed = client.get("/api/frontends", headers=KEY).get_json()
    assert node.id in [f["id"] for f in listed]
    assert client.get("/openapi.json").get_json()["openapi"] == "3.1.0"
    node.draining = True
    assert client.get("/readyz").get_json() == {"ready": False, "reason": "draining",
                                                "frontend": node.id}
