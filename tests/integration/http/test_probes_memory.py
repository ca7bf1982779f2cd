"""The probes of a frontend on the in-memory bus (real Postgres), through Flask's test
client: /readyz answers from state kept in the background, so an exhausted database pool
does not make it wait or fail; a draining frontend refuses new upgrades with 503; and
HERALD_METRICS_PORT keeps /metrics off the public port."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from service.app import create_app
from service.cluster.frontend import Frontend
from tests.fakes import wait

METRICS_PORT = 9102
UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}


def frontend(database: str, **config: Any) -> Flask:
    app = create_app({"broker_url": f"memory://probes-{uuid.uuid4().hex[:8]}",
                      "heartbeat_s": 0.5, "frontend_id": f"probes-{uuid.uuid4().hex[:6]}",
                      **config})
    node: Frontend = app.extensions["herald"]
    wait(lambda: node.consumer.connected and node.registered)
    return app


@pytest.fixture
def tiny_pool(database: str) -> Iterator[Flask]:
    # a URL of its own, so the process's engine cache gives this frontend a pool of its
    # own: one connection plus one overflow (service/store/db.py: overflow = pool size)
    app = frontend(database, db_pool_size=1,
                   database_url=f"{database}?application_name=herald-readyz-{os.getpid()}")
    yield app
    app.extensions["herald"].stop()


def test_readyz_stays_ready_while_every_pooled_connection_is_taken(tiny_pool: Flask) -> None:
    node: Frontend = tiny_pool.extensions["herald"]
    pool: Any = node.engine.pool
    held = [node.engine.connect() for _ in range(2 * pool.size())]
    try:
        # the pool is exhausted: the next checkout would wait POOL_TIMEOUT_S and fail,
        # which is what the old /readyz did (503 "database: TimeoutError" after 5 s)
        assert pool.checkedin() == 0 and pool.overflow() == pool.size()
        r = tiny_pool.test_client().get("/readyz")
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["ready"] is True
    finally:
        for conn in held:
            conn.close()


@pytest.fixture
def app(database: str) -> Iterator[Flask]:
    app = frontend(database)
    yield app
    app.extensions["herald"].stop()


def _key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def test_a_draining_frontend_answers_new_upgrades_with_503(app: Flask) -> None:
    node: Frontend = app.extensions["herald"]
    client = app.test_client()
    node.draining = True
    r = client.get("/ws", headers={**UPGRADE, "Sec-WebSocket-Key": _key()})
    assert r.status_code == 503, r.data
    assert r.get_json()["error"] == "unavailable" and r.headers["Retry-After"]
    # only upgrades: the API and the probes answer as before (readyz says draining)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").get_json()["reason"] == "draining"
    node.draining = False
    assert client.get("/ws").status_code != 503  # a plain GET, not draining: not refused


def test_the_metrics_port_serves_the_metrics_and_probes_only(database: str) -> None:
    app = frontend(database, metrics_port=METRICS_PORT)
    try:
        client = app.test_client()
        internal = {"SERVER_PORT": str(METRICS_PORT)}
        metrics = client.get("/metrics", environ_overrides=internal)
        assert metrics.status_code == 200 and b"herald_connections" in metrics.data
        for path in ("/healthz", "/readyz"):
            assert client.get(path, environ_overrides=internal).status_code == 200, path
        for path in ("/api/frontends", "/openapi.json", "/ws", "/"):
            assert client.get(path, environ_overrides=internal).status_code == 404, path
        # the public port: everything but the metrics
        for path in ("/metrics", "/metrics/", "/metrics/x"):
            r = client.get(path)
            assert r.status_code == 404 and b"herald_" not in r.data, path
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
    finally:
        app.extensions["herald"].stop()
