"""Pins the private parts of pinned libraries that Herald relies on, so an upgrade that
moves them fails here, loudly, instead of in production; and checks that each library's
internals are touched from exactly one module.

- simple-websocket, wsproto and gevent sockets: only ``service/delivery/wsock.py`` (the
  connection's ``sock``, ``ws`` (wsproto), ``input_buffer``, ``connected``,
  ``receive_bytes``, ``close_reason``/``close_message``, ``mode``, ``environ``,
  ``thread``, ``incoming_message`` and ``_handle_events``; the server taking a
  ``thread_class`` and an ``event_class``; ``Base.close`` sending the close frame through
  ``self.sock``; wsproto's ``handshake`` and the state that says a connection is between
  frames; the gevent socket's ``_sock`` and ``_read_event``).
- py-amqp: only ``service/bus/amqp_frames.py`` (the transport's ``_read_buffer``,
  ``_quick_recv`` and ``sock``; the connection's ``bytes_recv`` and ``blocking_read``).
- gunicorn: ``service/http/gunicorn_speed.py`` patches ``Response.write`` (headers and a
  whole body in one write) and ``util.http_date`` (cached a second); besides,
  ``service/sockets/wsio.py`` relies on one behaviour (a response that raises
  ``StopIteration`` ends the request with nothing written).
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
    assert "event_class" in inspect.signature(Server.__init__).parameters
    assert "self.environ = environ" in inspect.getsource(Server.__init__)
    assert "self.incoming_message = None" in source
    # the event is only waited on by simple-websocket's own receive(), which Herald never
    # calls (wsock.NoWaiter refuses it); the thread object is not used once started
    assert "self.event.wait" in inspect.getsource(Base.receive)
    assert "self.thread" not in inspect.getsource(Base).split("self.thread.start()", 1)[1]


def test_wsproto_state_between_frames() -> None:
    """wsock._between_frames reads these to drop an idle socket's frame layer."""
    from wsproto.connection import Connection, ConnectionState, ConnectionType
    from wsproto.events import Message

    conn = Connection(ConnectionType.SERVER)
    proto = conn._proto
    assert conn._state is ConnectionState.OPEN and len(conn._events) == 0
    assert proto._frame_decoder.header is None and len(proto._frame_decoder.buffer) == 0
    assert proto._message_decoder.opcode is None
    client = Connection(ConnectionType.CLIENT)
    frame = client.send(Message("abc", message_finished=False))
    conn.receive_data(frame[:3])  # a partial header and more: something is held
    list(conn.events())
    assert proto._frame_decoder.header is not None or len(proto._frame_decoder.buffer) > 0
    conn.receive_data(frame[3:])
    list(conn.events())  # a whole frame of an unfinished message
    assert proto._message_decoder.opcode is not None
    assert proto._frame_decoder.header is None and len(proto._frame_decoder.buffer) == 0


def test_gevent_socket_wraps_an_os_socket() -> None:
    a, b = gevent.socket.socketpair()
    try:
        assert isinstance(a._sock, _socket.socket)  # the C socket under gevent's
        assert a._sock.gettimeout() == 0  # non-blocking: the fast path writes to it directly
        dup = a.dup()  # detached.py: a gevent socket of its own, with its own _sock
        assert isinstance(dup, gevent.socket.socket) and dup._sock.fileno() != a.fileno()
        # detached.py waits on the socket's own read watcher
        assert dup._read_event.fd == dup.fileno() and dup._read_event.events & 1  # READ
        dup.close()
    finally:
        a.close()
        b.close()


def test_py_amqp_reads_frames_through_the_buffer_the_frame_reader_fills() -> None:
    """amqp_frames.FrameReader appends to ``_read_buffer`` with ``_quick_recv`` and slices
    deliveries off its head; py-amqp must read what is left from there first, count each
    frame in ``bytes_recv`` (its heartbeat check) and read one frame per ``blocking_read``."""
    from amqp.connection import Connection
    from amqp.method_framing import frame_handler
    from amqp.transport import TCPTransport, _AbstractTransport

    read = inspect.getsource(TCPTransport._read)
    assert "rbuf = self._read_buffer" in read and "self._read_buffer = rbuf[:n], rbuf[n:]" in read
    assert "self._quick_recv = self.sock.recv" in inspect.getsource(TCPTransport)
    assert "read(7, True)" in inspect.getsource(_AbstractTransport.read_frame)
    assert "connection.bytes_recv += 1" in inspect.getsource(frame_handler)
    assert "self.bytes_recv" in inspect.getsource(Connection.heartbeat_tick)
    assert inspect.getsource(Connection.blocking_read).count("read_frame()") == 1


def test_gunicorn_ends_a_request_whose_response_raises_stop_iteration() -> None:
    from gunicorn.workers.base_async import AsyncWorker  # the gevent worker's base

    assert "except StopIteration" in inspect.getsource(AsyncWorker.handle_request)


class _Sock:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))


def _gunicorn_response(method: str, status: str, headers: list[tuple[str, str]],
                       body: list[bytes]) -> list[bytes]:
    """What gunicorn writes for one response to an HTTP/1.1 request (keep-alive)."""
    from gunicorn.config import Config
    from gunicorn.http.message import Request
    from gunicorn.http.unreader import IterUnreader
    from gunicorn.http.wsgi import Response

    raw = f"{method} /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    req = Request(Config(), IterUnreader([raw.encode()]), ("127.0.0.1", 1))
    sock = _Sock()
    resp = Response(req, sock, Config())
    resp.start_response(status, headers)
    for chunk in body:
        resp.write(chunk)
    resp.close()
    return sock.writes


def test_gunicorn_speed_writes_the_same_bytes_in_fewer_writes() -> None:
    from gunicorn import util
    from gunicorn.http import wsgi

    from service.http import gunicorn_speed

    cases = [  # (method, status, headers, body, writes once patched)
        ("POST", "202 Accepted", [("Content-Type", "application/json"),
                                  ("Content-Length", "9")], [b'{"id":1}\n'], 1),
        ("GET", "200 OK", [("Content-Length", "4")], [b"ab", b"cd"], 3),  # not whole: as is
        ("GET", "200 OK", [], [b"streamed", b"on"], None),  # chunked: gunicorn's own
        ("HEAD", "200 OK", [("Content-Length", "4")], [b"abcd"], None),  # no body sent
        ("GET", "204 No Content", [], [], None),
    ]
    originals = (wsgi.Response.write, util.http_date)
    try:
        before = [_gunicorn_response(m, st, h, b) for m, st, h, b, _ in cases]
        gunicorn_speed.install()
        gunicorn_speed.install()  # idempotent
        after = [_gunicorn_response(m, st, h, b) for m, st, h, b, _ in cases]
    finally:
        wsgi.Response.write, util.http_date = originals
        del wsgi.Response._herald_speed
    date = re.compile(rb"Date: [^\r]*\r\n")
    for (_, _, _, _, writes), old, new in zip(cases, before, after, strict=True):
        assert date.sub(b"", b"".join(new)) == date.sub(b"", b"".join(old))
        assert len(new) == (writes if writes is not None else len(old))
    assert len(before[0]) == 2  # what gunicorn itself does: headers, then the body
    assert b"Date: " in b"".join(after[0])


def test_simple_websocket_mode_names_gunicorn() -> None:
    assert "self.mode = 'gunicorn'" in inspect.getsource(Server.__init__)


#: Where each library's internals may be touched, and what touching them looks like.
INTERNALS = {
    "service/delivery/wsock.py": re.compile(
        r"\._handle_events|\.input_buffer|\._sock\b|\.ws\.receive_data|simple_websocket\.ws"
        r"|from wsproto|\.handshake = |ws, \"close_reason\"|\._read_event|\._frame_decoder"
        r"|\._message_decoder|\._proto\b|\.incoming_message"),
    "service/bus/amqp_frames.py": re.compile(
        r"_read_buffer|transport\.sock|_quick_recv|bytes_recv|blocking_read"),
    "service/sockets/wsio.py": re.compile(r"raise StopIteration"),
    "service/http/gunicorn_speed.py": re.compile(r"gunicorn\.http|from gunicorn import util"),
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
