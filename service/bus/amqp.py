"""The AMQP bus backend (``amqp://``): a durable fanout exchange and a durable topic exchange for
targeted messages (``<exchange>.routed``) on RabbitMQ, via kombu. This module: the exchanges, the
errors a broker raises and the publisher; ``amqp_consumer.py``: the consumer loop.

A backend only publishes and listens; what a message means is the cluster core's business.
``BusPublisher`` and ``BusConsumer`` use separate broker connections. The consumer owns one
exclusive, auto-delete, server-named queue bound to the fanout, and to the routed (topic) exchange
with each routing key its owner wants; when its connection drops the queue goes with it, so it
reconnects with capped backoff, declares a new queue, binds every wanted key again and tells its
owner (who replays the gap from the durable log). Workers construct only a publisher (write-only
mode), with publisher confirms.

The URL may list several brokers of one RabbitMQ cluster separated by ``;`` (kombu's and
Celery's failover syntax). A connection that fails or drops moves on to the next node in the
list (``BrokerNodes``); the exchanges are durable, so they exist on every node, while the
exclusive queue is made anew on the node the consumer lands on.

An exclusive queue can only be bound from its own connection, which the consumer loop reads; so the
loop applies binding changes itself, between reads: ``bind`` records the key and wakes the loop
through a pipe. Binds of one round are pipelined (``nowait``) and closed by one awaited bind, whose
reply proves the channel processed all before it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import amqp
from amqp.exceptions import MessageNacked
from kombu import Connection, Exchange
from kombu.exceptions import OperationalError as KombuOperationalError

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
#: Heartbeat intervals of silence after which a publisher takes a new connection before it
#: publishes: the broker drops a connection it has not heard from in two, and one that is
#: never ticked (a backend's write-only publisher between requests) would otherwise find out
#: by a failed publish and a retry pause.
STALE_HEARTBEATS = 1.5
#: Pauses between one publish's attempts on a lost broker (about 7 s in all), then it raises.
PUBLISH_RETRY_DELAYS_S = (0.1, 0.6, 1.1, 1.6, 2.0, 2.0)


class BrokerNodes:
    """The brokers of a ``;``-separated URL list, tried in turn: ``current`` is the one to
    connect to, ``failed()`` moves on to the next and says whether a whole round failed
    since the last success (only then is a backoff pause due)."""

    def __init__(self, url: str) -> None:
        self.urls = [part.strip() for part in url.split(";") if part.strip()]
        if not self.urls:
            raise ValueError("HERALD_BROKER_URL names no broker")
        self._at = 0
        self._failures = 0

    @property
    def current(self) -> str:
        return self.urls[self._at]

    def failed(self) -> bool:
        self._at = (self._at + 1) % len(self.urls)
        self._failures += 1
        return self._failures >= len(self.urls)

    def new_round(self) -> None:
        """A connection succeeded, or a round's pause is over: count failures afresh."""
        self._failures = 0


def broker_host(url: str) -> str:
    """``host:port`` of a broker URL, for logs (never the credentials)."""
    return url.rsplit("@", 1)[-1].split("/", 1)[0]


def fanout_exchange(name: str) -> Exchange:
    return Exchange(name, type="fanout", durable=True)


def routed_exchange(fanout_name: str) -> Exchange:
    """The exchange targeted messages go to, named after the fanout: a topic exchange, so
    that a frontend set to route by fanout can bind ``#`` and still get them."""
    return Exchange(f"{fanout_name}.routed", type="topic", durable=True)


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
                 lock: Any = None, sleep: Callable[[float], None] | None = None,
                 heartbeat_s: float = BROKER_HEARTBEAT_S) -> None:
        self.exchange = fanout_exchange(exchange)
        self.routed = routed_exchange(exchange)
        self.nodes = BrokerNodes(url)
        # connecting is retried by publish() itself: kombu's own default retries forever
        self._options: dict[str, Any] = {"max_retries": 1, "interval_start": 0.1}
        if confirm:
            self._options["confirm_publish"] = True
        self._heartbeat_s = heartbeat_s
        self.connection = self._connection()
        # one lock per publisher: a channel is not safe to share between greenlets
        self._lock = lock if lock is not None else threading.Lock()
        self._channel: Any = None
        self._confirmed: Any = None
        self._sleep = sleep or time.sleep
        self._clock = time.monotonic
        self._used = self._clock()  # the last time the connection was written or read

    def _connection(self) -> Connection:
        return Connection(self.nodes.current, heartbeat=self._heartbeat_s,
                          transport_options=self._options)

    def _get_channel(self) -> Any:
        if self._channel is None:
            channel = self.connection.default_channel  # connects when needed
            self.exchange(channel).declare()
            self.routed(channel).declare()
            self._channel = channel
            self.nodes.new_round()
        return self._channel

    def publish(self, body: bytes, route: str = "", confirm: bool = False) -> None:
        """Publish one bus message, to the fanout or (``route``) to the frontends bound to
        that key; retries a lost connection (bounded), then raises.

        ``confirm``: return only once the broker has taken it (publisher confirms, on a
        channel of their own); a publish whose confirm does not come is sent again, on the
        next node. Durable messages need it: a node that dies with the message in its
        socket buffer would lose it for every frontend that stays connected (and so never
        replays), and a duplicate is harmless (clients drop ids they have)."""
        exchange = self.routed.name if route else self.exchange.name
        message = amqp.Message(body, content_type=CONTENT_TYPE, content_encoding="binary",
                               delivery_mode=1)
        with self._lock:
            self._refresh_if_idle()
            delays = iter(PUBLISH_RETRY_DELAYS_S)
            while True:
                try:
                    if confirm:
                        self._get_confirmed().basic_publish_confirm(
                            message, exchange=exchange, routing_key=route,
                            confirm_timeout=self._heartbeat_s)
                    else:
                        self._get_channel().basic_publish(message, exchange=exchange,
                                                          routing_key=route)
                    self._used = self._clock()
                    return
                except (*BROKER_ERRORS, MessageNacked):
                    # a nack: the broker could not take it (a bound queue's node just
                    # died): as for a lost connection, send it again elsewhere
                    self._reset()
                    # the next node of the cluster at once; a pause once all were tried
                    round_failed = self.nodes.failed()
                    self.connection = self._connection()
                    if not round_failed:
                        log.warning("bus: publish failed; trying %s",
                                    broker_host(self.nodes.current))
                        continue
                    self.nodes.new_round()
                    delay = next(delays, None)
                    if delay is None:
                        raise
                    log.warning("bus: publish failed; reconnecting in %.1fs", delay)
                    self._sleep(delay)

    def _get_confirmed(self) -> Any:
        if self._confirmed is None:
            self._get_channel()  # connects and declares
            self._confirmed = self.connection.channel()
        return self._confirmed

    def heartbeat_tick(self) -> None:
        """Send/check AMQP heartbeats while idle; drop the connection if the broker is gone.

        A publish-only connection never reads its socket, so the broker's heartbeats would
        pile up unread and py-amqp would think the broker silent: read what is there first.
        """
        with self._lock:
            self._tick()

    def _tick(self) -> None:
        if not self.connection.connected:
            return
        try:
            with contextlib.suppress(TimeoutError):
                self.connection.drain_events(timeout=0)
            self.connection.heartbeat_check()
            self._used = self._clock()
        except self.connection.connection_errors:
            log.warning("publisher connection lost; it reconnects on the next publish")
            self._reset()

    def _refresh_if_idle(self) -> None:
        """Before a publish: a connection silent for STALE_HEARTBEATS intervals is replaced
        (the broker may have dropped it, and a write into a dropped one fails or, worse,
        vanishes); one silent for one interval gets its heartbeats read and sent first."""
        if self._channel is None or self._heartbeat_s <= 0:
            return
        idle = self._clock() - self._used
        if idle >= STALE_HEARTBEATS * self._heartbeat_s:
            self._reset()
            self.connection = self._connection()
        elif idle >= self._heartbeat_s:
            self._tick()

    def _reset(self) -> None:
        self._channel = self._confirmed = None
        close_quietly(self.connection)

    def close(self) -> None:
        with self._lock:
            self._reset()
