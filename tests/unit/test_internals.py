"""Pins the private parts of pinned libraries that Herald relies on, so an upgrade that
moves them fails here, loudly, instead of in production.

- simple-websocket (service/sockets/wsio.py, detached.py; service/delivery/guard.py): the
  connection's ``sock``, ``ws`` (wsproto), ``input_buffer``, ``connected``,
  ``receive_bytes``, ``close_reason``/``close_message`` and ``_handle_events``; the server
  taking a ``thread_class``; ``Base.close`` sending the close frame through ``self.sock``.
- gevent sockets (detached.py, guard.py): ``_sock``, the OS socket under the gevent one.
- py-amqp (service/bus/amqp.py): the transport's ``_read_buffer``.
"""

from __future__ import annotations

import _socket
import inspect

import gevent.socket
from simple_websocket import Server
from simple_websocket.ws import Base


def test_simple_websocket_internals() -> None:
    source = inspect.getsource(Base.__init__)
    for attr in ("self.sock", "self.input_buffer", "self.connected", "self.receive_bytes",
                 "self.ws", "self.close_reason", "self.close_message"):
        assert attr in source, attr
    assert callable(Base._handle_events)
    assert "self.sock.send" in inspect.getsource(Base.close)
    assert "thread_class" in inspect.signature(Server.__init__).parameters


def test_gevent_socket_wraps_an_os_socket() -> None:
    a, b = gevent.socket.socketpair()
    try:
        assert isinstance(a._sock, _socket.socket)  # the C socket under gevent's
        assert a._sock.gettimeout() == 0  # non-blocking: the fast path writes to it directly
        dup = a.dup()  # detached.py: a gevent socket of its own, with its own _sock
        assert isinstance(dup, gevent.socket.socket) and dup._sock.fileno() != a.fileno()
        dup.close()
    finally:
        a.close()
        b.close()


def test_py_amqp_transport_read_buffer() -> None:
    from amqp.transport import _AbstractTransport

    assert "_read_buffer" in inspect.getsource(_AbstractTransport)
