"""Test doubles shared by the unit and memory-bus tests: a simple-websocket connection
whose socket records what is written (and can be made to block), and sockets placed on an
in-process frontend as a hello would leave them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from service.delivery.conn import Conn
from tests.support import wait_until

if TYPE_CHECKING:
    from service.cluster.frontend import Frontend

WAIT_S = 20.0


class FakeSock:
    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self.chunks: list[bytes] = []
        self.gate: Event | None = None  # when set, sendall blocks until the gate opens
        self.entered = Event()

    def sendall(self, data: bytes) -> None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        self.chunks.append(data)
        self.log.append(("send", data))


class FakeWS:
    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.sock = FakeSock(self.log)
        self.closes: list[tuple[int, str]] = []

    def close(self, reason: int = 1000, message: str = "") -> None:
        self.closes.append((reason, message))
        self.log.append(("close", reason, message))


def wait(pred: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Wait for ``pred`` while this process's greenlets (the frontends) run."""
    return wait_until(pred, timeout, interval=0.01, sleep=gevent.sleep)


def socket_on(node: Frontend, user: str = "u") -> Conn:
    """A socket on ``node``: in its index and, as a hello would leave it, in the registry."""
    conn = Conn(uuid.uuid4().hex, user, FakeWS(), 1000, meter=node.meter)
    node.hub.add(conn)
    assert node.registry.write("connect", WAIT_S, id=conn.id, frontend_id=node.id,
                               user_id=user)
    return conn


def unframe(data: bytes) -> tuple[int, bytes, bytes]:
    """Decode the first unmasked server frame by hand (RFC 6455 §5.2): (first byte,
    payload, what follows it)."""
    assert data[1] & 0x80 == 0, "server frames must not be masked"
    n = data[1] & 0x7F
    head = 2
    if n == 126:
        n, head = int.from_bytes(data[2:4], "big"), 4
    elif n == 127:
        n, head = int.from_bytes(data[2:10], "big"), 10
    return data[0], data[head:head + n], data[head + n:]


def frames(conn: Conn) -> list[dict[str, Any]]:
    """Every JSON frame written to a fake socket (unframed: the fakes get whole frames)."""
    out = []
    for chunk in conn.sock._sock.chunks:
        while chunk:
            _, payload, chunk = unframe(chunk)
            out.append(json.loads(payload))
    return out


def events(conn: Conn, name: str) -> list[dict[str, Any]]:
    return [f for f in frames(conn) if f.get("op") == "event" and f.get("event") == name]
