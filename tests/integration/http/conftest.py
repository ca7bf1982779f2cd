"""A frontend app on the in-memory bus (the registry and log are the real Postgres) and
the tutorial's ``client`` fixture; each module's ``app`` fixture picks its settings."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.app import create_app
from service.cluster.frontend import Frontend
from tests.fakes import wait


@contextlib.contextmanager
def memory_app(prefix: str, **settings: Any) -> Iterator[Flask]:
    """A started app of its own (bus, frontend id), stopped afterwards."""
    app = create_app({"broker_url": f"memory://{prefix}-{uuid.uuid4().hex[:8]}",
                      "frontend_id": f"{prefix}-{uuid.uuid4().hex[:6]}", **settings})
    node: Frontend = app.extensions["herald"]
    wait(lambda: node.consumer.connected and node.registered)
    try:
        yield app
    finally:
        node.stop()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def node(app: Flask) -> Frontend:
    return app.extensions["herald"]  # type: ignore[no-any-return]
