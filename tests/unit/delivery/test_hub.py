"""service.delivery.hub: the socket index and the per-socket writer greenlet, with a fake socket."""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from gevent.event import Event

from service.core.envelope import Target, ws_text_frame
from service.core.routes import connection_key
from service.delivery.conn import CLOSE_BEHIND, OVERFLOW_REASON, Conn
from service.delivery.hub import Hub
from tests.fakes import FakeWS


def settle() -> None:
    for _ in range(5):
        gevent.sleep(0)
    gevent.sleep(0.01)


_made: list[Conn] = []


@pytest.fixture
def hub() -> Any:
    yield Hub()
    while _made:  # every writer greenlet a test spawned ends with it
        writer = _made.pop()._writer
        if writer is not None:
            writer.kill(block=True)


def make(hub: Hub, conn_id: str, user: str, limit: int = 100, **kw: Any) -> Conn:
    conn = Conn(conn_id, user, FakeWS(), limit, **kw)
    _made.append(conn)
    hub.add(conn)
    return conn


def sent(conn: Conn) -> list[bytes]:
    return conn.sock._sock.chunks


def test_deliver_to_each_target_kind(hub: Hub) -> None:
    a, b, c = make(hub, "a", "u1"), make(hub, "b", "u1"), make(hub, "c", "u2")
    hub.join(a, ("default", "g"))
    hub.join(c, ("default", "g"))
    hub.join(b, ("room", "g"))
    cases = [
        (Target.all(), b"all", {"a", "b", "c"}),
        (Target.group("g"), b"grp", {"a", "c"}),
        (Target.group("g", "room"), b"room", {"b"}),
        (Target.group("nobody"), b"none", set()),
        (Target.user("u1"), b"user", {"a", "b"}),
        (Target.user("ghost"), b"ghost", set()),
        (Target.connection("c"), b"conn", {"c"}),
        (Target.connection("zzz"), b"noconn", set()),
    ]
    for target, frame, expected in cases:
        assert hub.deliver(target, frame) == len(expected)
        settle()
        for conn in (a, b, c):
            assert (frame in sent(conn)) is (conn.id in expected), (target, conn.id)


def test_exclude(hub: Hub) -> None:
    a, b = make(hub, "a", "u"), make(hub, "b", "u")
    assert hub.deliver(Target.user("u"), b"x", exclude="a") == 1
    assert hub.deliver(Target.all(), b"y", exclude="nobody") == 2
    settle()
    assert sent(a) == [b"y"]
    assert sent(b) == [b"xy"]  # both were queued before the writer ran: one sendall


def test_one_shared_frame_written_once_per_socket(hub: Hub) -> None:
    conns = [make(hub, f"c{i}", f"u{i}") for i in range(3)]
    frame = ws_text_frame(b'{"op":"event"}')
    assert hub.deliver(Target.all(), frame) == 3
    settle()
    for conn in conns:
        assert len(sent(conn)) == 1
        assert sent(conn)[0] is frame  # the very same bytes object, never copied
        assert conn.ws.closes == []


def test_frames_queued_while_writing_coalesce(hub: Hub) -> None:
    conn = make(hub, "a", "u")
    sock = conn.sock._sock
    sock.gate = Event()
    conn.push(b"1")
    gevent.sleep(0)
    assert sock.entered.is_set()  # the writer is inside sendall now
    for frame in (b"2", b"3", b"4"):
        conn.push(frame)
    sock.gate.set()
    settle()
    assert sock.chunks == [b"1", b"234"]


def test_overflow_closes_with_1013_and_calls_on_overflow(hub: Hub) -> None:
    overflowed: list[Conn] = []
    conn = make(hub, "a", "u", limit=2, on_overflow=overflowed.append)
    conn.push(b"1")
    conn.push(b"2")  # the writer has not run yet: two frames queued = the limit
    assert overflowed == []
    conn.push(b"3")
    assert overflowed == [conn]
    conn.push(b"4")  # already closing: dropped, on_overflow not called again
    settle()
    assert overflowed == [conn]
    assert conn.ws.log == [("send", b"12"), ("close", CLOSE_BEHIND, OVERFLOW_REASON)]
    assert conn.closed is True


def test_overflow_by_bytes_closes_with_1013(hub: Hub) -> None:
    """A few large frames (a members reply of a big group, a replay) hit the byte bound
    long before the frame bound."""
    overflowed: list[Conn] = []
    conn = make(hub, "a", "u", limit=100, on_overflow=overflowed.append, outbox_bytes=1000)
    conn.push(b"x" * 600)
    conn.push(b"y" * 400)  # 1,000 bytes queued: at the bound, not over it
    assert overflowed == [] and conn.queued_bytes == 1000
    conn.push(b"z")
    assert overflowed == [conn]
    settle()
    assert conn.ws.log == [("send", b"x" * 600 + b"y" * 400),
                           ("close", CLOSE_BEHIND, OVERFLOW_REASON)]
    assert conn.queued_bytes == 0


def test_held_deliveries_are_bounded_in_bytes_and_frames(hub: Hub) -> None:
    """What is parked while a resume replays counts against the same bounds."""
    by_bytes = make(hub, "a", "u", outbox_bytes=100)
    by_bytes.hold()
    by_bytes.deliver(b"x" * 60)
    by_bytes.deliver(b"y" * 60)
    assert by_bytes.close_code == CLOSE_BEHIND
    by_frames = make(hub, "b", "u", limit=3)
    by_frames.hold()
    for _ in range(3):
        by_frames.deliver(b"f")
    assert by_frames.close_code is None
    by_frames.deliver(b"f")
    assert by_frames.close_code == CLOSE_BEHIND


def test_close_flushes_queued_frames_first(hub: Hub) -> None:
    conn = make(hub, "a", "u")
    conn.push(b"a")
    conn.send({"op": "bye"})
    conn.close(1000, "done")
    conn.close(1011, "second close is ignored")
    conn.push(b"late")
    settle()
    assert conn.ws.log == [("send", b"a" + ws_text_frame(b'{"op":"bye"}')),
                           ("close", 1000, "done")]
    assert conn.closed is True


def test_close_waits_for_an_in_flight_write(hub: Hub) -> None:
    conn = make(hub, "a", "u")
    conn.sock._sock.gate = Event()
    conn.push(b"1")
    gevent.sleep(0)
    conn.push(b"2")
    conn.close(1012, "draining")
    conn.sock._sock.gate.set()
    settle()
    assert conn.ws.log == [("send", b"1"), ("send", b"2"), ("close", 1012, "draining")]


def test_stop_after_close_still_sends_the_close(hub: Hub) -> None:
    conn = make(hub, "a", "u")
    conn.push(b"last")
    conn.close(4401, "token expired")
    assert conn.close_code == 4401
    hub.remove(conn)  # never blocks, never touches the writer
    assert conn.ws.log == []
    conn.stop()  # the writer has not run yet: stop waits for the flush
    assert conn.ws.log == [("send", b"last"), ("close", 4401, "token expired")]
    assert conn.closed is True


def test_hold_parks_deliveries_until_release(hub: Hub) -> None:
    conn = make(hub, "a", "u")
    conn.hold()
    assert hub.deliver(Target.user("u"), b"live1") == 1
    conn.push(b"welcome")  # a direct reply is not held
    hub.deliver(Target.all(), b"live2")
    settle()
    assert sent(conn) == [b"welcome"]
    conn.release()
    hub.deliver(Target.all(), b"live3")
    settle()
    assert b"".join(sent(conn)) == b"welcomelive1live2live3"


def test_removing_a_replaced_conn_keeps_its_successor(hub: Hub) -> None:
    old = make(hub, "same", "u")
    new = make(hub, "same", "u")  # a resume: the same connection id on a new socket
    assert hub.conns == {"same": new}
    hub.join(old, ("s", "g"))
    assert hub.remove(old) == [("s", "g")]
    assert hub.conns == {"same": new}
    assert hub.by_user == {"u": {new}}
    assert hub.by_group == {}
    assert hub.deliver(Target.connection("same"), b"x") == 1
    settle()
    assert (sent(old), sent(new)) == ([], [b"x"])


def test_join_leave_monitor_return_values(hub: Hub) -> None:
    a = make(hub, "a", "u")
    assert hub.join(a, ("s", "g")) is True
    assert hub.join(a, ("s", "g")) is False
    assert hub.local_members(("s", "g")) == [a]
    assert hub.leave(a, ("s", "g")) is True
    assert hub.leave(a, ("s", "g")) is False
    assert hub.by_group == {}
    assert hub.local_members(("s", "g")) == []
    state = hub.monitor(a, ("s", "g"), True)
    assert state is not None
    assert hub.monitors == {("s", "g"): {a}}
    assert a.monitors == {("s", "g"): state}
    assert hub.monitor(a, ("s", "g"), False) is None
    assert hub.monitors == {}
    assert a.monitors == {}


def test_remove_cleans_every_index(hub: Hub) -> None:
    a, b = make(hub, "a", "u"), make(hub, "b", "u")
    for key in (("s", "g1"), ("s", "g2")):
        hub.join(a, key)
    hub.join(b, ("s", "g1"))
    hub.monitor(a, ("s", "g3"), True)
    hub.monitor(b, ("s", "g1"), True)

    left = hub.remove(a)
    assert sorted(left) == [("s", "g1"), ("s", "g2")]
    assert hub.conns == {"b": b}
    assert hub.by_user == {"u": {b}}
    assert hub.by_group == {("s", "g1"): {b}}
    assert hub.monitors == {("s", "g1"): {b}}
    assert (a.groups, a.monitors) == (set(), {})

    assert hub.remove(b) == [("s", "g1")]
    assert (hub.conns, hub.by_user, hub.by_group, hub.monitors) == ({}, {}, {}, {})
    assert hub.deliver(Target.all(), b"x") == 0


def test_an_idle_socket_has_no_writer_greenlet(hub: Hub) -> None:
    a = make(hub, "a", "u")
    assert a._writer is None  # nothing to write: nothing running
    a.push(b"1")
    assert a._writer is not None
    settle()
    assert a._writer is None and sent(a) == [b"1"]  # drained: the writer is gone again


def test_stop_ends_the_writer(hub: Hub) -> None:
    a = make(hub, "a", "u")
    a.sock._sock.gate = Event()
    a.push(b"1")
    gevent.sleep(0)
    writer = a._writer
    assert writer is not None and not writer.dead  # inside a blocked write
    hub.remove(a)
    a.stop()
    settle()
    assert writer.dead
    assert a.closed is True
    assert a.ws.closes == []  # no close was requested: the socket is gone already
    a.push(b"after")
    settle()
    assert sent(a) == []


def test_a_batch_leaves_each_socket_in_one_write_with_only_its_frames(hub: Hub) -> None:
    a, b, c = make(hub, "a", "u1"), make(hub, "b", "u2"), make(hub, "c", "u3")
    hub.join(a, ("default", "g"))
    hub.join(b, ("default", "g"))
    items = [
        (Target.all(), b"1", None, 0.0),
        (Target.group("g"), b"2", None, 0.0),
        (Target.user("u3"), b"3", None, 0.0),
        (Target.all(), b"4", "b", 0.0),
    ]
    assert hub.deliver_batch(items) == 3 + 2 + 1 + 2
    settle()
    assert sent(a) == [b"124"]
    assert sent(b) == [b"12"]
    assert sent(c) == [b"134"]


def test_a_batch_to_everyone_is_one_shared_chunk(hub: Hub) -> None:
    conns = [make(hub, f"c{i}", f"u{i}") for i in range(4)]
    items = [(Target.all(), bytes([65 + i]), None, 0.0) for i in range(5)]
    assert hub.deliver_batch(items) == 20
    settle()
    chunks = [sent(conn) for conn in conns]
    assert all(ch == [b"ABCDE"] for ch in chunks)
    assert all(ch[0] is chunks[0][0] for ch in chunks)  # joined once, not once per socket


def test_the_outbox_limit_counts_frames_inside_chunks(hub: Hub) -> None:
    overflowed: list[str] = []
    conn = make(hub, "a", "u", limit=5, on_overflow=lambda c: overflowed.append(c.id))
    sock = conn.sock._sock
    sock.gate = Event()
    conn.push(b"0")
    gevent.sleep(0)  # the writer holds frame 0 inside sendall
    conn.deliver_chunk(b"1234", [0.0] * 4)
    assert overflowed == []  # 4 frames queued, limit 5
    conn.deliver_chunk(b"56", [0.0, 0.0])
    assert overflowed == ["a"]  # 6 would exceed it
    sock.gate.set()
    settle()
    assert conn.ws.closes and conn.ws.closes[0][0] == CLOSE_BEHIND


class RealWS:
    """A connected gevent socket pair: the server end under a Conn, the client end read."""

    def __init__(self) -> None:
        import gevent.socket

        self.sock, self.peer = gevent.socket.socketpair()
        self.closes: list[tuple[int, str]] = []

    def close(self, reason: int = 1000, message: str = "") -> None:
        self.closes.append((reason, message))

    def read(self, n: int) -> bytes:
        out = b""
        with gevent.Timeout(5):
            while len(out) < n:
                out += self.peer.recv(n - len(out))
        return out


def test_the_fan_out_fast_path_writes_at_once_and_counts_once(hub: Hub) -> None:
    import time

    wss = [RealWS() for _ in range(3)]
    conns = [Conn(f"r{i}", f"u{i}", ws, 100, meter=hub.meter) for i, ws in enumerate(wss)]
    for conn in conns:
        _made.append(conn)
        hub.add(conn)
    frame = ws_text_frame(b'{"op":"event"}')
    assert hub.deliver(Target.all(), frame, ts=time.time()) == 3
    assert all(conn._writer is None for conn in conns)  # written inline, no writer spawned
    assert [ws.read(len(frame)) for ws in wss] == [frame] * 3
    assert hub.meter.frames_out == 3
    assert sum(hub.meter.latency_counts) == 3


def test_a_held_sockets_direct_reply_still_takes_the_fast_path(hub: Hub) -> None:
    ws = RealWS()
    conn = Conn("r", "u", ws, 100, meter=hub.meter)
    _made.append(conn)
    hub.add(conn)
    conn.hold()  # a welcome being prepared
    hub.deliver(Target.all(), b"live")
    welcome = ws_text_frame(b'{"op":"welcome"}')
    conn.push(welcome)
    assert conn._writer is None  # written inline, no writer spawned
    assert ws.read(len(welcome)) == welcome
    conn.release()
    assert ws.read(4) == b"live"


@pytest.mark.parametrize("path", ["push", "deliver"])
def test_a_full_socket_buffer_queues_the_frame_instead_of_dropping_it(hub: Hub,
                                                                     path: str) -> None:
    ws = RealWS()
    conn = Conn("r", "u", ws, 100, meter=hub.meter)
    _made.append(conn)
    hub.add(conn)
    raw, filled = conn.sock.raw, 0
    while True:  # fill the socket buffer exactly, so the next write gets EAGAIN at once
        try:
            filled += raw.send(b"x")
        except BlockingIOError:
            break
    frame = ws_text_frame(b'{"op":"ack"}')
    if path == "push":
        conn.push(frame)
    else:
        hub.deliver(Target.all(), frame, ts=0.0)
    assert ws.read(filled + len(frame)) == b"x" * filled + frame


def test_while_another_write_holds_the_lock_a_delivery_waits_for_it(hub: Hub) -> None:
    ws = RealWS()
    conn = Conn("r", "u", ws, 100, meter=hub.meter)
    _made.append(conn)
    hub.add(conn)
    first, frame = ws_text_frame(b'{"op":"pong"}'), ws_text_frame(b'{"op":"event"}')
    assert conn.sock.lock.acquire(blocking=False)  # a pong being written, say
    conn.sock.sendall_locked(first[:3])  # its first bytes are out
    hub.deliver(Target.all(), frame, ts=0.0)
    assert conn._writer is not None  # queued for the writer, not written inside the pong
    conn.sock.sendall_locked(first[3:])
    conn.sock.lock.release()
    assert ws.read(len(first) + len(frame)) == first + frame
    settle()
    assert not conn.sock.lock.locked() and conn._writer is None


def test_a_partial_fast_write_is_finished_by_the_writer_intact(hub: Hub) -> None:
    ws = RealWS()
    conn = Conn("r", "u", ws, 100, meter=hub.meter, outbox_bytes=8 << 20)
    _made.append(conn)
    hub.add(conn)
    big = ws_text_frame(b"x" * 3_000_000)  # more than the socket buffers take at once
    small = ws_text_frame(b"after")
    assert hub.deliver(Target.all(), big, ts=0.0) == 1
    assert conn._owns_lock  # half on the wire: the lock stays held for the rest
    hub.deliver(Target.all(), small, ts=0.0)
    got = ws.read(len(big) + len(small))
    assert got == big + small  # never interleaved
    settle()
    assert hub.meter.frames_out == 2
    assert not conn._owns_lock and conn._writer is None


def test_the_index_asks_for_a_routing_key_at_the_first_recipient_and_drops_it_at_the_last(
) -> None:
    changes: list[tuple[str, bool]] = []
    hub = Hub(on_route=lambda key, present: changes.append((key, present)))
    ca, cb = connection_key("a"), connection_key("b")
    assert ca != cb
    a, b = Conn("a", "alice", FakeWS(), 10), Conn("b", "alice", FakeWS(), 10)
    hub.add(a)
    assert changes == [("u.alice", True), (ca, True)]
    hub.add(b)  # the same user: only the connection's shard is new
    assert changes[2:] == [(cb, True)]
    assert hub.join(a, ("s", "g")) and hub.join(b, ("s", "g"))
    assert changes[3:] == [("g.s/g", True)]
    assert hub.leave(a, ("s", "g"))
    assert changes[4:] == []  # b is still a member here
    assert hub.routes_of(b) == ["u.alice", cb, "g.s/g"]
    hub.remove(b)
    assert sorted(changes[4:]) == sorted([(cb, False), ("g.s/g", False)])
    hub.remove(a)
    assert sorted(changes[6:]) == sorted([(ca, False), ("u.alice", False)])
    assert hub.conns == {} and hub.by_user == {} and hub.by_group == {} and hub.shards == {}


def test_connections_of_one_shard_share_its_key() -> None:
    changes: list[tuple[str, bool]] = []
    hub = Hub(on_route=lambda key, present: changes.append((key, present)))
    ids = [f"c{i}" for i in range(2000)]
    first = next(i for i in ids[1:] if connection_key(i) == connection_key(ids[0]))
    one, two = Conn(ids[0], "u", FakeWS(), 10), Conn(first, "u", FakeWS(), 10)
    hub.add(one)
    hub.add(two)
    hub.remove(one)
    shard = connection_key(ids[0])
    assert changes.count((shard, True)) == 1 and (shard, False) not in changes
    hub.remove(two)
    assert changes.count((shard, False)) == 1


def test_a_resumed_successor_keeps_the_connection_key() -> None:
    changes: list[tuple[str, bool]] = []
    hub = Hub(on_route=lambda key, present: changes.append((key, present)))
    old, new = Conn("c", "u", FakeWS(), 10), Conn("c", "u", FakeWS(), 10)
    hub.add(old)
    hub.add(new)  # same id, before the old one is removed
    hub.remove(old)
    assert (connection_key("c"), False) not in changes and hub.conns["c"] is new
