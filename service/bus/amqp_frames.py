"""Reads the broker's frames for the consumer loop (``amqp_consumer.py``): whole deliveries
are cut straight from the read buffer, every other frame goes through py-amqp.

This is the one module that touches py-amqp's internals (``tests/unit/test_internals.py``
pins them): the transport's ``_read_buffer`` and ``_quick_recv``, the connection's
``bytes_recv`` and ``blocking_read``. Why: py-amqp reads a frame with three ``recv`` calls
of exactly its header, payload and end octet, nine system calls for one message of three
frames, and builds a ``Message`` with its properties decoded for each; a lone message cost a
frontend about 250 µs of CPU (``bench.consume``: 283 µs, 190 of them over the floor of
being woken at all). Here one ``recv`` takes whatever the socket holds, and each complete
``basic.deliver`` (its method, content header and a single body frame) is sliced out with
``struct``; heartbeats are counted and skipped.
Anything else (a reply to a bind, a ``channel.close``, a body split over several frames) is
left at the head of the same buffer and read by py-amqp one frame at a time, so its state
machine sees every frame it is due, in order.
"""

from __future__ import annotations

import struct
from typing import Any

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
#: The method frame payload's first four bytes for ``basic.deliver`` (class 60, method 60).
DELIVER = b"\x00\x3c\x00\x3c"
#: Bytes one ``recv`` asks for: a socket's backlog of small messages in one system call.
RECV_BYTES = 65536
#: Frame header: type, channel, payload size; one octet ``FRAME_END`` follows the payload.
_HEAD = struct.Struct(">BHI")
#: Content header: class, weight, body size (then property flags, which are not read).
_CONTENT = struct.Struct(">HHQ")
_HEAD_LEN = _HEAD.size

#: Why ``cut`` stopped.
MORE = 0   # the buffer ends (or ends in a part of a frame): wait for the socket
OTHER = 1  # a whole frame py-amqp must read comes next
FULL = 2   # ``limit`` bodies were taken


def _whole(buf: bytes, pos: int, n: int) -> tuple[int, int, int, int] | None:
    """The frame at ``pos`` when all of it is in ``buf``: its type, channel, and where its
    payload starts and ends (the end octet's offset); None when it is not all here."""
    if n - pos < _HEAD_LEN:
        return None
    ftype, channel, size = _HEAD.unpack_from(buf, pos)
    end = pos + _HEAD_LEN + size
    return None if end >= n else (ftype, channel, pos + _HEAD_LEN, end)


def cut(buf: bytes, out: list[bytes], limit: int) -> tuple[int, int, int]:
    """Appends the body of each whole delivery at the head of ``buf`` to ``out`` (until
    ``out`` holds ``limit``), skipping heartbeats. Returns the offset of the first byte not
    consumed, the number of frames consumed, and why it stopped (``MORE``/``OTHER``/``FULL``).

    A delivery is taken only when all of its frames are here and well formed; otherwise it
    is left whole for py-amqp, which reports what is wrong with it."""
    n = len(buf)
    pos = frames = 0
    while len(out) < limit:
        method = _whole(buf, pos, n)
        if method is None:
            return pos, frames, MORE
        ftype, channel, start, end = method
        if buf[end] != FRAME_END:
            return pos, frames, OTHER
        if ftype == FRAME_HEARTBEAT:
            pos, frames = end + 1, frames + 1
            continue
        if ftype != FRAME_METHOD or buf[start:start + 4] != DELIVER:
            return pos, frames, OTHER
        header = _whole(buf, end + 1, n)
        if header is None:
            return pos, frames, MORE
        htype, hchannel, hstart, hend = header
        if (htype != FRAME_HEADER or hchannel != channel or buf[hend] != FRAME_END
                or hend - hstart < _CONTENT.size):
            return pos, frames, OTHER
        body_size: int = _CONTENT.unpack_from(buf, hstart)[2]
        if body_size == 0:  # no body frame follows
            out.append(b"")
            pos, frames = hend + 1, frames + 2
            continue
        body = _whole(buf, hend + 1, n)
        if body is None:
            return pos, frames, MORE
        btype, bchannel, bstart, bend = body
        if (btype != FRAME_BODY or bchannel != channel or bend - bstart != body_size
                or buf[bend] != FRAME_END):
            return pos, frames, OTHER  # a body over several frames, or a broken one
        out.append(buf[bstart:bend])
        pos, frames = bend + 1, frames + 3
    return pos, frames, FULL


class FrameReader:
    """The consumer's reads on one kombu ``Connection`` (py-amqp transport)."""

    def __init__(self, conn: Any) -> None:
        self.amqp = conn.connection  # amqp.Connection
        self.transport = self.amqp.transport

    @property
    def sock(self) -> Any:
        return self.transport.sock

    def fill(self) -> bool:
        """One ``recv`` of what the (readable) socket holds, onto the buffer; True (for the
        caller's ``and``)."""
        chunk = self.transport._quick_recv(RECV_BYTES)
        if not chunk:
            raise OSError("the broker closed the connection")
        self.transport._read_buffer += chunk
        return True

    def read(self, out: list[bytes], limit: int, timeout: float) -> bool:
        """Takes every whole frame buffered: delivery bodies onto ``out`` (at most up to
        ``limit``), other frames through py-amqp, whose callbacks run as they would.
        True when it stopped at ``limit`` (whole frames may be left), False when what is
        left is at most a part of one: only then is a wait on the socket right."""
        transport, amqp = self.transport, self.amqp
        while len(out) < limit:
            buf = transport._read_buffer
            pos, frames, why = cut(buf, out, limit)
            if frames:
                transport._read_buffer = buf[pos:]
                # py-amqp counts every frame it reads; heartbeat_check calls the broker
                # dead when the count stands still for two heartbeats
                amqp.bytes_recv += frames
            if why != OTHER:
                return why == FULL
            # the frame is whole in the buffer: this reads no socket
            amqp.blocking_read(timeout)
        return True
