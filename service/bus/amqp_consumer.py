"""The AMQP consumer loop (see ``amqp.py`` for the backend as a whole): one exclusive
queue bound to the fanout and to the routed (topic) exchange with every routing key its owner
wants (``bindings.py``), read in batches (``amqp_frames.py`` reads the frames), reconnected
with capped backoff.
"""

from __future__ import annotations

import logging
import select
import sys
import time
from collections.abc import Callable
from typing import Any

from kombu import Connection, Queue

from service.core.backoff import Backoff

from .amqp import (
    BROKER_HEARTBEAT_S,
    CONSUME_BATCH_MAX,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    BrokerNodes,
    broker_host,
    close_quietly,
    fanout_exchange,
    routed_exchange,
)
from .amqp_frames import FrameReader
from .bindings import Bindings

log = logging.getLogger(__name__)


def _gevent_patched() -> bool:
    """True when gevent has patched ``select`` (a frontend). gevent is imported only then:
    the installable client (``pyproject.toml``) runs this loop in plain threads without it."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("select"))


class BusConsumer:
    """Consumes the fanout through one exclusive queue; reconnects by itself.

    ``on_body`` gets each message's raw bytes; an exception there is logged and the loop
    goes on. With ``on_batch`` instead, every message already readable from the broker
    (up to ``CONSUME_BATCH_MAX``) is collected first and handed over as one list: under a
    backlog the owner then writes each socket once for many messages, and with no backlog
    a batch is one message, with no wait added. ``on_ready(queue_name, first)`` runs after
    each (re)declare and bind (the fanout, and every wanted routing key), before consuming
    starts; ``on_lost()`` when a queue ``on_ready`` was told of is gone (consuming or not).
    An ``on_ready`` that takes a while calls ``keepalive`` now and then.
    ``bind``/``unbind``/``wait_bound``: see ``bindings.py``.
    """

    def __init__(self, url: str, exchange: str, on_body: Callable[[bytes], None] | None = None,
                 *, on_batch: Callable[[list[bytes]], None] | None = None,
                 on_ready: Callable[[str, bool], None] | None = None,
                 on_lost: Callable[[], None] | None = None,
                 sleep: Callable[[float], None] | None = None,
                 heartbeat_s: float = BROKER_HEARTBEAT_S) -> None:
        self.nodes = BrokerNodes(url)
        self.heartbeat_s = heartbeat_s
        self.exchange = fanout_exchange(exchange)
        self.routed = routed_exchange(exchange)
        self.bindings = Bindings()
        self.on_body = on_body
        self.on_batch = on_batch
        self._pending: list[bytes] = []
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.should_stop = False
        self.connected = False
        self.queue_name: str | None = None
        self.reconnects = 0
        self.last_seen = time.time()
        self._sleep = sleep or time.sleep
        self._connection: Connection | None = None

    def bind(self, key: str) -> None:
        self.bindings.want(key)

    def unbind(self, key: str) -> None:
        self.bindings.drop(key)

    def wait_bound(self, keys: list[str], timeout: float) -> bool:
        return self.bindings.wait_bound(keys, timeout)

    def bound_count(self) -> int:
        return len(self.bindings.bound)

    def stop(self, close: bool = True) -> None:
        """End the loop. ``close=True`` also closes the connection from outside, which
        unblocks a loop running in another thread; a greenlet owner instead kills the
        loop's greenlet (whose ``finally`` closes it), since gevent forbids closing a
        socket another greenlet is reading."""
        self.should_stop = True
        if close and self._connection is not None:
            close_quietly(self._connection)

    def run(self) -> None:
        """The consumer loop: connect, declare, bind, drain; on loss back off and again."""
        try:
            self._run()
        finally:
            self.bindings.close()

    def _run(self) -> None:
        backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S)
        first = True
        while not self.should_stop:
            conn = Connection(self.nodes.current, heartbeat=self.heartbeat_s)
            self._connection = conn
            # once the owner was told a queue is ready, its loss is reported, even before
            # consuming started: a replay the owner ran for it covers only until then
            told = False
            try:
                conn.connect()
                channel = conn.channel()
                self.exchange(channel).declare()
                queue = Queue("", exchange=self.exchange, exclusive=True, auto_delete=True,
                              durable=False, channel=channel)
                queue.declare()
                self.queue_name = queue.name
                self.routed(channel).declare()
                self.bindings.fresh_queue()
                self.bindings.settle(channel, queue.name, self.routed.name)
                self.last_seen = time.time()
                # bound but not yet consuming: what arrives now waits in the queue while
                # the owner catches up (a replay), so order is kept
                told = True
                if self.on_ready is not None:
                    self.on_ready(queue.name, first)
                first = False
                # py-amqp's own consumer: its Message already holds the body, and kombu's
                # Consumer would wrap each one again (decoding properties, acks state)
                channel.basic_consume(queue.name, no_ack=True, callback=self._on_message)
                self.connected = True
                backoff.reset()
                self.nodes.new_round()
                log.info("bus: consuming %s on exchange %s at %s", queue.name,
                         self.exchange.name, broker_host(self.nodes.current))
                self._drain(conn, channel, queue.name)
            except Exception as exc:
                if self.should_stop:
                    break  # whatever a connection closed under us raises, we are done
                if not isinstance(exc, (*conn.connection_errors, *conn.channel_errors, OSError)):
                    log.exception("bus: unexpected error in the consumer; reconnecting")
                log.warning("bus: connection to %s lost (%s); reconnecting",
                            broker_host(self.nodes.current), exc)
            finally:
                self.connected = False
                self.bindings.lost()
                close_quietly(conn)
            if told:
                self.reconnects += 1
                if self.on_lost is not None and not self.should_stop:
                    self.on_lost()
            # a cluster's next node at once; the backoff pause once every node failed
            if not self.should_stop and self.nodes.failed():
                self.nodes.new_round()
                self._sleep(backoff.next())

    def keepalive(self) -> None:
        """Send the broker a heartbeat now, for an ``on_ready`` that takes longer than a
        heartbeat (a replay before consuming starts): the loop does not tick meanwhile, and
        the broker drops a connection silent for two heartbeats. Call it from ``on_ready``
        (the loop's own thread or greenlet: py-amqp is not thread-safe)."""
        conn = self._connection
        if conn is not None and self.heartbeat_s and conn.connected:
            conn.connection.send_heartbeat()

    def _drain(self, conn: Connection, channel: Any, queue: str) -> None:
        frames = FrameReader(conn)
        ready = Readiness(frames.sock, self.bindings.wake_fd)
        try:
            self._drain_loop(conn, channel, queue, frames, ready)
        finally:
            ready.close()

    def _drain_loop(self, conn: Connection, channel: Any, queue: str, frames: FrameReader,
                    ready: Readiness) -> None:
        bindings = self.bindings
        timeout = self.heartbeat_s / 4
        next_tick = 0.0
        # whole frames may be in the read buffer already (a batch stopped at its limit;
        # py-amqp read past a bind's reply): read them before waiting on the socket,
        # which cannot see them
        buffered = True
        while not self.should_stop:
            try:
                if bindings.dirty:
                    bindings.apply(channel, queue, self.routed.name)
                    buffered = True
                # one recv takes the socket's whole backlog (up to 64 KiB): a batch is what
                # is here now, with no wait added for a lone message
                if buffered or (ready.wait(timeout) and frames.fill()):
                    self.last_seen = time.time()
                    buffered = frames.read(self._pending, CONSUME_BATCH_MAX, timeout)
            except TimeoutError:  # a bind's reply, or the rest of a frame, is late: go on
                pass
            finally:  # what arrived before a connection loss is still delivered, in order
                if self._pending:
                    self._hand_over()
            if self.should_stop:
                break
            # with no_ack we send nothing else, and the broker closes a connection that
            # stays silent for two heartbeats; a tick every quarter heartbeat, busy or idle
            # (not after every message: a tenth of a lone message's cost)
            now = time.monotonic()
            if now >= next_tick:
                conn.heartbeat_check()
                next_tick = now + timeout

    def _on_message(self, message: Any) -> None:
        """py-amqp's callback, for what ``FrameReader`` leaves to it (a body over several
        frames, a delivery during a bind): in line with the rest."""
        self._pending.append(message.body)

    def _hand_over(self) -> None:
        batch, self._pending = self._pending, []
        if self.on_batch is not None:
            try:
                self.on_batch(batch)
            except Exception:  # one bad batch must not stop the consumer
                log.exception("bus: failed to handle %d messages; skipped", len(batch))
            return
        for body in batch:
            try:
                if self.on_body is not None:
                    self.on_body(body)
            except Exception:  # one bad message must not stop the consumer
                log.exception("bus: failed to handle a message; skipped")


class Readiness:
    """Waits until the broker's socket is readable (True), or the bindings' pipe wakes the
    loop or the timeout passes (False).

    Under gevent its io watchers live as long as the connection: gevent's ``select`` makes
    and drops a watcher per descriptor per call (and the kernel registration with it),
    which was a fifth of a lone message's consume cost. In plain threads it is ``select``.
    """

    def __init__(self, sock: Any, wake_fd: int) -> None:
        self.sock = sock
        self.wake_fd = wake_fd
        self.loop: Any = None
        self.waiter: Any = None
        if _gevent_patched():
            import gevent  # only a gevent frontend gets here (see _gevent_patched)
            from gevent.hub import Waiter

            self.waiter = Waiter
            self.loop = gevent.get_hub().loop
            self.on_sock = self.loop.io(sock.fileno(), 1)
            self.on_wake = self.loop.io(wake_fd, 1)

    def wait(self, timeout: float) -> bool:
        if self.loop is None:
            ready, _, _ = select.select([self.sock, self.wake_fd], [], [], timeout)
            return self.sock in ready
        waiter = self.waiter()
        timer = self.loop.timer(timeout)
        self.on_sock.start(waiter.switch, True)
        self.on_wake.start(waiter.switch, False)
        timer.start(waiter.switch, False)
        try:
            return bool(waiter.get())
        finally:
            self.on_sock.stop()
            self.on_wake.stop()
            timer.close()

    def close(self) -> None:
        if self.loop is not None:
            self.on_sock.close()
            self.on_wake.close()
