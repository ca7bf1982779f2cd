"""The admin console's endpoints on a frontend with the in-memory bus (Flask's test client;
the registry and log are the real Postgres): the page and its headers, HERALD_ADMIN=off,
POST /api/admin/token, GET /api/messages and its paging, the frontends' stats."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, text

from service.app import create_app
from service.cluster.frontend import Frontend
from service.core.auth import verify_token
from service.core.metrics import STATS_COUNTERS
from service.http.admin import ADMIN_TOKEN_TTL_S, ADMIN_USER
from tests.conftest import ENV
from tests.fakes import events, socket_on, wait
from tests.integration.http.conftest import memory_app

KEY = {"Authorization": "Bearer test-key-2"}


@pytest.fixture
def app(database: str) -> Iterator[Flask]:
    with memory_app("adm", heartbeat_s=0.2) as app:
        yield app


def error(r: Any) -> tuple[int, str, str]:
    body = r.get_json()
    return r.status_code, body["error"], body["message"]


def test_the_page_is_static_and_runs_only_its_own_scripts(client: FlaskClient) -> None:
    page = client.get("/admin")
    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    html = page.get_data(as_text=True)
    # every script is a file of its own, and no element carries a style of its own
    assert re.findall(r"<script[^>]*>", html) == [
        '<script type="module" src="/static/admin.js">']
    assert " style=" not in html and "<style" not in html
    js = client.get("/static/admin.js").get_data(as_text=True)
    assert 'from "./herald.js"' in js and ".innerHTML" not in js
    assert client.get("/static/admin.css").status_code == 200


def test_herald_admin_off_is_a_404_that_says_how_to_turn_it_on(database: str) -> None:
    off = create_app({"admin": False}, start=False).test_client()
    for r in (off.get("/admin"), off.post("/api/admin/token", headers=KEY)):
        status, code, message = error(r)
        assert (status, code) == (404, "not_found") and "HERALD_ADMIN=on" in message


def test_the_console_token_may_monitor_every_group_and_nothing_else(
        client: FlaskClient) -> None:
    assert error(client.post("/api/admin/token"))[:2] == (401, "unauthorized")
    assert error(client.post("/api/admin/token", headers={
        "Authorization": "Bearer nope"}))[:2] == (401, "unauthorized")
    r = client.post("/api/admin/token", headers=KEY)
    assert r.status_code == 200
    body = r.get_json()
    assert (body["user"], body["expires_in"]) == (ADMIN_USER, ADMIN_TOKEN_TTL_S)
    grants = verify_token(ENV["HERALD_SECRET_KEY"], body["token"])
    assert grants.user_id == "admin:console"
    assert grants.may_join("default", "lobby") and grants.may_join("any-scope", "x:y")
    assert grants.publish == () and grants.tasks == ()
    claims = jwt.decode(body["token"], ENV["HERALD_SECRET_KEY"], algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == ADMIN_TOKEN_TTL_S


@pytest.mark.parametrize(("query", "why"), [
    ("limit=0", "limit must be between 1 and 100"), ("limit=101", "limit must be between"),
    ("limit=x", "limit must be an integer"), ("before=-1", "before must be between"),
    ("before=99999999999999999999", "before must be between")])
def test_a_bad_log_page_is_a_400_that_says_why(client: FlaskClient, query: str,
                                               why: str) -> None:
    status, code, message = error(client.get(f"/api/messages?{query}", headers=KEY))
    assert (status, code) == (400, "bad_request") and why in message


def test_the_log_pages_newest_first_by_id_within_retention(
        client: FlaskClient, engine: Engine) -> None:
    assert error(client.get("/api/messages"))[:2] == (401, "unauthorized")
    event = f"log-{uuid.uuid4().hex[:6]}"
    ids = []
    for i in range(5):
        r = client.post("/api/publish", headers=KEY, json={
            "target": {"group": "room", "scope": "s"}, "event": event, "data": {"n": i}})
        ids.append(r.get_json()["id"])
    client.post("/api/publish", headers=KEY, json={"target": {"all": True}, "event": event,
                                                   "durable": False})  # not in the log
    newest = client.get("/api/messages?limit=2", headers=KEY).get_json()
    assert [m["id"] for m in newest["messages"]] == [ids[4], ids[3]]
    assert newest["next"] == ids[3]
    assert newest["messages"][0] == {"id": ids[4], "ts": newest["messages"][0]["ts"],
                                     "target": {"group": "room", "scope": "s"},
                                     "event": event, "data": {"n": 4},
                                     "origin": newest["messages"][0]["origin"]}
    # paging on from `next` walks back through the rest, no repeat, no skip
    seen, before = [], ids[4] + 1
    while len(seen) < 5:
        page = client.get(f"/api/messages?limit=2&before={before}", headers=KEY).get_json()
        assert page["messages"] and all(m["id"] < before for m in page["messages"])
        seen += [m["id"] for m in page["messages"] if m["event"] == event]
        before = page["next"]
    assert seen == ids[::-1]
    assert client.get("/api/messages", headers=KEY).get_json()["messages"][0]["id"] == ids[4]

    # a row the log still holds past HERALD_HISTORY_TTL (its day is not dropped yet) is
    # not shown, and the page below the oldest message is the last one
    with engine.begin() as db:
        old = db.execute(text(
            "INSERT INTO messages (target_kind, target_key, event, data, origin, created_at)"
            " VALUES ('all', '', :e, 'null', 'test', now() - interval '2 days') RETURNING id"),
            {"e": event}).scalar_one()
    try:
        page = client.get(f"/api/messages?before={old + 1}&limit=100", headers=KEY).get_json()
        assert old not in [m["id"] for m in page["messages"]]
        bottom = client.get("/api/messages?before=1", headers=KEY).get_json()
        assert bottom == {"messages": [], "next": None}
    finally:
        with engine.begin() as db:
            db.execute(text("DELETE FROM messages WHERE id = :id"), {"id": old})


def test_frontends_carry_the_counters_and_rates_of_their_last_heartbeat(
        client: FlaskClient, node: Frontend) -> None:
    conn = socket_on(node, f"u-{uuid.uuid4().hex[:6]}")
    for i in range(3):
        assert client.post("/api/publish", headers=KEY, json={
            "target": {"user": conn.user_id}, "event": "tick", "data": i}).status_code == 202
    wait(lambda: len(events(conn, "tick")) == 3)

    def mine() -> dict[str, Any]:
        fronts = client.get("/api/frontends", headers=KEY).get_json()
        return next(f for f in fronts if f["id"] == node.id)

    # the next heartbeat writes them (every 0.2 s here)
    wait(lambda: (mine()["stats"] or {}).get("delivered", 0) >= 3)
    got = mine()
    assert got["connections"] == 1
    stats = got["stats"]
    assert set(stats) == {*STATS_COUNTERS, *(f"{k}_per_s" for k in STATS_COUNTERS),
                          "window_s"}
    assert stats["published"] >= 3 and stats["frames_out"] >= stats["delivered"] >= 3
    assert stats["window_s"] > 0 and all(stats[f"{k}_per_s"] >= 0 for k in STATS_COUNTERS)
