"""``POST /api/publish`` answered before Flask (``service/http/lean.py``) and by the Flask
view: the same answers for every case, and the lean path is the one serving the plain
publish (Flask's ``before_request`` never runs for it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.cluster.frontend import Frontend
from service.http.lean import LeanPublish
from tests.fakes import events, socket_on, wait
from tests.integration.http.conftest import memory_app

KEY = {"Authorization": "Bearer test-key-1"}


def _bypass_lean(app: Flask) -> None:
    """Take LeanPublish out of the app's middleware chain (every request reaches Flask)."""
    parent: Any = app
    while not isinstance(parent.wsgi_app, LeanPublish):
        parent = parent.wsgi_app
    parent.wsgi_app = parent.wsgi_app.wsgi_app


@pytest.fixture(params=["lean", "flask"])
def app(request: pytest.FixtureRequest, database: str) -> Iterator[Flask]:
    with memory_app("lean", heartbeat_s=0.5) as app:
        if request.param == "flask":
            _bypass_lean(app)
        app.config["FLASK_REQUESTS"], app.config["PATH"] = 0, request.param

        @app.before_request
        def count() -> None:
            app.config["FLASK_REQUESTS"] += 1

        yield app


def test_a_plain_publish_is_delivered_with_its_id(app: Flask, node: Frontend) -> None:
    client: FlaskClient = app.test_client()
    alice, other = socket_on(node, "alice"), socket_on(node, "alice")
    r = client.post("/api/publish", headers=KEY, json={
        "target": {"user": "alice"}, "event": "hi", "data": {"n": 1},
        "exclude_connection": other.id})
    assert r.status_code == 202 and r.mimetype == "application/json"
    msg_id = r.get_json()["id"]
    assert isinstance(msg_id, int)
    r = client.post("/api/publish", headers=KEY, json={"target": {"all": True}, "event": "t",
                                                       "durable": False})
    assert (r.status_code, r.get_json()) == (202, {"id": None})
    r = client.post("/api/publish", headers=KEY, json={"target": {"user": "alice"},
                                                       "event": "bare"})  # data: null
    assert r.status_code == 202
    wait(lambda: events(alice, "bare"))
    [hi] = events(alice, "hi")
    assert (hi["id"], hi["data"]) == (msg_id, {"n": 1})
    assert events(alice, "t") and events(alice, "bare")[0]["data"] is None
    assert not events(other, "hi")  # excluded
    assert app.config["FLASK_REQUESTS"] == (0 if app.config["PATH"] == "lean" else 3)


@pytest.mark.parametrize(("headers", "body", "status", "code", "why"), [
    ({}, {"target": {"all": True}, "event": "e"}, 401, "unauthorized", "missing"),
    ({"Authorization": "Bearer nope"}, {"target": {"all": True}, "event": "e"}, 401,
     "unauthorized", "invalid"),
    (KEY, {"target": {"group": "a/b"}, "event": "e"}, 400, "bad_request", "target.group"),
    (KEY, {"target": {"all": True, "user": "u"}, "event": "e"}, 400, "bad_request",
     "target must be one of"),
    (KEY, {"target": {"all": True}, "event": ""}, 400, "bad_request", "event"),
    (KEY, {"target": {"all": True}, "event": "e", "extra": 1}, 400, "bad_request", "extra"),
    (KEY, {"target": {"all": True}, "event": "e", "receipt": True, "durable": False}, 400,
     "bad_request", "receipt needs durable"),
    (KEY, {"target": {"user": "u"}, "event": "e", "data": "a\u0000b"}, 400, "bad_request",
     "cannot be stored"),
    ({**KEY, "Idempotency-Key": "k1"}, {"target": {"all": True}, "event": "e",
                                        "durable": False}, 400, "bad_request",
     "Idempotency-Key needs durable"),
])
def test_refusals_are_the_same_on_both_paths(app: Flask, headers: dict[str, str],
                                             body: dict[str, Any], status: int, code: str,
                                             why: str) -> None:
    r = app.test_client().post("/api/publish", headers=headers, json=body)
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.get_json()["error"] == code and why in r.get_json()["message"]


def test_other_bodies_and_options_reach_the_view(app: Flask) -> None:
    client = app.test_client()
    r = client.post("/api/publish", headers=KEY, data="x", content_type="text/plain")
    assert r.status_code == 400 and "JSON" in r.get_json()["message"]
    r = client.post("/api/publish", headers=KEY, data="{", content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"] == "bad_request"
    big = {"target": {"all": True}, "event": "e", "data": "x" * (app.config[
        "MAX_CONTENT_LENGTH"] + 1)}
    assert client.post("/api/publish", headers=KEY, json=big).status_code == 413
    r = client.post("/api/publish", headers={**KEY, "Idempotency-Key": "k2"},
                    json={"target": {"all": True}, "event": "e"})
    again = client.post("/api/publish", headers={**KEY, "Idempotency-Key": "k2"},
                        json={"target": {"all": True}, "event": "e"})
    assert r.status_code == again.status_code == 202
    assert r.get_json()["id"] == again.get_json()["id"] is not None
    r = client.post("/api/publish", headers=KEY, json={"target": {"all": True}, "event": "e",
                                                       "receipt": True})
    assert r.status_code == 202 and isinstance(r.get_json()["id"], int)
    assert client.get("/api/publish", headers=KEY).status_code == 405
