"""One frontend instance: its hub, registry writer, bus and heartbeat, wired together.

``Frontend`` is created once per process by the app factory. It owns the publish path
(log first when durable, then local sockets, then the bus) and the receive path (drop
our own envelopes, build one frame, hand it to the matching local sockets). With targeted
routing its hub tells the consumer which routing keys to bind, and a join or a welcome is
answered once the keys it needs are bound (``await_routes``).
"""

from __future__ import annotations

import contextlib
import logging
import random
import resource
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

import gevent
from sqlalchemy.exc import SQLAlchemyError

from service.bus import make_consumer, make_publisher
from service.cluster.drain import (
    DRAIN_BATCH,
    DRAIN_FLUSH_S,
    DRAIN_JITTER_MS,
    DRAIN_PAUSE_S,
    DRAIN_WAIT_S,
)
from service.cluster.leaves import publish_leaves
from service.cluster.membership import Membership, meta_text
from service.cluster.publishing import Publishing
from service.cluster.readiness import DB_PROBE_TIMEOUT_S, DatabaseWatch
from service.core.backoff import Backoff
from service.core.config import Settings
from service.core.limits import UserQuotas
from service.core.metrics import Meter, Rates
from service.core.routes import EVERYTHING
from service.delivery.coalesce import WriteDelay
from service.delivery.conn import CLOSE_DRAINING, CLOSE_REPLACED, Conn
from service.delivery.hub import Hub
from service.store import epoch, registry, replay
from service.store.db import get_engine, server_instance
from service.store.probe import DedicatedProbe

log = logging.getLogger(__name__)

#: Seconds a registry reconcile may wait in the writer's queue before it counts as failed.
RESYNC_WAIT_S = 10.0
#: Seconds before the last frame heard from the broker that a bus gap replay starts at
#: (messages in flight on a link that died then, and clock skew with Postgres).
BUS_GAP_MARGIN_S = 2.0
#: How long a reconnected bus waits for its gap replay before live delivery resumes.
REPLAY_BEFORE_LIVE_S = 10.0
#: Retry delays (first, cap) when the bus-gap replay cannot reach Postgres yet.
RECONNECT_REPLAY_RETRY_MAX_S = 5.0
RECONNECT_REPLAY_RETRY_S = 0.5

class RegistryBusy(SQLAlchemyError):
    """A reconcile did not land in time (Postgres is slow or away): try again later."""


class Frontend(Membership, Publishing):
    """This process's frontend: local delivery plus its share of the cluster."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        self.settings = settings
        self.id = settings.frontend_id_for(port)
        self.host = socket.gethostname()
        self.engine = get_engine(settings.database_url, settings.db_pool_size,
                                 settings.db_tx_idle_timeout_s)
        # readiness asks Postgres on a connection of its own, off the pool (readiness.py)
        self.db_probe = DedicatedProbe(settings.database_url, DB_PROBE_TIMEOUT_S)
        self.db_watch = DatabaseWatch(self.db_probe.check, sleep=gevent.sleep)
        self.meter = Meter()
        self.rates = Rates(self.meter)  # its counters' rates, written at each heartbeat
        self.registry = registry.RegistryWriter(self.engine)
        # the URL picks the backend: amqp:// in production, memory:// in unit tests
        self.publisher = make_publisher(settings.broker_url, settings.exchange,
                                        lock=threading.RLock(),
                                        heartbeat_s=settings.broker_heartbeat_s)
        self.consumer = make_consumer(settings.broker_url, settings.exchange,
                                      on_batch=self.on_bus_batch, on_ready=self._on_bus_ready,
                                      on_lost=self._on_bus_lost, sleep=gevent.sleep,
                                      heartbeat_s=settings.broker_heartbeat_s)
        self.hub = Hub(self.meter, self._on_route if settings.targeted else None)
        #: HERALD_WRITE_DELAY_MS: one flush timer for every socket's delayed deliveries
        self.write_delay = (WriteDelay(settings.write_delay_ms / 1000)
                            if settings.write_delay_ms else None)
        if not settings.targeted:  # what targeted publishers send reaches us too
            self.consumer.bind(EVERYTHING)
        self.registered = False
        self.draining = False
        self.init_publishing()
        self.log_head = replay.LogHead()
        self.epoch = epoch.EpochCache()
        self.quotas = UserQuotas(replay_per_min=settings.user_replay_per_min,
                                 durable_per_min=settings.user_durable_per_min,
                                 tasks_per_min=settings.user_tasks_per_min,
                                 queries_per_min=settings.user_queries_per_min)
        self._bus_lost_at: datetime | None = None
        self._greenlets: list[gevent.Greenlet[Any]] = []
        # ids of connections a resume is moving here (their rows are ours before the hub
        # has them): a reconcile leaves them alone
        self.resuming: set[str] = set()
        self._server: str | None = None  # the Postgres server last heartbeat reached

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Register, start consuming, start the heartbeat and the registry writer."""
        self.registry.start()
        self.db_watch.probe()  # bounded (DB_PROBE_TIMEOUT_S): readiness knows from the start
        self._try_register()
        self._greenlets = [gevent.spawn(self.consumer.run), gevent.spawn(self._heartbeat_loop),
                           gevent.spawn(self._broker_heartbeat_loop),
                           gevent.spawn(self.db_watch.run)]

    def stop(self) -> None:
        """Deregister and stop background work (graceful exit)."""
        self.draining = True
        self.consumer.stop(close=False)
        for g in self._greenlets:
            g.kill(block=True, timeout=2)  # the consumer's finally closes its connection
        self.registry.flush(timeout_s=5.0)
        try:
            registry.deregister_frontend(self.engine, self.id)
        except SQLAlchemyError as exc:
            log.warning("could not deregister %s: %s", self.id, exc)
        self.publisher.close()
        self.db_probe.close()

    def drain(self) -> None:
        """Stop taking sockets, close every socket with 1012 in batches, wait (bounded).

        Batches with a pause between them and a jittered retry hint in the close reason
        spread the reconnect storm over the surviving frontends.
        """
        self.draining = True
        self._safe_heartbeat()  # draining=true in the registry
        conns = list(self.hub.conns.values())
        log.info("draining %d sockets", len(conns))
        for start in range(0, len(conns), DRAIN_BATCH):
            for conn in conns[start:start + DRAIN_BATCH]:
                hint_ms = random.randint(0, DRAIN_JITTER_MS)
                conn.close(CLOSE_DRAINING, f"draining; retry_ms={hint_ms}")
            gevent.sleep(DRAIN_PAUSE_S)
        deadline = time.monotonic() + DRAIN_WAIT_S
        while self.hub.conns and time.monotonic() < deadline:
            gevent.sleep(0.05)
        self.registry.flush(timeout_s=DRAIN_FLUSH_S)

    def _try_register(self) -> None:
        try:
            # read first: should the server change in between, the next heartbeat sees it
            server = server_instance(self.engine)
            stale = registry.register_frontend(self.engine, self.id, self.host,
                                               self.consumer.queue_name)
            self.registered = True
            self._server = server
        except SQLAlchemyError as exc:
            log.warning("frontend %s could not register yet: %s", self.id, exc.__class__.__name__)
            return
        if stale:  # an earlier run with our id left members behind: tell their monitors
            publish_leaves(stale, self.publisher.publish, self.id)

    def _heartbeat_loop(self) -> None:
        resync = False  # owed until it succeeds: Postgres may fail again in between
        while True:
            gevent.sleep(self.settings.heartbeat_s)
            try:
                if not self.registered:
                    self._try_register()
                    resync = resync or self.registered
                elif not registry.heartbeat(self.engine, self.id, self.consumer.queue_name,
                                            self.draining, self.rates.sample()):
                    log.warning("frontend %s was swept while alive; re-registering", self.id)
                    self._try_register()
                    resync = True
                if resync and self.registered:
                    self._resync_registry()
                    resync = False
                self._watch_server()
            except SQLAlchemyError as exc:
                log.warning("heartbeat failed: %s", exc.__class__.__name__)

    def _watch_server(self) -> None:
        """After a failover (or a restart) the server may lack registry writes the old
        one acknowledged without its standby (``durability.REGISTRY``), or a batch in
        doubt: write the registry again from the live sockets."""
        server = server_instance(self.engine)
        if self._server is not None and server != self._server and self.registered:
            log.warning("Postgres is a different server now (started %s); reconciling the "
                        "registry with %d local sockets", server, len(self.hub.conns))
            self._resync_registry()
        self._server = server

    def _broker_heartbeat_loop(self) -> None:
        """The publisher's AMQP heartbeats (the consumer services its own)."""
        while True:
            gevent.sleep(self.settings.broker_heartbeat_s / 4)
            self.publisher.heartbeat_tick()

    def _resync_registry(self) -> None:
        """Make this frontend's rows in the registry what its hub holds (after a sweep,
        an outage or a failover): one reconcile, ordered with the writes around it.

        A socket whose session was resumed on another socket meanwhile has lost it: the
        newer one wins, so this one is closed with 4409 (cut off, it could not hear the
        eviction). The others' groups are announced again (a sweep announced them gone).
        Raises SQLAlchemyError while Postgres is away (the caller tries again)."""
        conns = list(self.hub.conns.values())
        memberships = [(c.id, scope, group, meta_text(c.metas.get((scope, group))))
                       for c in conns for scope, group in c.groups]
        done = self.registry.submit(
            "reconcile", frontend_id=self.id, keep=[c.id for c in conns] + list(self.resuming),
            ids=[c.id for c in conns], users=[c.user_id for c in conns],
            gens=[c.gen for c in conns],
            mids=[m[0] for m in memberships], scopes=[m[1] for m in memberships],
            groups=[m[2] for m in memberships], metas=[m[3] for m in memberships])
        if not registry.settled(done, RESYNC_WAIT_S):
            raise RegistryBusy("the registry reconcile is still queued")
        owners = registry.owners(self.engine, [c.id for c in conns])
        moved = 0
        for conn in conns:
            if owners.get(conn.id) == self.id:
                for key in conn.groups:
                    self.publish_presence(key, [self.member_info(conn, key)], [])
            elif self.hub.conns.get(conn.id) is conn and conn.id not in self.resuming:
                moved += 1
                conn.moved = True  # its row is another socket's now: leave it alone
                conn.close(CLOSE_REPLACED, "resumed on another socket")
                self.hub.remove(conn)
        log.info("registry reconciled: %d sockets, %d resumed elsewhere closed",
                 len(conns), moved)

    def _on_bus_ready(self, queue: str, first: bool) -> None:
        if self.registered:
            gevent.spawn(self._safe_heartbeat)
        if not first:
            self.meter.bus_reconnects += 1
            # replay before live messages flow again (they wait in the new queue), but
            # never hold the bus for long: past the bound the replay finishes alongside.
            # Meanwhile the loop does not tick, so heartbeats go from here: a replay that
            # outlasts two of them would otherwise lose the queue it is replaying for
            replaying = gevent.spawn(self._replay_bus_gap)
            deadline = time.monotonic() + REPLAY_BEFORE_LIVE_S
            tick = self.settings.broker_heartbeat_s / 4 or REPLAY_BEFORE_LIVE_S
            while not replaying.dead and (left := deadline - time.monotonic()) > 0:
                replaying.join(timeout=min(left, tick))
                self.consumer.keepalive()

    def _on_bus_lost(self) -> None:
        log.warning("frontend %s lost its bus queue", self.id)
        self.begin_bus_gap()
        if self._bus_lost_at is None:
            # from the last frame heard, less a margin for messages then in flight:
            # a cut link is noticed two broker heartbeats after it went quiet
            seen = min(time.time(), self.consumer.last_seen) - BUS_GAP_MARGIN_S
            self._bus_lost_at = datetime.fromtimestamp(seen, UTC)

    def _replay_bus_gap(self) -> None:
        """Our old queue died with its connection: deliver to our sockets every durable
        message logged while we were away (clients drop the ones they already have)."""
        lost_at, self._bus_lost_at = self._bus_lost_at, None
        if lost_at is None:
            self.end_bus_gap([], replay.OPEN_MARGIN_S)
            return
        backoff = Backoff(RECONNECT_REPLAY_RETRY_S, RECONNECT_REPLAY_RETRY_MAX_S)
        while True:
            try:
                envelopes = replay.since(self.engine, lost_at)
                break
            except SQLAlchemyError as exc:
                log.warning("bus gap replay waits for the database: %s", exc.__class__.__name__)
                gevent.sleep(backoff.next())
        # no switch from here on: what we publish next is delivered live, after these
        delivered = self.end_bus_gap(envelopes, replay.OPEN_MARGIN_S)
        self.meter.replayed += delivered
        log.info("replayed %d durable messages after a bus reconnect", delivered)

    def count_overflow(self, conn: Conn) -> None:
        self.meter.outbox_overflows += 1

    def count_replayed(self, n: int) -> None:
        self.meter.replayed += n

    def gauges(self) -> dict[str, float]:
        """Current sizes, for /metrics."""
        conns = self.hub.conns.values()
        return {"connections": len(self.hub.conns),
                "memberships": sum(len(c.groups) for c in conns),
                "monitors": sum(len(c.monitors) for c in conns),
                "registry_pending_writes": self.registry.pending(),
                "bus_bindings": self.consumer.bound_count(),
                "cpu_seconds": _cpu_seconds()}

    def _safe_heartbeat(self) -> None:
        with contextlib.suppress(SQLAlchemyError):
            registry.heartbeat(self.engine, self.id, self.consumer.queue_name, self.draining)

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /readyz: instant, from state kept up to date elsewhere (the
        consumer's connection, the drain flag, the database watch), never the pool."""
        if self.draining:
            return False, "draining"
        if not self.consumer.connected:
            return False, "broker: not consuming"
        db_ready, why = self.db_watch.status()  # a blip is tolerated: readiness.py says why
        if not db_ready:
            return False, why
        if not self.registered:
            return False, "not registered"
        return True, why


def _cpu_seconds() -> float:
    """This process's CPU time from getrusage, exact to the microsecond (the standard
    ``process_cpu_seconds_total`` counts /proc's 10 ms ticks)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
