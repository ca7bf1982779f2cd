"""A Server-Sent Events connection: a ``Conn`` whose frames leave as ``text/event-stream``.

The hub builds one WebSocket frame per message; ``SseConn`` turns each into an SSE event
(``event:`` name, ``id:`` log id of a durable event, ``data:`` the frame's JSON) as it is
queued, so the outbox, its limits (``HERALD_OUTBOX_LIMIT``/``_BYTES``), hold/release and
the single writer work exactly as for a WebSocket. The writer "sends" into a ``Pipe``:
a hand-off (no buffer of its own) to the WSGI response generator, which yields it to the
server; so a reader that stops reading backs the writer up, the outbox fills, and the
connection is dropped (1013) instead of buffered forever.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import gevent
import msgspec
from gevent.queue import Channel

from service.core.envelope import encode
from service.core.metrics import Meter
from service.delivery.conn import CLOSE_FLUSH_TIMEOUT_S, DEFAULT_OUTBOX_BYTES, Conn

#: The end of a stream, handed through the pipe after the close event.
END = b""
_LINES = re.compile(rb"\r\n|\r|\n")


class _Head(msgspec.Struct):
    """The fields of a server frame that name its SSE event."""

    op: str = ""
    event: str | None = None
    id: int | None = None


_head = msgspec.json.Decoder(_Head)


def ws_payloads(chunk: bytes) -> list[bytes]:
    """The payloads of the unmasked server text frames joined in ``chunk``."""
    out, i, n = [], 0, len(chunk)
    while i + 2 <= n:
        size = chunk[i + 1] & 0x7F
        i += 2
        if size == 126:
            size, i = int.from_bytes(chunk[i:i + 2], "big"), i + 2
        elif size == 127:
            size, i = int.from_bytes(chunk[i:i + 8], "big"), i + 8
        out.append(chunk[i:i + size])
        i += size
    return out


def sse_event(payload: bytes, event_id: int | None = None) -> bytes:
    """One SSE event for a server frame's JSON: ``event:`` is an event frame's name or
    another frame's op (``welcome``, ``close``, …), ``id:`` a durable event's log id (or
    ``event_id``), one ``data:`` line per line of the JSON (a publisher's own formatting
    may hold newlines; the client joins the lines again with ``\\n``)."""
    head = _head.decode(payload)
    name = head.event if head.op == "event" and head.event else head.op or "message"
    parts = [b"event: ", name.encode(), b"\n"]
    ident = head.id if head.op == "event" else event_id
    if ident is not None:
        parts += [b"id: ", str(ident).encode(), b"\n"]
    for line in _LINES.split(payload):
        parts += [b"data: ", line, b"\n"]
    parts.append(b"\n")
    return b"".join(parts)


class SseFormat:
    """WebSocket frames to SSE bytes, with the last conversion kept: one fan-out hands the
    same frame object to every SSE connection, and it is converted once."""

    def __init__(self) -> None:
        self._last: tuple[bytes, bytes] | None = None

    def __call__(self, chunk: bytes) -> bytes:
        last = self._last
        if last is not None and last[0] is chunk:
            return last[1]
        out = b"".join(sse_event(p) for p in ws_payloads(chunk))
        self._last = (chunk, out)
        return out


class _PipeSock:
    """What the Conn's writer writes to: each chunk waits until the stream takes it."""

    def __init__(self, channel: Channel[bytes]) -> None:
        self._channel = channel
        self.ended = False

    def sendall(self, data: bytes) -> None:
        if self.ended:
            raise OSError("the SSE stream has ended")
        self._channel.put(data)


class Pipe:
    """The ``ws`` of an SSE connection: writes and the close go to the response stream."""

    def __init__(self) -> None:
        self.channel: Channel[bytes] = Channel()
        # Conn puts a lock (GuardedSocket) around ``sock``: the pipe keeps its own handle
        self.out = self.sock = _PipeSock(self.channel)

    def close(self, reason: int, message: str = "") -> None:
        """The writer's close: a ``close`` event (code and reason), then the end."""
        if not self.out.ended:
            self.channel.put(sse_event(encode({"op": "close", "code": reason,
                                               "reason": message})))
            self.channel.put(END)

    def get(self, timeout_s: float) -> bytes | None:
        """The next chunk for the response (END at the close), None after ``timeout_s``."""
        try:
            chunk: bytes = self.channel.get(timeout=timeout_s)
        except gevent.queue.Empty:
            return None
        return chunk

    def end(self) -> None:
        """The response is over (client gone or closed): writes fail from now on."""
        self.out.ended = True


class SseConn(Conn):
    """A ``Conn`` whose queued frames are SSE events and whose socket is a ``Pipe``.

    ``drop``: called when a close did not get through in time (a reader that stopped
    reading holds the stream's write): it cuts the client's socket."""

    __slots__ = ("_drop", "_format")

    def __init__(self, conn_id: str, user_id: str, pipe: Pipe, outbox_limit: int,
                 fmt: SseFormat, drop: Callable[[], None] | None = None,
                 on_overflow: Callable[[Conn], None] | None = None,
                 meter: Meter | None = None,
                 outbox_bytes: int = DEFAULT_OUTBOX_BYTES) -> None:
        super().__init__(conn_id, user_id, pipe, outbox_limit, on_overflow=on_overflow,
                         meter=meter, outbox_bytes=outbox_bytes)
        self._format = fmt
        self._drop = drop

    def _push(self, data: bytes, stamps: list[float], delayed: bool = False) -> bool:
        return super()._push(self._format(data), stamps, delayed)

    def push_sse(self, data: bytes) -> None:
        """Queue bytes that are SSE already (the welcome, with its resume id)."""
        if Conn._push(self, data, [0.0]):
            self._account([0.0])

    def close(self, code: int, reason: str = "") -> None:
        first = self.close_code is None
        super().close(code, reason)
        if first and self._drop is not None:
            gevent.spawn_later(CLOSE_FLUSH_TIMEOUT_S, self._drop_if_stuck)

    def _drop_if_stuck(self) -> None:
        if not self.closed and self._drop is not None:
            self._drop()
