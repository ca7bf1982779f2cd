"""service.delivery.wsock: what an established socket keeps (and lets go of) between frames.

A plain socket's wsproto frame layer is made when bytes arrive and dropped once they are
all handled; a partial frame, a fragmented message or a close keeps it. Whatever the reads
look like, the messages, pongs and close replies are those of a socket that kept it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import Any

import gevent.socket
import pytest
from simple_websocket import ConnectionClosed
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Event, Message, Ping, TextMessage

from service.delivery.wsock import HeraldServer, InlineReader, NoWaiter, drop_handshake, feed

MAX_MESSAGE = 1024


@pytest.fixture
def pair() -> Iterator[tuple[Any, Any]]:
    """A server socket accepted as a plain upgrade, and the raw client end."""
    server, client = gevent.socket.socketpair()
    environ = {"gunicorn.socket": server, "REQUEST_METHOD": "GET", "HTTP_HOST": "x",
               "HTTP_UPGRADE": "websocket", "HTTP_CONNECTION": "Upgrade",
               "HTTP_SEC_WEBSOCKET_VERSION": "13",
               "HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(os.urandom(16)).decode()}
    ws = HeraldServer(environ, max_message_size=MAX_MESSAGE, thread_class=InlineReader,
                      event_class=NoWaiter)
    assert b" 101 " in client.recv(4096)
    yield ws, client
    server.close()
    client.close()


def wire(*events: Event) -> bytes:
    """What a client sends for these events (masked frames)."""
    conn = Connection(ConnectionType.CLIENT)
    return b"".join(conn.send(e) for e in events)


def test_an_established_socket_keeps_no_handshake_and_no_frame_layer(pair: Any) -> None:
    ws, _ = pair
    drop_handshake(ws)
    assert ws.environ is None and ws.thread is None
    assert ws._frames is None  # nothing read yet: nothing kept


def test_the_frame_layer_goes_between_frames_and_stays_inside_one(pair: Any) -> None:
    ws, _ = pair
    data = wire(TextMessage("first"), TextMessage("second"))
    cut = len(data) // 2 + 3  # inside the second frame
    feed(ws, data[:cut])
    assert ws.input_buffer == ["first"] and ws._frames is not None  # a partial frame
    feed(ws, data[cut:])
    assert ws.input_buffer == ["first", "second"] and ws._frames is None
    feed(ws, wire(TextMessage("third")))  # a new frame layer reads on as the old one would
    assert ws.input_buffer[-1] == "third" and ws._frames is None


def test_a_fragmented_message_keeps_the_frame_layer_until_its_last_frame(pair: Any) -> None:
    ws, _ = pair
    conn = Connection(ConnectionType.CLIENT)
    feed(ws, conn.send(Message("he", message_finished=False)))
    assert ws.input_buffer == [] and ws._frames is not None
    feed(ws, conn.send(Message("llo", message_finished=True)))
    assert ws.input_buffer == ["hello"] and ws._frames is None


def test_pings_are_answered_and_a_close_is_answered_and_kept(pair: Any) -> None:
    ws, client = pair
    feed(ws, wire(Ping(b"p1")))
    assert ws._frames is None
    pong = client.recv(64)
    assert pong[0] == 0x8A and pong.endswith(b"p1")  # FIN + pong, unmasked
    feed(ws, wire(CloseConnection(code=1000, reason="bye")))
    assert not ws.connected and ws._frames is not None and ws.close_reason == 1000
    assert client.recv(64)[0] == 0x88  # the close reply


def test_the_size_limit_holds_across_dropped_frame_layers(pair: Any) -> None:
    ws, client = pair
    feed(ws, wire(TextMessage("x" * 10)))
    assert ws._frames is None
    feed(ws, wire(TextMessage("y" * (MAX_MESSAGE + 1))))
    assert not ws.connected
    assert client.recv(64)[:4] == b"\x88\x14\x03\xf1"  # close 1009, "Message is too big"


def test_a_server_close_after_a_dropped_frame_layer_is_a_proper_close(pair: Any) -> None:
    ws, client = pair
    feed(ws, wire(TextMessage("hi")))
    ws.close(reason=4401, message="token expired")
    frame = client.recv(64)
    assert frame[0] == 0x88 and frame[2:4] == (4401).to_bytes(2, "big")
    with pytest.raises(ConnectionClosed):
        ws.close()


def test_simple_websocket_s_own_receive_is_refused_loudly(pair: Any) -> None:
    ws, _ = pair
    with pytest.raises(RuntimeError, match=r"wsock\.receive"):
        ws.receive(timeout=0)
