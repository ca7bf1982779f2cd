"""An established socket read by a libev watcher instead of a parked greenlet.

Until ``welcome`` a socket is served by its request greenlet (gunicorn's handler, the WSGI
call, the session). Afterwards that greenlet would sit in ``recv`` for the socket's whole
life, keeping its saved stack and the request's state (environ, parser, response): about a
third of an idle socket's memory. ``Detached`` takes the socket over instead:

* the file descriptor is duplicated, so the request can return and gunicorn close its own
  copy while the connection stays open;
* one io watcher (the socket's own) waits for input; when something arrives a greenlet
  is spawned that reads everything there is, handles the frames in order and ends;
* one timer closes the socket with 4401 when the token expires (re-armed by every refresh,
  to a sooner expiry as well as a later one);
* a close from the server (4401, 1012, 1013, 4409, 1008) or the client, or a dead peer,
  ends it the same way the request greenlet would have: session cleanup, then a bounded
  lingering close.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent
from simple_websocket import ConnectionClosed

from service.delivery.conn import CLOSE_UNAUTHORIZED
from service.delivery.wsock import (
    buffered,
    can_take_over,
    feed,
    linger,
    raw_of,
    read_watcher,
    take_descriptor,
)

if TYPE_CHECKING:
    from service.sockets.ws import Session

log = logging.getLogger(__name__)

#: Bytes one read takes from the socket.
RECV_BYTES = 65536


def can_detach(ws: Any) -> bool:
    """True for a socket ``serve`` accepted (not flask-sock's) on a non-blocking OS socket."""
    return can_take_over(ws)


class Detached:
    """Reads one established socket from the event loop; see the module docstring."""

    __slots__ = ("busy", "done", "finished", "session", "sock", "timer", "watcher", "ws")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.ws = session.ws
        dup = take_descriptor(self.ws)  # our own descriptor: gunicorn closes the request's
        self.sock = dup
        self.watcher = read_watcher(dup)  # the socket's own: closed with it
        self.timer: Any = None
        self.busy = False  # a pump greenlet is running
        self.done = False  # no more reading: the socket is closing
        self.finished = False
        self.ws.detached = self
        session.on_refresh = self._arm_expiry

    def start(self) -> None:
        """Take over: handle what is already buffered, then wait for input."""
        self._arm_expiry()
        self._spawn_pump()

    # --- reading -------------------------------------------------------------------------

    def _on_readable(self) -> None:
        self.watcher.stop()
        self._spawn_pump()

    def _spawn_pump(self) -> None:
        if not self.busy and not self.done:
            self.busy = True
            gevent.spawn(self._pump)

    def _pump(self) -> None:
        ended = True
        try:
            ended = self._read_all()
        except Exception:
            log.exception("reading a socket failed")
        finally:
            self.busy = False
        if ended or self.done:
            self._finish()
        else:
            self.watcher.start(self._on_readable)

    def _read_all(self) -> bool:
        """Handle every frame there is; True when the socket is over."""
        ws, session = self.ws, self.session
        raw = raw_of(self.sock)
        while True:
            while not self.done and (message := buffered(ws)) is not None:
                session.handle(message)
            if self.done:
                return True
            if not ws.connected:
                return True
            try:
                data = raw.recv(RECV_BYTES)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not data:
                return True
            try:
                feed(ws, data)  # pongs and close replies go out here
            except ConnectionClosed:
                return True
            if not ws.connected and session.conn is not None:
                # the client's close came with this read and is answered: frames it sent
                # before it are still handled (a publish counts), their replies not sent
                session.conn.peer_closed()

    # --- token expiry --------------------------------------------------------------------

    def _arm_expiry(self) -> None:
        """(Re)start the expiry timer for the session's current token."""
        grants = self.session.grants
        if grants is None or self.done:
            return
        if self.timer is not None:
            self.timer.stop()
        self.timer = gevent.get_hub().loop.timer(max(0.0, grants.expires_at - time.time()))
        self.timer.start(self._on_expiry)

    def _on_expiry(self) -> None:
        grants, conn = self.session.grants, self.session.conn
        if self.done or grants is None or conn is None:
            return
        if grants.expires_at > time.time():  # refreshed meanwhile
            self._arm_expiry()
            return
        conn.close(CLOSE_UNAUTHORIZED, "token expired")

    # --- the end -------------------------------------------------------------------------

    def server_closed(self) -> None:
        """The server sent its close frame: stop reading and finish (after the frame being
        handled, if any)."""
        self.done = True
        self.watcher.stop()
        if not self.busy:
            gevent.spawn(self._finish)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = self.done = True
        self.watcher.stop()  # before linger's reads wait on the same watcher
        if self.timer is not None:
            self.timer.stop()
        self.session.on_refresh = None
        try:
            self.session.cleanup()
        finally:
            linger(self.ws)
            self.sock.close()
            self.ws.detached = None  # break the cycle: the socket's objects can go
