"""service.bus.amqp_frames.cut: whole deliveries sliced from the read buffer, the rest
left (whole) for py-amqp. The frames are built here to AMQP 0-9-1's layout; the bus's
integration tests send real ones through RabbitMQ."""

from __future__ import annotations

import struct

from service.bus.amqp_frames import FULL, MORE, OTHER, FrameReader, cut

HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + b"\xce"


def deliver(body: bytes, channel: int = 1, *, body_frames: int = 1,
            header_channel: int | None = None) -> bytes:
    """basic.deliver as RabbitMQ sends it: method, content header, body frame(s)."""
    tag = b"amq.ctag-x"
    method = (b"\x00\x3c\x00\x3c" + bytes([len(tag)]) + tag + struct.pack(">Q", 7) + b"\x00"
              + b"\x05herex" + b"\x00")
    ctype = b"application/x-herald"
    header = struct.pack(">HHQH", 60, 0, len(body), 0x8000) + bytes([len(ctype)]) + ctype
    out = frame(1, channel, method) + frame(2, header_channel or channel, header)
    step = max(1, -(-len(body) // body_frames))
    for i in range(0, len(body), step):
        out += frame(3, channel, body[i:i + step])
    return out


def test_whole_deliveries_and_heartbeats_are_taken_in_order() -> None:
    buf = deliver(b"one") + HEARTBEAT + deliver(b"two") + deliver(b"")
    out: list[bytes] = []
    pos, frames, why = cut(buf, out, 256)
    assert out == [b"one", b"two", b""]
    assert (pos, frames, why) == (len(buf), 3 + 1 + 3 + 2, MORE)


def test_a_partial_delivery_is_left_whole() -> None:
    whole = deliver(b"x" * 100)
    for size in range(1, len(whole)):
        out: list[bytes] = []
        assert cut(deliver(b"a") + whole[:size], out, 256)[::2] == (len(deliver(b"a")), MORE)
        assert out == [b"a"]


def test_other_frames_stop_the_cut_at_their_start() -> None:
    bind_ok = frame(1, 1, b"\x00\x32\x00\x15")  # queue.bind-ok
    first = deliver(b"a")
    for rest in (bind_ok, deliver(b"big", body_frames=3), deliver(b"b", header_channel=2),
                 deliver(b"d")[:-1] + b"\x00"):  # a frame end that is not 0xCE
        out: list[bytes] = []
        assert cut(first + rest + deliver(b"c"), out, 256) == (len(first), 3, OTHER)
        assert out == [b"a"]


def test_a_body_over_several_frames_is_left_to_py_amqp() -> None:
    out: list[bytes] = []
    assert cut(deliver(b"0123456789", body_frames=2), out, 256) == (0, 0, OTHER)
    assert out == []


def test_the_limit_stops_the_cut_between_deliveries() -> None:
    buf = b"".join(deliver(b"m%d" % i) for i in range(5))
    out: list[bytes] = [b"already"]
    pos, frames, why = cut(buf, out, 3)
    assert (out, why, frames) == ([b"already", b"m0", b"m1"], FULL, 6)
    assert buf[pos:] == b"".join(deliver(b"m%d" % i) for i in range(2, 5))


class _Transport:
    def __init__(self, chunks: list[bytes]) -> None:
        self._read_buffer = b""
        self.chunks = chunks
        self.sock = None

    def _quick_recv(self, _n: int) -> bytes:
        return self.chunks.pop(0)


class _Amqp:
    """py-amqp's connection, as far as FrameReader uses it: one whole frame per
    blocking_read, taken off the head of the buffer."""

    def __init__(self, transport: _Transport) -> None:
        self.transport = transport
        self.bytes_recv = 0
        self.read: list[bytes] = []

    def blocking_read(self, _timeout: float) -> None:
        buf = self.transport._read_buffer
        size = struct.unpack_from(">I", buf, 3)[0]
        self.read.append(buf[:8 + size])
        self.transport._read_buffer = buf[8 + size:]
        self.bytes_recv += 1


def _reader(chunks: list[bytes]) -> tuple[FrameReader, _Amqp]:
    amqp = _Amqp(_Transport(chunks))
    conn = type("Conn", (), {"connection": amqp})()
    return FrameReader(conn), amqp


def test_the_reader_waits_for_the_socket_only_when_no_whole_frame_is_left() -> None:
    """A delivery cut between its method and its header (a recv boundary) must send the
    loop back to the socket (False), and a batch at its limit must not (True): the first
    was a busy loop that never read the socket again."""
    one, two = deliver(b"one"), deliver(b"two")
    split = len(frame(1, 1, b"")) + 40  # inside the content header
    reader, amqp = _reader([one + two[:split], two[split:] + HEARTBEAT])
    out: list[bytes] = []
    assert reader.fill() and reader.read(out, 256, 1.0) is False
    assert out == [b"one"] and amqp.bytes_recv == 3
    assert reader.fill() and reader.read(out, 256, 1.0) is False
    assert out == [b"one", b"two"] and amqp.bytes_recv == 7
    assert amqp.transport._read_buffer == b""

    reader, amqp = _reader([b"".join(deliver(b"m%d" % i) for i in range(3))])
    out = []
    assert reader.fill() and reader.read(out, 2, 1.0) is True
    assert reader.read(out, 4, 1.0) is False and out == [b"m0", b"m1", b"m2"]


def test_frames_the_cut_leaves_go_through_py_amqp_in_order() -> None:
    bind_ok = frame(1, 1, b"\x00\x32\x00\x15")
    split_body = deliver(b"0123456789", body_frames=2)
    reader, amqp = _reader([deliver(b"a") + bind_ok + split_body + deliver(b"b")])
    out: list[bytes] = []
    assert reader.fill() and reader.read(out, 256, 1.0) is False
    assert out == [b"a", b"b"]
    assert b"".join(amqp.read) == bind_ok + split_body  # one frame per call, in order
    assert amqp.bytes_recv == 3 + 1 + 4 + 3
