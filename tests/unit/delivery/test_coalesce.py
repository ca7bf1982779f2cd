"""HERALD_WRITE_DELAY_MS (service/delivery/coalesce.py): deliveries wait for one timer and
leave together, in order, within the socket's limits; replies are not delayed."""

from __future__ import annotations

from typing import Any

import gevent
import gevent.socket
import pytest

from service.core.envelope import Target, ws_text_frame
from service.delivery.coalesce import WriteDelay
from service.delivery.conn import CLOSE_BEHIND, Conn
from service.delivery.hub import Hub
from tests.fakes import FakeWS

DELAY_S = 0.05


def frame(i: int) -> bytes:
    return ws_text_frame(b'{"op":"event","event":"e","data":%d}' % i)


@pytest.fixture
def delay() -> WriteDelay:
    return WriteDelay(DELAY_S)


def make(hub: Hub, delay: WriteDelay, conn_id: str, limit: int = 100, ws: Any = None) -> Conn:
    conn = Conn(conn_id, "u", ws or FakeWS(), limit, write_delay=delay)
    hub.add(conn)
    return conn


def test_deliveries_within_the_delay_leave_in_one_write_in_order(delay: WriteDelay) -> None:
    hub = Hub()
    a, b = make(hub, delay, "a"), make(hub, delay, "b")
    for i in range(3):
        hub.deliver(Target.all(), frame(i))
    gevent.sleep(DELAY_S / 5)
    assert a.ws.sock.chunks == [] and b.ws.sock.chunks == []  # waiting for the timer
    assert delay.waiting == 2
    gevent.sleep(DELAY_S * 3)
    joined = frame(0) + frame(1) + frame(2)
    assert a.ws.sock.chunks == [joined] and b.ws.sock.chunks == [joined]
    for window in range(2):  # each later window waits its whole delay too
        hub.deliver(Target.all(), frame(3 + window))
        gevent.sleep(DELAY_S / 5)
        assert len(a.ws.sock.chunks) == 1 + window
        gevent.sleep(DELAY_S * 3)
        assert a.ws.sock.chunks[-1] == frame(3 + window)


def test_a_reply_is_not_delayed_and_takes_the_waiting_deliveries_along(
        delay: WriteDelay) -> None:
    hub = Hub()
    a = make(hub, delay, "a")
    hub.deliver(Target.all(), frame(0))
    a.send({"op": "ack", "ref": 1})
    gevent.sleep(DELAY_S / 5)  # well before the timer
    assert b"".join(a.ws.sock.chunks) == frame(0) + ws_text_frame(b'{"op":"ack","ref":1}')


def test_the_limits_hold_for_what_waits(delay: WriteDelay) -> None:
    hub = Hub()
    a = make(hub, delay, "a", limit=2)
    for i in range(3):
        hub.deliver(Target.all(), frame(i))
    gevent.sleep(DELAY_S * 3)
    assert a.ws.closes == [(CLOSE_BEHIND, a.ws.closes[0][1])]
    assert a.ws.sock.chunks == [frame(0) + frame(1)]  # what fitted leaves before the close


def test_a_real_socket_gets_one_write_from_the_timer_itself(delay: WriteDelay) -> None:
    near, far = gevent.socket.socketpair()
    ws = FakeWS()
    ws.sock = near
    hub = Hub()
    a = make(hub, delay, "a", ws=ws)
    try:
        for i in range(5):
            hub.deliver(Target.all(), frame(i))
        gevent.sleep(DELAY_S * 3)
        assert a._writer is None  # written from the timer's callback: no writer greenlet
        far.settimeout(5)
        want = b"".join(frame(i) for i in range(5))
        got = b""
        while len(got) < len(want):
            got += far.recv(65536)
        assert got == want
        assert a.meter.frames_out == 5
    finally:
        near.close()
        far.close()
