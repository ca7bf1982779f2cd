"""A TCP relay that can add a delay, for the one impairment this kernel cannot make itself.

The machine's kernel has no netem, so a link's delay is added here: each chunk read from
one side is written to the other ``delay_s`` later, in order (as a slow link would carry
it); packet loss is the kernel's own (``netns.Link.drop``, nftables in the host's
namespace), on the link under this relay. A closed side closes the other, so a broker
node that dies still looks dead to the frontend behind the relay.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

#: Bytes read at once from either side.
CHUNK = 65536


class Relay:
    """Listens on ``(address, port)`` and forwards each connection to ``target``."""

    def __init__(self, address: str, target: tuple[str, int]) -> None:
        self.target = target
        self.delay_s = 0.0
        self._server = socket.create_server((address, 0))
        self.address, self.port = self._server.getsockname()[:2]
        self._closed = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self._server.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.target, timeout=5)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            for s in (down, up):  # as the broker and its clients do: no Nagle delay
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks += [down, up]
            for src, dst in ((down, up), (up, down)):
                pipe: queue.Queue[tuple[float, bytes]] = queue.Queue()
                threading.Thread(target=self._read, args=(src, dst, pipe), daemon=True).start()
                threading.Thread(target=self._write, args=(dst, src, pipe), daemon=True).start()

    def _read(self, src: socket.socket, dst: socket.socket,
              pipe: queue.Queue[tuple[float, bytes]]) -> None:
        while True:
            try:
                data = src.recv(CHUNK)
            except OSError:
                data = b""
            pipe.put((time.monotonic() + self.delay_s, data))
            if not data:
                return

    def _write(self, dst: socket.socket, src: socket.socket,
               pipe: queue.Queue[tuple[float, bytes]]) -> None:
        while True:
            due, data = pipe.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if not data:
                    raise OSError("closed")
                dst.sendall(data)
            except OSError:
                for s in (dst, src):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                return

    def close(self) -> None:
        self._closed = True
        self._server.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
