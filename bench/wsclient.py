"""The load generator's socket layer: picows on uvloop, both protocols, a counting fast path.

A :class:`Socket` is a picows listener with two modes. While it opens (and in the churn
scenario) every text frame is copied to an inbox read with :meth:`Socket.recv`, as the
request/response handshakes need. Once open, :meth:`Socket.count` switches it to counting
in the frame callback itself: no task, no queue, no copy of the payload; the frame is
decoded straight from picows's receive buffer with msgspec into a small struct holding
only what the bench needs (Herald: ``op``, ``event``, ``ts``; Socket.IO: the event name
and ``ts`` of its data), and the latency is ``time.time()`` at the callback minus the
publish time the emitter stamped. Engine.IO pings (``2``) are answered with ``3`` in both
modes; WebSocket pings are answered by picows itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    ws_connect,
)

#: Bound of the WebSocket open (TCP connect + HTTP upgrade), s (websockets' open_timeout).
OPEN_TIMEOUT_S = 60.0
#: Bound of the closing handshake (websockets' close_timeout), s.
CLOSE_TIMEOUT_S = 2.0
#: picows's per-socket receive buffer starts this big and grows when a read needs more.
READ_BUFFER = 4096
MAX_FRAME = 2**31 - 1  # no limit in practice (websockets' max_size=None)
#: Linux's socket option (include/uapi/linux/in.h), in Python's socket module from 3.12.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

TEXT = WSMsgType.TEXT
CLOSE = WSMsgType.CLOSE
EIO_PING = 0x32  # "2"
SIO_EVENT = b"42"
_now = time.time


@dataclass
class Stats:
    target: int
    connected: int = 0
    failed: int = 0
    ended: int = 0
    received: int = 0
    ops: int = 0
    lat: array[float] = field(default_factory=lambda: array("d"))
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def opened(self, ok: bool) -> None:
        if ok:
            self.connected += 1
        else:
            self.failed += 1
        if self.connected + self.failed == self.target:
            self.ready.set()

    def end(self) -> None:
        self.ended += 1
        if self.ended == self.connected:
            self.done.set()


# --- what the counting path decodes (unknown fields are skipped, not built) --------------------

class HeraldFrame(msgspec.Struct, gc=False):
    op: str = ""
    event: str = ""
    ts: float = 0.0


class SioData(msgspec.Struct, gc=False):
    ts: float = 0.0


class SioEvent(msgspec.Struct, array_like=True, gc=False):
    """``["tick", {...}]`` after the ``42`` prefix; any further arguments are ignored."""

    event: str
    data: SioData | None = None


_herald = msgspec.json.Decoder(HeraldFrame)
_sio = msgspec.json.Decoder(SioEvent)


class Socket(WSListener):
    """One client socket; see the module docstring for its two modes."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: WSTransport | None = None
        self.inbox: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.stats: Stats | None = None  # set: counting mode
        self.sio = False

    # picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        stats = self.stats
        if stats is not None and frame.msg_type is TEXT:
            now = _now()
            payload = frame.get_payload_as_memoryview()
            if self.sio:
                if len(payload) == 1 and payload[0] == EIO_PING:
                    transport.send(TEXT, b"3")
                elif payload[:2] == SIO_EVENT:
                    ev = _sio.decode(payload[2:])
                    if ev.event == "end":
                        stats.end()
                    elif ev.data is not None:
                        stats.received += 1
                        stats.lat.append(now - ev.data.ts)
                return
            msg = _herald.decode(payload)
            if msg.op == "event":
                if msg.event == "end":
                    stats.end()
                else:
                    stats.received += 1
                    stats.lat.append(now - msg.ts)
            return
        msg_type = frame.msg_type
        if msg_type is TEXT:
            payload_bytes = frame.get_payload_as_bytes()
            if self.sio and payload_bytes == b"2":
                transport.send(TEXT, b"3")
            else:
                self.inbox.append(payload_bytes)
                self._wake()
        elif msg_type is CLOSE:  # echo the peer's close (no-op if we sent ours) and hang up
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self._wake()

    # the coroutine side

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.send(TEXT, payload)

    async def recv(self) -> bytes:
        """The next text frame (its payload); ConnectionError once the socket is closed."""
        while not self.inbox:
            if self.closed:
                raise ConnectionError("socket closed")
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.inbox.popleft()

    def count(self, stats: Stats, sio: bool) -> None:
        """Switch to counting mode: deliveries go to ``stats``, the inbox is dropped."""
        self.sio = sio
        self.stats = stats
        self.inbox.clear()

    async def close(self) -> None:
        """Closing handshake (bounded by CLOSE_TIMEOUT_S), then the TCP connection."""
        transport = self.transport
        if transport is None or self.closed:
            return
        transport.send_close(WSCloseCode.OK)
        with contextlib.suppress(Exception):  # TimeoutError, or what ended the connection
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await transport.wait_disconnected()
        transport.disconnect()


def _new_socket(request: WSUpgradeRequest, response: WSUpgradeResponse) -> Socket:
    return Socket()


def bound_to(source: str) -> Callable[[Any], socket.socket]:
    """picows's socket factory for sockets connecting from ``source``: bound to the address
    only (IP_BIND_ADDRESS_NO_PORT), so the port is chosen by connect() per destination.
    A bind() that picks the port itself searches the even half of the port range for one
    free on every address, which gets slower with every socket held (the connect storm of
    100,000 sockets spent more than half its CPU in the kernel that way)."""
    def factory(_url: Any) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock
    return factory


async def open_socket(url: str, source: str | None = None) -> Socket:
    """Open a WebSocket (no client pings, no compression), bounded by OPEN_TIMEOUT_S;
    ``source``: the local address to connect from (each has its own ephemeral ports).

    On uvloop's own transports: picows would pick aiofastnet's when that is importable (it
    comes with picows but is not pinned here); measured on this bench it made no difference.
    """
    async with asyncio.timeout(OPEN_TIMEOUT_S):
        _, listener = await ws_connect(_new_socket, url, websocket_handshake_timeout=None,
                                       max_frame_size=MAX_FRAME,
                                       read_buffer_init_size=READ_BUFFER,
                                       use_aiofastnet=False,
                                       socket_factory=bound_to(source) if source else None)
    assert isinstance(listener, Socket)
    return listener
