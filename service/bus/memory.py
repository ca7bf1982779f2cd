"""The in-memory bus backend (``memory://NAME``), for tests: one process, no broker.

Every consumer of one URL gets every body published to the fanout (``route=""``) and
those published with a key its subscription is bound to, in order, as RabbitMQ's fanout
and topic exchanges into one exclusive queue per frontend would; ``Broker.deliveries``
counts what each subscription was handed (the tests' view of "the broker").
``Broker.down`` makes publishes fail and drops the subscriptions (the consumers see a
lost connection and subscribe again once it is up), so outage handling can be unit-tested
too. Consumers are greenlets (the frontend's world).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

import gevent
from gevent.queue import Empty, Queue

from .base import BusError, OnBatch, OnLost, OnReady

log = logging.getLogger(__name__)

#: How often an idle consumer looks at its stop flag and the broker's state, seconds.
POLL_S = 0.05
#: Most bodies one batch hands over.
BATCH_MAX = 256


class Broker:
    """The exchange every publisher and consumer of one ``memory://`` URL shares."""

    def __init__(self) -> None:
        self.queues: dict[str, Queue[bytes]] = {}
        self.keys: dict[str, set[str]] = {}  # queue name -> the routing keys it is bound to
        self.deliveries: dict[str, int] = {}  # queue name -> bodies routed to it
        self.published = 0
        self._down = False
        self._names = itertools.count(1)

    @property
    def down(self) -> bool:
        return self._down

    @down.setter
    def down(self, value: bool) -> None:
        self._down = value
        if value:  # an exclusive queue dies with its connection: what it held is lost
            self.queues.clear()
            self.keys.clear()

    def bind(self) -> str:
        if self._down:
            raise BusError("memory broker is down")
        name = f"memory.q{next(self._names)}"
        self.queues[name] = Queue()
        self.keys[name] = set()
        self.deliveries[name] = 0
        return name

    def publish(self, body: bytes, route: str = "", confirm: bool = False) -> None:
        if self._down:
            raise BusError("memory broker is down")
        self.published += 1
        for name, q in list(self.queues.items()):
            keys = self.keys.get(name, ())
            if not route or route in keys or "#" in keys:
                self.deliveries[name] += 1
                q.put_nowait(body)


_brokers: dict[str, Broker] = {}
_brokers_lock = threading.Lock()


def broker(url: str) -> Broker:
    """The broker of one ``memory://`` URL (made on first use; the URL is its name)."""
    with _brokers_lock:
        found = _brokers.get(url)
        if found is None:
            found = _brokers[url] = Broker()
        return found


class MemoryPublisher:
    def __init__(self, url: str, exchange: str, **_: Any) -> None:
        self.broker = broker(f"{url}#{exchange}")

    def publish(self, body: bytes, route: str = "", confirm: bool = False) -> None:
        self.broker.publish(body, route)  # in one process a publish cannot get lost

    def heartbeat_tick(self) -> None:
        """Nothing to keep alive."""

    def close(self) -> None:
        """Nothing to close."""


class MemoryConsumer:
    """The consumer loop of ``amqp.BusConsumer``, on a ``Broker``."""

    def __init__(self, url: str, exchange: str, *, on_batch: OnBatch,
                 on_ready: OnReady | None = None, on_lost: OnLost | None = None,
                 **_: Any) -> None:
        self.broker = broker(f"{url}#{exchange}")
        self.on_batch = on_batch
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.should_stop = False
        self.connected = False
        self.queue_name: str | None = None
        self.reconnects = 0
        self.last_seen = time.time()  # in one process nothing dies silently
        self.wanted: set[str] = set()

    def stop(self, close: bool = True) -> None:
        self.should_stop = True

    def keepalive(self) -> None:
        """Nothing to keep alive."""

    def bind(self, key: str) -> None:
        self.wanted.add(key)
        if self.queue_name in self.broker.keys:
            self.broker.keys[self.queue_name].add(key)

    def unbind(self, key: str) -> None:
        self.wanted.discard(key)
        self.broker.keys.get(self.queue_name or "", set()).discard(key)

    def bound_count(self) -> int:
        return len(self.broker.keys.get(self.queue_name or "", ()))

    def wait_bound(self, keys: list[str], timeout: float) -> bool:
        """Binding is immediate here; False only while there is no subscription."""
        return self.connected

    def run(self) -> None:
        first = True
        while not self.should_stop:
            try:
                name = self.broker.bind()
            except BusError:
                gevent.sleep(POLL_S)
                continue
            self.queue_name = name
            self.broker.keys[name] = set(self.wanted)  # bound again before anything flows
            if self.on_ready is not None:
                self.on_ready(name, first)
            first = False
            self.connected = True
            self._drain(name)
            self.connected = False
            if not self.should_stop:
                self.reconnects += 1
                if self.on_lost is not None:
                    self.on_lost()

    def _drain(self, name: str) -> None:
        while not self.should_stop:
            q = self.broker.queues.get(name)
            if q is None:
                return  # the broker went down: the subscription is gone
            try:
                batch = [q.get(timeout=POLL_S)]
            except Empty:
                continue
            while len(batch) < BATCH_MAX and not q.empty():
                batch.append(q.get_nowait())
            try:
                self.on_batch(batch)
            except Exception:  # one bad batch must not stop the consumer
                log.exception("bus: failed to handle %d messages; skipped", len(batch))
        self.broker.queues.pop(name, None)
        self.broker.keys.pop(name, None)
