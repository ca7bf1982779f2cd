"""The cluster core on the in-memory bus (``memory://``): frontends in one process, their
registry and log in the real Postgres. Publishing, delivery across frontends, presence and
the bus-outage replay, without a broker or a process per frontend."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator

import gevent
import msgspec
import pytest

from service.bus import memory
from service.cluster.frontend import Frontend
from service.core.envelope import Target, raw_json
from tests.fakes import events, frames, socket_on, wait


@pytest.fixture
def bus_url() -> str:
    return f"memory://test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def nodes(database: str, bus_url: str) -> Iterator[Callable[[str], Frontend]]:
    from service.core.config import Settings

    started: list[Frontend] = []

    def start(name: str) -> Frontend:
        settings = dataclasses.replace(Settings.from_env(), broker_url=bus_url,
                                       frontend_id=f"{name}-{uuid.uuid4().hex[:6]}",
                                       heartbeat_s=0.5)
        node = Frontend(settings)
        node.start()
        wait(lambda: node.consumer.connected and node.registered)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def test_a_publish_on_one_frontend_reaches_sockets_on_the_other(
        nodes: Callable[[str], Frontend]) -> None:
    a, b = nodes("a"), nodes("b")
    on_a, on_b = socket_on(a), socket_on(b)
    msg_id = a.publish(Target.all(), "hello", raw_json({"n": 1}), durable=True)
    assert isinstance(msg_id, int)
    wait(lambda: events(on_b, "hello"))
    gevent.sleep(0.1)
    for conn in (on_a, on_b):  # exactly once each: locally first on A, over the bus on B
        got = events(conn, "hello")
        assert len(got) == 1 and got[0]["id"] == msg_id and got[0]["data"] == {"n": 1}


def test_a_group_message_reaches_only_members(nodes: Callable[[str], Frontend]) -> None:
    a, b = nodes("a"), nodes("b")
    member, other = socket_on(b, "m"), socket_on(b, "o")
    b.join(member, ("default", "room"))
    a.publish(Target.group("room", "default"), "said", msgspec.Raw(b'"hi"'), durable=False)
    wait(lambda: events(member, "said"))
    assert not events(other, "said")


def test_presence_reaches_a_monitor_on_the_other_frontend(
        nodes: Callable[[str], Frontend]) -> None:
    a, b = nodes("a"), nodes("b")
    watcher = socket_on(b)
    state = b.hub.monitor(watcher, ("default", "lobby"), True)
    assert state is not None
    state.snapshot([])
    joiner = socket_on(a, "j")
    a.join(joiner, ("default", "lobby"))
    got = wait(lambda: [f for f in frames(watcher) if f.get("op") == "presence"])
    assert got[0]["joins"][0]["connection_id"] == joiner.id


def test_a_frontend_replays_what_it_missed_while_its_bus_was_down(
        nodes: Callable[[str], Frontend], bus_url: str, database: str) -> None:
    a, b = nodes("a"), nodes("b")
    on_b = socket_on(b)
    broker = memory.broker(f"{bus_url}#{b.settings.exchange}")
    broker.down = True  # every queue is gone; publishes fail
    wait(lambda: not b.consumer.connected)
    msg_id = a.publish(Target.all(), "missed", raw_json(1), durable=True)  # logged only
    assert isinstance(msg_id, int)
    broker.down = False
    got = wait(lambda: events(on_b, "missed"))
    assert [f["id"] for f in got] == [msg_id]


def test_an_http_publish_on_a_reaches_a_socket_on_b(nodes: Callable[[str], Frontend],
                                                    bus_url: str) -> None:
    """api → cluster → log → bus on A; bus → cluster → sockets on B: the whole chain in
    one process (the Flask app of A with its test client, B a bare node)."""
    from service.app import create_app

    b = nodes("b")
    on_b = socket_on(b, "alice")
    app = create_app({"broker_url": bus_url, "heartbeat_s": 0.5,
                      "frontend_id": f"a-{uuid.uuid4().hex[:6]}"})
    a = app.extensions["herald"]
    try:
        wait(lambda: a.consumer.connected and a.registered)
        r = app.test_client().post("/api/publish", headers={"Authorization": "Bearer test-key-1"},
                                   json={"target": {"user": "alice"}, "event": "note",
                                         "data": {"x": 1}})
        assert r.status_code == 202, r.get_data(as_text=True)
        got = wait(lambda: events(on_b, "note"))
        assert got[0]["id"] == r.get_json()["id"] and got[0]["data"] == {"x": 1}
        bad = app.test_client().post("/api/publish", headers={"Authorization": "Bearer nope"},
                                     json={})
        assert bad.status_code == 401 and bad.get_json()["error"] == "unauthorized"
    finally:
        a.stop()
