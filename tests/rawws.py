"""A minimal raw-socket WebSocket client for tests that need to misbehave (stop reading)."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any


class RawClient:
    """Handshake, masked text frames out, unmasked frames in; reading only when asked."""

    def __init__(self, host: str, port: int, path: str = "/ws", rcvbuf: int | None = None,
                 headers: dict[str, str] | None = None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n"
                           + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
                           + "\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode(errors="replace")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.decode(errors="replace"))

    def send_json(self, obj: Any) -> None:
        self.send_frame(0x1, json.dumps(obj).encode())

    def send_ping(self, payload: bytes = b"") -> None:
        self.send_frame(0x9, payload)

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """One masked, final frame (text 0x1, ping 0x9, ...)."""
        self.sock.sendall(self.frame(opcode, payload))

    @staticmethod
    def frame(opcode: int, payload: bytes) -> bytes:
        """The bytes of one masked, final frame (to send several in one write)."""
        mask = os.urandom(4)
        n = len(payload)
        b0 = 0x80 | opcode
        if n < 126:
            header = struct.pack("!BB", b0, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", b0, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return header + mask + masked

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame."""
        b0, b1 = self._need(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._need(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._need(8))[0]
        return b0 & 0x0F, self._need(n)

    def read_json(self) -> dict[str, Any]:
        opcode, payload = self.read_frame()
        assert opcode == 1, opcode
        return json.loads(payload)  # type: ignore[no-any-return]

    def read_until_close(self, limit: int = 1_000_000) -> int | None:
        """Drain frames until the close frame; return its code (None if the TCP closed)."""
        for _ in range(limit):
            try:
                opcode, payload = self.read_frame()
            except (EOFError, OSError):
                return None
            if opcode == 8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        return None

    def collect_until_close(self, timeout: float, limit: int = 100_000
                            ) -> tuple[list[dict[str, Any]], int | None, str]:
        """Every text frame as JSON until the close frame: (frames, code, reason); pongs
        are skipped. ``timeout`` bounds each read."""
        self.sock.settimeout(timeout)
        got: list[dict[str, Any]] = []
        for _ in range(limit):
            try:
                opcode, payload = self.read_frame()
            except (EOFError, OSError) as exc:
                return got, None, f"no close frame: {exc!r}"
            if opcode == 1:
                got.append(json.loads(payload))
            elif opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return got, code, payload[2:].decode(errors="replace")
        return got, None, ""

    def close(self) -> None:
        self.sock.close()
