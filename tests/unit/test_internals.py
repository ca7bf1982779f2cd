"""Pins the private parts of pinned libraries that Herald relies on, so an upgrade that
moves them fails here, loudly, instead of in production; and checks that each library's
internals are touched from exactly one module.

- simple-websocket, wsproto and gevent sockets: only ``service/delivery/wsock.py`` (the
  connection's ``sock``, ``ws`` (wsproto), ``input_buffer``, ``connected``,
  ``receive_bytes``, ``close_reason``/``close_message``, ``mode`` and ``_handle_events``;
  the server taking a ``thread_class``; ``Base.close`` sending the close frame through
  ``self.sock``; wsproto's ``handshake``; the gevent socket's ``_sock``).
- py-amqp: only ``service/bus/amqp_consumer.py`` (the transport's ``_read_buffer`` and ``sock``).
- gunicorn: only ``service/sockets/wsio.py`` (a response that raises ``StopIteration``
  ends the request with nothing written).
"""

from __future__ import annotations

import _socket
import inspect
import re

import gevent.socket
from simple_websocket import Server
from simple_websocket.ws import Base

from tests.support import ROOT


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


def test_gunicorn_ends_a_request_whose_response_raises_stop_iteration() -> None:
    from gunicorn.workers.base_async import AsyncWorker  # the gevent worker's base

    assert "except StopIteration" in inspect.getsource(AsyncWorker.handle_request)


def test_simple_websocket_mode_names_gunicorn() -> None:
    assert "self.mode = 'gunicorn'" in inspect.getsource(Server.__init__)


#: Where each library's internals may be touched, and what touching them looks like.
INTERNALS = {
    "service/delivery/wsock.py": re.compile(
        r"\._handle_events|\.input_buffer|\._sock\b|\.ws\.receive_data|simple_websocket\.ws"
        r"|from wsproto|\.handshake = |ws, \"close_reason\""),
    "service/bus/amqp_consumer.py": re.compile(r"_read_buffer|transport\.sock"),
    "service/sockets/wsio.py": re.compile(r"raise StopIteration"),
}


def test_each_library_s_internals_are_touched_in_one_module() -> None:
    strays = []
    for path in sorted([*ROOT.glob("service/**/*.py"), *ROOT.glob("workers/*.py")]):
        rel = str(path.relative_to(ROOT))
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
        for home, pattern in INTERNALS.items():
            if rel != home and (hit := pattern.search(code)):
                strays.append((rel, hit.group(0), home))
    assert strays == [], strays
