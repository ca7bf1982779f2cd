"""Issue 3: the Python pg API for backend code, against two live frontends."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from service.core.envelope import Target
from service.core.errors import NotFound
from service.core.presence import PresenceData
from service.pg import Herald
from tests.support import Client, in_threads, wait_until


@pytest.fixture
def herald() -> Any:
    h = Herald()
    yield h
    h.close()


def test_join_publish_members_which_groups_leave(pair: Any, token: Any, herald: Herald) -> None:
    pa, pb = pair
    room = f"room-{uuid.uuid4().hex[:6]}"
    on_a, on_b = Client(pa.ws_url), Client(pb.ws_url)
    ida = on_a.hello(token("pa-user"))["connection_id"]
    idb = on_b.hello(token("pb-user"))["connection_id"]

    herald.join("lobby", room, ida)
    herald.join("lobby", room, idb)
    assert {m["connection_id"] for m in herald.get_members("lobby", room)} == {ida, idb}
    assert {"scope": "lobby", "group": room, "members": 2} in herald.which_groups("lobby")
    # the frontends index the server-side joins: a group publish reaches both sockets
    wait_until(lambda: len(on_a.request("members", group=room, scope="lobby",
                                        local=True)["members"]) == 1)
    wait_until(lambda: len(on_b.request("members", group=room, scope="lobby",
                                        local=True)["members"]) == 1)
    msg_id = herald.publish(Target.group(room, "lobby"), "backend-news", {"v": 1})
    assert isinstance(msg_id, int)
    for c in (on_a, on_b):
        got = c.wait_for(lambda f: f.get("event") == "backend-news")[0]
        assert got["id"] == msg_id and got["data"] == {"v": 1}

    herald.leave("lobby", room, idb)
    assert [m["connection_id"] for m in herald.get_members("lobby", room)] == [ida]
    with pytest.raises(NotFound):
        herald.join("lobby", room, "no-such-connection")


def test_monitor_yields_snapshot_then_changes(pair: Any, token: Any, herald: Herald) -> None:
    pa, pb = pair
    room = f"room-{uuid.uuid4().hex[:6]}"
    first = Client(pa.ws_url)
    first_id = first.hello(token("m1"))["connection_id"]
    first.request("join", group=room)

    changes: list[PresenceData] = []
    got_three = threading.Event()

    def watch() -> None:
        gen = herald.monitor("default", room)
        try:
            for change in gen:
                changes.append(change)
                if len(changes) == 3:
                    got_three.set()
                    return
        finally:
            gen.close()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    wait_until(lambda: changes)  # the snapshot
    second = Client(pb.ws_url)
    second_id = second.hello(token("m2"))["connection_id"]
    second.request("join", group=room)
    first.request("leave", group=room)
    assert got_three.wait(30)
    t.join(10)
    assert [m["connection_id"] for m in changes[0].joins] == [first_id]
    assert [m["connection_id"] for m in changes[1].joins] == [second_id]
    assert [m["connection_id"] for m in changes[2].leaves] == [first_id]


def test_publish_many_and_concurrent_publishes_arrive_once_in_id_order(
        pair: Any, token: Any, herald: Herald) -> None:
    """Backend publishes share inserts and bus messages; a socket on each frontend still
    gets every one exactly once, in log-id order."""
    pa, pb = pair
    on_a, on_b = Client(pa.ws_url), Client(pb.ws_url)
    on_a.hello(token("many-a"))
    on_b.hello(token("many-b"))
    tag = uuid.uuid4().hex[:6]
    ids = herald.publish_many([(Target.all(), f"many-{tag}", {"i": i}) for i in range(50)])
    assert len(ids) == 50 and ids == sorted(ids) and len(set(ids)) == 50
    threaded: list[int] = []

    def work(t: int) -> None:
        for i in range(20):
            msg_id = herald.publish(Target.all(), f"many-{tag}", {"t": t, "i": i})
            assert msg_id is not None
            threaded.append(msg_id)

    in_threads(work, 6)
    expected = sorted(ids + threaded)
    for c in (on_a, on_b):
        wait_until(lambda c=c: len(c.events(f"many-{tag}")) >= len(expected))
        got = [e["id"] for e in c.events(f"many-{tag}")]
        assert got == expected
