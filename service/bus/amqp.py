"""The AMQP bus backend (``amqp://``): one durable fanout exchange on RabbitMQ, via kombu.

A backend only publishes and listens; what a message means is the cluster core's business.
``BusPublisher`` and ``BusConsumer`` use separate broker connections. The consumer owns one
exclusive, auto-delete, server-named queue bound to the exchange; when its connection
drops the queue goes with it, so it reconnects with capped backoff, declares a new queue
and tells its owner (who replays the gap from the durable log). Workers construct only a
publisher (write-only mode), with publisher confirms.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import amqp
from kombu import Connection, Consumer, Exchange, Queue
from kombu.exceptions import OperationalError as KombuOperationalError

from service.core.backoff import Backoff

from .base import BusError

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-herald"
#: What a publish raises when the broker is away and its retries are spent.
_AMQP = Connection("amqp://")  # never connected: only asked which errors its transport raises
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    *_AMQP.connection_errors, *_AMQP.channel_errors, OSError,
    KombuOperationalError,  # what kombu raises once its retries are spent
    BusError)  # what any other backend raises
#: Seconds between AMQP heartbeats (each side closes after two missed).
BROKER_HEARTBEAT_S = 10
#: Reconnect backoff bounds, seconds.
RECONNECT_MIN_S = 0.25
RECONNECT_MAX_S = 5.0
#: Most messages one consumer batch takes off the socket before handing them on.
CONSUME_BATCH_MAX = 256
#: Pauses between one publish's attempts on a lost broker (about 7 s in all), then it raises.
PUBLISH_RETRY_DELAYS_S = (0.1, 0.6, 1.1, 1.6, 2.0, 2.0)


def fanout_exchange(name: str) -> Exchange:
    return Exchange(name, type="fanout", durable=True)


def close_quietly(conn: Connection) -> None:
    """Close a broker connection that may already be dead."""
    with contextlib.suppress(*conn.connection_errors, *conn.channel_errors, OSError):
        conn.close()


class BusPublisher:
    """Publishes envelope bytes to the fanout exchange on its own connection.

    It publishes on the raw AMQP channel: kombu's ``Producer.publish`` costs about four
    times the CPU of ``basic_publish`` itself (message preparation, declare caches, retry
    wrappers on every call), and every delivery in the cluster passes through here. With
    ``confirm`` the channel is in confirm mode and each publish waits for the broker's ack.
    """

    def __init__(self, url: str, exchange: str, *, confirm: bool = False,
                 lock: Any = None, sleep: Callable[[float], None] | None = None) -> None:
        self.exchange = fanout_exchange(exchange)
        # connecting is retried by publish() itself: kombu's own default retries forever
        options: dict[str, Any] = {"max_retries": 1, "interval_start": 0.1}
        if confirm:
            options["confirm_publish"] = True
        self.connection = Connection(url, heartbeat=BROKER_HEARTBEAT_S,
                                     transport_options=options)
        # one lock per publisher: a channel is not safe to share between greenlets
        self._lock = lock if lock is not None else threading.Lock()
        self._channel: Any = None
        self._sleep = sleep or time.sleep

    def _get_channel(self) -> Any:
        if self._channel is None:
            channel = self.connection.default_channel  # connects when needed
            self.exchange(channel).declare()
            self._channel = channel
        return self._channel

    def publish(self, body: bytes) -> None:
        """Publish one bus message; retries a lost connection (bounded), then raises."""
        with self._lock:
            for delay in (*PUBLISH_RETRY_DELAYS_S, None):
                try:
                    self._get_channel().basic_publish(
                        amqp.Message(body, content_type=CONTENT_TYPE,
                                     content_encoding="binary", delivery_mode=1),
                        exchange=self.exchange.name, routing_key="")
                    return
                except BROKER_ERRORS:
                    self._reset()
                    if delay is None:
                        raise
                    log.warning("bus: publish failed; reconnecting in %.1fs", delay)
                    self._sleep(delay)

    def heartbeat_tick(self) -> None:
        """Send/check AMQP heartbeats while idle; drop the connection if the broker is gone.

        A publish-only connection never reads its socket, so the broker's heartbeats would
        pile up unread and py-amqp would think the broker silent: read what is there first.
        """
        with self._lock:
            if not self.connection.connected:
                return
            try:
                with contextlib.suppress(TimeoutError):
                    self.connection.drain_events(timeout=0)
                self.connection.heartbeat_check()
            except self.connection.connection_errors:
                log.warning("publisher connection lost; it reconnects on the next publish")
                self._reset()

    def _reset(self) -> None:
        self._channel = None
        close_quietly(self.connection)

    def close(self) -> None:
        with self._lock:
            self._reset()


class BusConsumer:
    """Consumes the fanout through one exclusive queue; reconnects by itself.

    ``on_body`` gets each message's raw bytes; an exception there is logged and the loop
    goes on. With ``on_batch`` instead, every message already readable from the broker
    (up to ``CONSUME_BATCH_MAX``) is collected first and handed over as one list: under a
    backlog the owner then writes each socket once for many messages, and with no backlog
    a batch is one message, with no wait added. ``on_ready(queue_name, first)`` runs after
    each (re)declare and bind, before consuming starts; ``on_lost()`` when the connection
    drops.
    """

    def __init__(self, url: str, exchange: str, on_body: Callable[[bytes], None] | None = None,
                 *, on_batch: Callable[[list[bytes]], None] | None = None,
                 on_ready: Callable[[str, bool], None] | None = None,
                 on_lost: Callable[[], None] | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.url = url
        self.exchange = fanout_exchange(exchange)
        self.on_body = on_body
        self.on_batch = on_batch
        self._pending: list[bytes] = []
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.should_stop = False
        self.connected = False
        self.queue_name: str | None = None
        self.reconnects = 0
        self._sleep = sleep or time.sleep
        self._connection: Connection | None = None

    def stop(self, close: bool = True) -> None:
        """End the loop. ``close=True`` also closes the connection from outside, which
        unblocks a loop running in another thread; a greenlet owner instead kills the
        loop's greenlet (whose ``finally`` closes it), since gevent forbids closing a
        socket another greenlet is reading."""
        self.should_stop = True
        if close and self._connection is not None:
            close_quietly(self._connection)

    def run(self) -> None:
        """The consumer loop: connect, declare, drain; on loss back off and do it again."""
        backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S)
        first = True
        while not self.should_stop:
            conn = Connection(self.url, heartbeat=BROKER_HEARTBEAT_S)
            self._connection = conn
            try:
                conn.connect()
                channel = conn.channel()
                self.exchange(channel).declare()
                queue = Queue("", exchange=self.exchange, exclusive=True, auto_delete=True,
                              durable=False, channel=channel)
                queue.declare()
                consumer = Consumer(channel, queues=[queue], no_ack=True, auto_declare=False,
                                    on_message=self._on_message)
                self.queue_name = queue.name
                # bound but not yet consuming: what arrives now waits in the queue while
                # the owner catches up (a replay), so order is kept
                if self.on_ready is not None:
                    self.on_ready(queue.name, first)
                first = False
                consumer.consume()
                self.connected = True
                backoff.reset()
                log.info("bus: consuming %s on exchange %s", queue.name, self.exchange.name)
                self._drain(conn)
            except Exception as exc:
                if self.should_stop:
                    break  # whatever a connection closed under us raises, we are done
                if not isinstance(exc, (*conn.connection_errors, *conn.channel_errors, OSError)):
                    log.exception("bus: unexpected error in the consumer; reconnecting")
                log.warning("bus: connection lost (%s); reconnecting in %.2fs", exc,
                            backoff.peek())
            finally:
                was_connected = self.connected
                self.connected = False
                close_quietly(conn)
            if was_connected:
                self.reconnects += 1
                if self.on_lost is not None and not self.should_stop:
                    self.on_lost()
            if not self.should_stop:
                self._sleep(backoff.next())

    def _drain(self, conn: Connection) -> None:
        while not self.should_stop:
            try:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=BROKER_HEARTBEAT_S / 4)
                    while (self._pending and len(self._pending) < CONSUME_BATCH_MAX
                           and _readable(conn)):
                        conn.drain_events(timeout=BROKER_HEARTBEAT_S / 4)
            finally:  # what arrived before a connection loss is still delivered, in order
                if self._pending:
                    self._hand_over()
            if self.should_stop:
                break
            # after every drain, busy or idle: with no_ack we send nothing else, and the
            # broker closes a connection that stays silent for two heartbeats
            conn.heartbeat_check()

    def _on_message(self, message: Any) -> None:
        if self.on_batch is not None:
            self._pending.append(message.body)
            return
        try:
            if self.on_body is not None:
                self.on_body(message.body)
        except Exception:  # one bad message must not stop the consumer
            log.exception("bus: failed to handle a message; skipped")

    def _hand_over(self) -> None:
        batch, self._pending = self._pending, []
        try:
            if self.on_batch is not None:
                self.on_batch(batch)
        except Exception:  # one bad batch must not stop the consumer
            log.exception("bus: failed to handle %d messages; skipped", len(batch))


def _readable(conn: Connection) -> bool:
    """True when more of the broker's data is buffered or waiting on the socket."""
    transport = getattr(conn.connection, "transport", None)
    if transport is None or transport.sock is None:
        return False
    if getattr(transport, "_read_buffer", b""):
        return True
    ready, _, _ = select.select([transport.sock], [], [], 0)
    return bool(ready)
