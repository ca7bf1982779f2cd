"""service.bus against the real RabbitMQ: one fanout exchange per test, deleted afterwards."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from kombu import Connection, Exchange

from service.bus import BusConsumer, BusPublisher
from tests.conftest import ENV
from tests.support import wait_until

URL = ENV["HERALD_BROKER_URL"]
WAIT_S = 30.0


class Running:
    """A consumer whose run() loop is in a thread; received bodies land in a queue."""

    def __init__(self, exchange: str, handler: Callable[[bytes], None] | None = None,
                 **options: Any) -> None:
        self.bodies: queue.Queue[bytes] = queue.Queue()
        self.ready: queue.Queue[tuple[str, bool]] = queue.Queue()
        self.error: BaseException | None = None
        self.returned = False
        self.consumer = BusConsumer(URL, exchange, handler or self.bodies.put,
                                    on_ready=lambda name, first: self.ready.put((name, first)),
                                    sleep=time.sleep, **options)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.queue_name, self.first = self.ready.get(timeout=WAIT_S)

    def _run(self) -> None:
        try:
            self.consumer.run()
            self.returned = True  # run() came back normally, not by an exception
        except (AttributeError, OSError) as exc:  # what a closed py-amqp connection raises
            self.error = exc

    def get(self) -> bytes:
        return self.bodies.get(timeout=WAIT_S)

    def stop(self) -> None:
        self.consumer.stop()
        self.thread.join(WAIT_S)


@pytest.fixture
def exchange() -> Iterator[str]:
    name = f"herald_test_{ENV['HERALD_NS']}.bus.{uuid.uuid4().hex[:8]}"
    yield name
    with Connection(URL) as conn:
        Exchange(name, channel=conn.channel()).delete()
        with contextlib.suppress(*conn.channel_errors):  # declared once something routed
            Exchange(f"{name}.routed", channel=conn.channel()).delete()


@pytest.fixture
def started(exchange: str) -> Iterator[list[Any]]:
    """Consumers and publishers a test starts. Teardown stops the consumers without
    closing their connections from this thread (py-amqp is not thread-safe) and wakes
    their drain with one message, so they leave at once."""
    things: list[Any] = []
    yield things
    consumers = [t for t in things if isinstance(t, Running)]
    for running in consumers:
        running.consumer.stop(close=False)
    waker = BusPublisher(URL, exchange)
    waker.publish(b"wake")
    waker.close()
    for running in consumers:
        running.thread.join(WAIT_S)
    for thing in things:
        if isinstance(thing, BusPublisher):
            thing.close()


def _exchange_exists(name: str) -> bool:
    with Connection(URL) as conn:
        try:
            Exchange(name, type="fanout", channel=conn.channel()).declare(passive=True)
        except conn.channel_errors:
            return False
    return True


def test_publish_is_received_exactly(exchange: str, started: list[Any]) -> None:
    consumer = Running(exchange)
    started.append(consumer)
    publisher = BusPublisher(URL, exchange)
    started.append(publisher)
    assert consumer.first is True
    wait_until(lambda: consumer.consumer.connected)  # on_ready runs just before consuming
    bodies = [b'["fe","event",{"all":true},"e",null,1.0]', bytes(range(256)), b"x" * 200_000]
    for body in bodies:
        publisher.publish(body)
    assert [consumer.get() for _ in bodies] == bodies
    assert consumer.bodies.empty()


def test_two_consumers_both_receive(exchange: str, started: list[Any]) -> None:
    one, two = Running(exchange), Running(exchange)
    started += [one, two]
    assert one.queue_name != two.queue_name
    publisher = BusPublisher(URL, exchange, confirm=True)
    started.append(publisher)
    publisher.publish(b"to-everyone")
    assert (one.get(), two.get()) == (b"to-everyone", b"to-everyone")


def test_queue_is_server_named(exchange: str, started: list[Any]) -> None:
    consumer = Running(exchange)
    started.append(consumer)
    assert consumer.queue_name.startswith("amq.gen-")
    assert consumer.consumer.queue_name == consumer.queue_name


def test_consumer_declares_the_exchange(exchange: str, started: list[Any]) -> None:
    assert _exchange_exists(exchange) is False
    started.append(Running(exchange))
    assert _exchange_exists(exchange) is True


def test_stop_ends_the_loop(exchange: str) -> None:
    consumer = Running(exchange)
    assert consumer.thread.is_alive()
    # close=False: the loop notices should_stop after its current drain (bounded wait)
    consumer.consumer.stop(close=False)
    consumer.thread.join(WAIT_S)
    assert not consumer.thread.is_alive()
    assert (consumer.returned, consumer.error) == (True, None)
    assert consumer.consumer.connected is False
    assert consumer.ready.empty()  # no reconnect followed
    # the exclusive auto-delete queue went away with the connection
    with Connection(URL) as conn, pytest.raises(conn.channel_errors):
        conn.channel().queue_declare(consumer.queue_name, passive=True)


def test_stop_with_close_ends_the_loop(exchange: str) -> None:
    consumer = Running(exchange)
    consumer.stop()  # close=True: closes the connection under the loop
    assert not consumer.thread.is_alive()
    assert consumer.ready.empty()
    # how run() ended is not asserted: see test_stop_from_the_handler_ends_cleanly


def test_stop_from_the_handler_ends_cleanly(exchange: str, started: list[Any]) -> None:
    holder: list[BusConsumer] = []
    consumer = Running(exchange, lambda body: holder[0].stop())
    holder.append(consumer.consumer)
    publisher = BusPublisher(URL, exchange)
    started.append(publisher)
    publisher.publish(b"stop")
    consumer.thread.join(WAIT_S)
    assert not consumer.thread.is_alive()
    assert (consumer.returned, consumer.error) == (True, None)


def test_a_failing_handler_does_not_stop_the_consumer(exchange: str,
                                                      started: list[Any]) -> None:
    got: queue.Queue[bytes] = queue.Queue()

    def handler(body: bytes) -> None:
        if body == b"boom":
            raise ValueError("bad message")
        got.put(body)

    consumer = Running(exchange, handler)
    started.append(consumer)
    publisher = BusPublisher(URL, exchange)
    started.append(publisher)
    publisher.publish(b"boom")
    publisher.publish(b"after")
    assert got.get(timeout=WAIT_S) == b"after"
    assert consumer.consumer.connected is True
    assert consumer.consumer.reconnects == 0
    assert consumer.ready.empty()  # no reconnect happened
    assert got.empty()


def test_publisher_reconnects_after_close(exchange: str, started: list[Any]) -> None:
    consumer = Running(exchange)
    started.append(consumer)
    publisher = BusPublisher(URL, exchange)
    started.append(publisher)
    publisher.publish(b"1")
    publisher.close()
    publisher.publish(b"2")
    assert (consumer.get(), consumer.get()) == (b"1", b"2")


def test_a_publisher_left_idle_past_its_heartbeats_publishes_without_a_failure(
        exchange: str, started: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    """A write-only publisher nobody ticks (a backend between requests, the bench between
    phases): the broker drops it after two missed heartbeats; the next publish takes a new
    connection first instead of failing, logging and pausing."""
    consumer = Running(exchange)
    started.append(consumer)
    publisher = BusPublisher(URL, exchange, heartbeat_s=1)
    started.append(publisher)
    publisher.publish(b"before")
    assert consumer.get() == b"before"
    time.sleep(3.5)  # two missed heartbeats and then some: the broker has closed it
    with caplog.at_level("WARNING", logger="service.bus.amqp"):
        publisher.publish(b"after")
    assert consumer.get() == b"after"
    assert not [r for r in caplog.records if "publish failed" in r.getMessage()]


def test_an_idle_consumer_keeps_its_connection_past_its_heartbeats(
        exchange: str, started: list[Any]) -> None:
    """The loop ticks py-amqp's heartbeat every quarter interval while idle (not after every
    message), so the broker, which drops a connection silent for two heartbeats, keeps it;
    and whatever comes next arrives on the same connection."""
    consumer = Running(exchange, heartbeat_s=1)
    started.append(consumer)
    wait_until(lambda: consumer.consumer.connected)
    publisher = BusPublisher(URL, exchange)
    started.append(publisher)
    time.sleep(3.5)
    publisher.publish(b"after the quiet")
    assert consumer.get() == b"after the quiet"
    assert consumer.consumer.reconnects == 0 and consumer.consumer.connected


def _batch_consumer(exchange: str, on_batch: Callable[[list[bytes]], None]
                    ) -> tuple[BusConsumer, threading.Thread]:
    """A consumer with ``on_batch``, its loop in a thread, returned once it is bound."""
    ready: queue.Queue[str] = queue.Queue()
    consumer = BusConsumer(URL, exchange, on_batch=on_batch,
                           on_ready=lambda name, _first: ready.put(name), sleep=time.sleep)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    ready.get(timeout=WAIT_S)
    return consumer, thread


def test_a_backlog_reaches_on_batch_in_order_and_in_batches(exchange: str,
                                                            started: list[Any]) -> None:
    """While the handler is busy, messages wait on the socket; the next hand-over takes
    everything readable at once (bounded), in publish order, each exactly once."""
    batches: list[list[bytes]] = []
    gate, first = threading.Event(), threading.Event()

    def on_batch(bodies: list[bytes]) -> None:
        batches.append(bodies)
        if len(batches) == 1:
            first.set()
            gate.wait(WAIT_S)  # hold the consumer while a backlog builds

    consumer, thread = _batch_consumer(exchange, on_batch)
    pub = BusPublisher(URL, exchange, confirm=True)
    started.append(pub)
    pub.publish(b"m0")
    assert first.wait(WAIT_S)
    for i in range(1, 301):
        pub.publish(b"m%d" % i)
    gate.set()
    assert wait_until(lambda: sum(len(b) for b in batches) >= 301, WAIT_S)
    consumer.stop(close=False)
    pub.publish(b"wake")
    thread.join(WAIT_S)
    got = [body for batch in batches for body in batch if body != b"wake"]
    assert got == [b"m%d" % i for i in range(301)]
    assert max(len(b) for b in batches) > 1  # the backlog came out in batches
    assert max(len(b) for b in batches) <= 256  # bounded by CONSUME_BATCH_MAX


def test_a_backlog_larger_than_one_read_arrives_whole_and_in_order(
        exchange: str, started: list[Any]) -> None:
    """About 1 MB waiting on the socket: the consumer's reads (64 KiB each) split
    deliveries between their frames, and every one still arrives, once, in order."""
    got: list[bytes] = []
    gate = threading.Event()

    def on_batch(bodies: list[bytes]) -> None:
        gate.wait(WAIT_S)  # hold the consumer while the backlog builds
        got.extend(bodies)

    consumer, thread = _batch_consumer(exchange, on_batch)
    pub = BusPublisher(URL, exchange, confirm=True)
    started.append(pub)
    bodies = [b"%05d:" % i + b"y" * (200 + i % 97) for i in range(4000)]
    for body in bodies:
        pub.publish(body)
    gate.set()
    assert wait_until(lambda: len(got) >= len(bodies), WAIT_S)
    # a loop that spun on a part of a frame stopped reading and lost its broker
    assert consumer.reconnects == 0
    consumer.stop(close=False)
    pub.publish(b"wake")
    thread.join(WAIT_S)
    assert [b for b in got if b != b"wake"] == bodies


# --- routing keys ----------------------------------------------------------------------------

RABBIT_API = "http://127.0.0.1:15672/api"
AUTH = ("guest", "guest")


def _queue_keys(queue_name: str) -> set[str]:
    """The routing keys the broker has this queue bound with (its management API)."""
    url = f"{RABBIT_API}/queues/%2F/{urllib.parse.quote(queue_name, safe='')}/bindings"
    return {b["routing_key"] for b in requests.get(url, auth=AUTH, timeout=5).json()
            if b["source"].endswith(".routed")}


def test_a_routed_publish_reaches_only_the_bound_queue(exchange: str,
                                                       started: list[Any]) -> None:
    one, two = Running(exchange), Running(exchange)
    started += [one, two]
    publisher = BusPublisher(URL, exchange)
    started.append(publisher)
    one.consumer.bind("g.s/room")
    assert one.consumer.wait_bound(["g.s/room"], WAIT_S)
    assert _queue_keys(one.queue_name) == {"g.s/room"} and _queue_keys(two.queue_name) == set()
    publisher.publish(b"routed", "g.s/room")
    publisher.publish(b"marker")  # fanout, after it: what two gets first
    assert (one.get(), one.get()) == (b"routed", b"marker")
    assert two.get() == b"marker"
    one.consumer.unbind("g.s/room")
    wait_until(lambda: one.consumer.bound_count() == 0)
    assert _queue_keys(one.queue_name) == set()
    publisher.publish(b"nobody", "g.s/room")
    publisher.publish(b"marker2")
    assert one.get() == b"marker2" and two.get() == b"marker2"


def test_many_binds_land_in_rounds(exchange: str, started: list[Any]) -> None:
    one = Running(exchange)
    started.append(one)
    keys = [f"u.user-{i}" for i in range(1200)]  # more than one round's worth
    for key in keys:
        one.consumer.bind(key)
    assert one.consumer.wait_bound(keys, WAIT_S)
    assert len(_queue_keys(one.queue_name)) == 1200 == one.consumer.bound_count()


def test_bindings_are_back_before_a_reconnected_consumer_is_ready(
        exchange: str, started: list[Any]) -> None:
    one = Running(exchange)
    started.append(one)
    one.consumer.bind("u.alice")
    assert one.consumer.wait_bound(["u.alice"], WAIT_S)
    url = f"{RABBIT_API}/queues/%2F/{urllib.parse.quote(one.queue_name, safe='')}"
    consumers = wait_until(lambda: requests.get(url, auth=AUTH, timeout=5).json().get(
        "consumer_details"), timeout=WAIT_S, interval=0.5)
    name = consumers[0]["channel_details"]["connection_name"]
    requests.delete(f"{RABBIT_API}/connections/{urllib.parse.quote(name, safe='')}",
                    auth=AUTH, timeout=5)
    queue_name, first = one.ready.get(timeout=WAIT_S)  # on_ready: bound, not consuming yet
    assert first is False and queue_name != one.queue_name
    assert _queue_keys(queue_name) == {"u.alice"}
    publisher = BusPublisher(URL, exchange)
    started.append(publisher)
    publisher.publish(b"after", "u.alice")
    assert one.get() == b"after"


def test_a_url_list_moves_on_to_the_next_node(exchange: str) -> None:
    """``a;b``: with nothing listening at ``a``, the consumer and the publisher use ``b``,
    at once (no backoff pause before the round of nodes is over)."""
    dead = "amqp://guest:guest@127.0.0.1:1//"  # nothing listens on port 1
    ready: queue.Queue[str] = queue.Queue()
    bodies: queue.Queue[bytes] = queue.Queue()

    def paused(_: float) -> None:
        pytest.fail("paused although a node was left to try")

    consumer = BusConsumer(f"{dead};{URL}", exchange, bodies.put,
                           on_ready=lambda name, first: ready.put(name), sleep=paused)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    publisher = BusPublisher(f"{dead};{URL}", exchange, sleep=paused)
    try:
        ready.get(timeout=WAIT_S)
        assert consumer.nodes.current == URL
        publisher.publish(b"via the second node", confirm=True)
        assert bodies.get(timeout=WAIT_S) == b"via the second node"
        assert publisher.nodes.current == URL
    finally:
        consumer.stop()
        thread.join(WAIT_S)
        publisher.close()


def _drop_owner_of(queue_name: str) -> None:
    """Close, from the broker's side, the connection that owns this exclusive queue."""
    url = f"{RABBIT_API}/queues/%2F/{urllib.parse.quote(queue_name, safe='')}"
    owner = wait_until(lambda: requests.get(url, auth=AUTH, timeout=5).json().get(
        "owner_pid_details"), timeout=WAIT_S, interval=0.2)
    requests.delete(f"{RABBIT_API}/connections/{urllib.parse.quote(owner['name'], safe='')}",
                    auth=AUTH, timeout=5)
    wait_until(lambda: requests.get(url, auth=AUTH, timeout=5).status_code == 404,
               timeout=WAIT_S, interval=0.2)


def test_a_queue_lost_before_consuming_started_is_reported_lost(
        exchange: str, started: list[Any]) -> None:
    """A queue dies while its ``on_ready`` runs (a frontend's gap replay): the owner is told
    it is lost, so the replay of the next queue starts from this one's bind, not never."""
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def on_ready(name: str, first: bool) -> None:
        events.put(("ready", first))
        if first:
            _drop_owner_of(name)

    consumer = BusConsumer(URL, exchange, lambda _: None, on_ready=on_ready,
                           on_lost=lambda: events.put(("lost", None)), sleep=time.sleep)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        got = [events.get(timeout=WAIT_S) for _ in range(3)]
        assert got == [("ready", True), ("lost", None), ("ready", False)]
        assert consumer.reconnects == 1
    finally:
        consumer.stop()
        thread.join(WAIT_S)


@pytest.mark.parametrize("keepalive", [True, False])
def test_an_on_ready_that_outlasts_two_heartbeats_keeps_its_queue_with_keepalive(
        exchange: str, started: list[Any], keepalive: bool) -> None:
    """The loop does not tick while ``on_ready`` runs: with ``keepalive`` every quarter
    heartbeat the broker keeps the connection; without, it drops it (so the call is what
    keeps it) and the owner hears of the loss."""
    lost: list[bool] = []
    readies: queue.Queue[str] = queue.Queue()

    def on_ready(name: str, first: bool) -> None:
        if first:
            for _ in range(16):  # 4 s: four heartbeats of 1 s
                time.sleep(0.25)
                if keepalive:
                    consumer.keepalive()
        readies.put(name)

    bodies: queue.Queue[bytes] = queue.Queue()
    consumer = BusConsumer(URL, exchange, bodies.put, on_ready=on_ready,
                           on_lost=lambda: lost.append(True), sleep=time.sleep, heartbeat_s=1)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        first_queue = readies.get(timeout=WAIT_S)
        if keepalive:
            wait_until(lambda: consumer.connected)
            publisher = BusPublisher(URL, exchange)
            started.append(publisher)
            publisher.publish(b"kept")
            assert bodies.get(timeout=WAIT_S) == b"kept"
            assert consumer.reconnects == 0 and not lost
        else:
            assert readies.get(timeout=WAIT_S) != first_queue  # a new queue, after a loss
            assert lost == [True] and consumer.reconnects == 1
    finally:
        consumer.stop(close=False)
        waker = BusPublisher(URL, exchange)
        waker.publish(b"wake")
        waker.close()
        thread.join(WAIT_S)
