"""The cluster core on the in-memory bus (``memory://``): frontends in one process, their
registry and log in the real Postgres. Publishing, delivery across frontends, presence and
the bus-outage replay, without a broker or a process per frontend."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import msgspec
import pytest

from service.bus import memory
from service.cluster.frontend import Frontend
from service.core.envelope import Target, raw_json
from service.core.routes import connection_key
from service.store import replay
from tests.fakes import events, frames, socket_on, wait


@pytest.fixture
def bus_url() -> str:
    return f"memory://test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def nodes(database: str, bus_url: str) -> Iterator[Callable[..., Frontend]]:
    from service.core.config import Settings

    started: list[Frontend] = []

    def start(name: str, **overrides: Any) -> Frontend:
        settings = dataclasses.replace(Settings.from_env(), broker_url=bus_url,
                                       frontend_id=f"{name}-{uuid.uuid4().hex[:6]}",
                                       heartbeat_s=0.5, **overrides)
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


def test_a_slow_gap_replay_keeps_the_new_queue_alive(
        nodes: Callable[..., Frontend], bus_url: str, database: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay runs before the new queue is consumed, when the consumer loop does not
    tick: while it takes long (Postgres slow), the frontend sends the broker keepalives every
    quarter heartbeat, so the queue it replays for is not dropped as silent."""
    a, b = nodes("a"), nodes("b", broker_heartbeat_s=0.2)
    on_b = socket_on(b)
    kept: list[bool] = []
    monkeypatch.setattr(b.consumer, "keepalive", lambda: kept.append(True))
    real_since = replay.since

    def slow_since(*args: Any) -> Any:
        gevent.sleep(1.0)
        return real_since(*args)

    monkeypatch.setattr(replay, "since", slow_since)
    broker = memory.broker(f"{bus_url}#{b.settings.exchange}")
    broker.down = True
    wait(lambda: not b.consumer.connected)
    msg_id = a.publish(Target.all(), "missed-slowly", raw_json(1), durable=True)  # logged only
    broker.down = False
    got = wait(lambda: events(on_b, "missed-slowly"))
    assert [f["id"] for f in got] == [msg_id]
    assert len(kept) >= 5  # ~1 s of replay at one keepalive per 0.05 s (20, when idle)


def test_own_messages_wait_for_the_gap_replay_so_none_overtakes(
        nodes: Callable[[str], Frontend], bus_url: str, database: str) -> None:
    """While B's bus is down, A's messages reach B only through the log; B's own durable
    publishes of that time must not reach B's socket before them: after the reconnect B's
    socket gets them all once each, in id order."""
    a, b = nodes("a"), nodes("b")
    on_b = socket_on(b)
    broker = memory.broker(f"{bus_url}#{b.settings.exchange}")
    broker.down = True
    wait(lambda: not b.consumer.connected)
    first = a.publish(Target.all(), "gap", raw_json("a"), durable=True)  # logged only
    own = b.publish(Target.all(), "gap", raw_json("b"), durable=True)
    assert isinstance(first, int) and isinstance(own, int) and first < own
    gevent.sleep(0.2)
    assert events(on_b, "gap") == []  # held: delivering it now would put it before `first`
    broker.down = False
    got = wait(lambda: len(events(on_b, "gap")) >= 2 and events(on_b, "gap"))
    gevent.sleep(0.2)  # nothing more comes (no copy of its own message)
    assert [f["id"] for f in events(on_b, "gap")] == [first, own]
    assert [f["id"] for f in got] == [first, own]


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


# --- targeted routing ----------------------------------------------------------------------

def routed(node: Frontend, bus_url: str) -> int:
    """Bodies the broker routed to this frontend's queue (the broker's view)."""
    broker = memory.broker(f"{bus_url}#{node.settings.exchange}")
    return broker.deliveries[node.consumer.queue_name or ""]


def test_targeted_messages_reach_only_the_frontends_holding_a_recipient(
        nodes: Callable[..., Frontend], bus_url: str) -> None:
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    member = socket_on(b, "m")
    b.join(member, ("default", "room"))
    alice = socket_on(c, "alice")
    gevent.sleep(0.2)  # the join's presence (fanout) has reached everyone
    before = {n.id: routed(n, bus_url) for n in (a, b, c)}
    for i in range(5):
        a.publish(Target.group("room", "default"), "said", raw_json(i), durable=False)
    a.publish(Target.user("alice"), "dm", raw_json(0), durable=True)
    a.publish(Target.connection(member.id), "whisper", raw_json(0), durable=False)
    wait(lambda: len(events(member, "said")) == 5 and events(alice, "dm")
         and events(member, "whisper"))
    gevent.sleep(0.1)
    assert [e["data"] for e in events(member, "said")] == [0, 1, 2, 3, 4]  # once, in order
    got = {n.id: routed(n, bus_url) - before[n.id] for n in (a, b, c)}
    # each publish is one bus message, to the one frontend with its recipient (and, for
    # the whisper, to one whose connection shares the shard: 1 in 256)
    shared = int(connection_key(alice.id) == connection_key(member.id))
    assert got == {a.id: 0, b.id: 6, c.id: 1 + shared}, got
    assert (b.meter.bus_events, c.meter.bus_events) == (6, 1 + shared)


def test_a_frontend_whose_last_member_left_stops_receiving_the_group(
        nodes: Callable[..., Frontend], bus_url: str) -> None:
    a, b = nodes("a"), nodes("b")
    one, two = socket_on(b), socket_on(b)
    b.join(one, ("default", "g"))
    b.join(two, ("default", "g"))
    b.leave(one, ("default", "g"))
    a.publish(Target.group("g", "default"), "still", raw_json(1), durable=False)
    wait(lambda: events(two, "still"))
    b.leave(two, ("default", "g"))
    gevent.sleep(0.1)
    before = routed(b, bus_url)
    a.publish(Target.group("g", "default"), "gone", raw_json(2), durable=False)
    gevent.sleep(0.2)
    shards = {connection_key(one.id), connection_key(two.id)}
    assert routed(b, bus_url) == before and b.consumer.bound_count() == 1 + len(shards)


def test_the_fanout_setting_sends_everything_everywhere(
        nodes: Callable[..., Frontend], bus_url: str) -> None:
    a, b = nodes("a", routing="fanout"), nodes("b", routing="fanout")
    before = routed(b, bus_url)
    a.publish(Target.group("nobody-here", "default"), "x", raw_json(1), durable=False)
    wait(lambda: routed(b, bus_url) == before + 1)
    assert b.consumer.bound_count() == 1  # "#": what targeted publishers send, too


def test_bindings_are_back_before_a_reconnected_frontend_consumes(
        nodes: Callable[..., Frontend], bus_url: str) -> None:
    a, b = nodes("a"), nodes("b")
    member = socket_on(b)
    b.join(member, ("default", "back"))
    broker = memory.broker(f"{bus_url}#{b.settings.exchange}")
    old_queue = b.consumer.queue_name
    broker.down = True
    wait(lambda: not b.consumer.connected)
    broker.down = False
    wait(lambda: b.consumer.connected)
    assert b.consumer.queue_name != old_queue
    assert "g.default/back" in broker.keys[b.consumer.queue_name or ""]
    a.publish(Target.group("back", "default"), "again", raw_json(1), durable=False)
    wait(lambda: events(member, "again"))


def test_any_mix_of_the_routing_setting_delivers_everything(
        nodes: Callable[..., Frontend]) -> None:
    targeted, fanout = nodes("t"), nodes("f", routing="fanout")
    on_t, on_f = socket_on(targeted, "ut"), socket_on(fanout, "uf")
    targeted.publish(Target.user("uf"), "to-f", raw_json(1), durable=False)  # routed
    fanout.publish(Target.user("ut"), "to-t", raw_json(2), durable=False)  # fanout
    wait(lambda: events(on_f, "to-f") and events(on_t, "to-t"))
