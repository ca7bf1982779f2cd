"""A frontend's publish and receive paths (mixed into ``Frontend``).

Publish: log first when durable, deliver to local sockets, then one message to the fanout;
concurrent publishes are batched by ``GroupCommit`` (one INSERT, one local fan-out with one
write per socket, one bus message). Receive: drop our own envelopes, build one frame per
message, and hand consecutive events to the hub together so a backlog leaves each socket in
one write.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec
from sqlalchemy import Engine

from service.bus import BROKER_ERRORS, Publisher
from service.cluster import pipeline
from service.cluster.receipts import ReceiptReporter
from service.core import presence
from service.core.config import Settings
from service.core.envelope import (
    Envelope,
    Target,
    decode_bus,
    encode,
    encode_bus,
    event_frame,
    presence_envelope,
    target_of,
    ws_text_frame,
)
from service.core.errors import BadRequest
from service.core.metrics import Meter
from service.core.nexttick import NextTick
from service.delivery.conn import GroupKey
from service.delivery.hub import Delivery, Hub
from service.store.messagelog import Entry
from service.store.replay import LogHead

log = logging.getLogger(__name__)

#: How long presence changes are collected before they go out: one frame per group per
#: interval with the net change of each connection, so a reconnect storm into a big room
#: sends each monitor a few diffs, not a frame per join (Phoenix batches likewise).
PRESENCE_BATCH_S = 0.05

PresenceItem = tuple[GroupKey, presence.PresenceData]


class Publishing:
    """Publishing and bus delivery for a frontend; the host class provides the parts."""

    id: str
    settings: Settings
    engine: Engine
    hub: Hub
    publisher: Publisher
    meter: Meter
    log_head: LogHead

    def init_publishing(self) -> None:
        # concurrent publishes share one log INSERT, one local fan-out and one bus message
        self.log = pipeline.LogPublisher(self.engine, self.publisher, self.id,
                                           before_send=self._deliver_own,
                                           targeted=self.settings.targeted,
                                           idempotency_ttl_s=self.settings.idempotency_ttl_s)
        self.receipts = ReceiptReporter(self.engine, self.id, self.hub)
        # presence changes made in one interval leave coalesced, in one bus message
        self._presence: NextTick[PresenceItem] = NextTick(self._flush_presence,
                                                          PRESENCE_BATCH_S)
        # while the bus is lost: our own durable messages, held back for the gap replay
        self._gap: list[Envelope] | None = None

    def _apply_control(self, env: Envelope) -> None:
        raise NotImplementedError  # the host applies server-side joins, leaves and kicks

    def publish(self, target: Target, event: str, data: msgspec.Raw, *, durable: bool,
                exclude: str | None = None, dedupe_key: str | None = None) -> int | None:
        """Log (when durable), deliver to local sockets, then publish to the fanout.

        Concurrent callers are batched (see ``GroupCommit``): a lone publish runs at once."""
        self.meter.publishes[target.kind] += 1
        return self.log.publish(target, event, data, durable, dedupe_key, exclude)

    def publish_many(self, entries: Sequence[Entry], *, durable: bool
                     ) -> list[int | BadRequest | None]:
        """Publish several messages in order, as one batch when they fit in one: an id (or
        None when transient) per entry, or the BadRequest that entry alone earned."""
        for entry in entries:
            self.meter.publishes[entry.target.kind] += 1
        return self.log.publish_many(entries, durable)

    def publish_receipted(self, target: Target, event: str, data: msgspec.Raw,
                          exclude: str | None = None) -> int:
        """A durable publish with a delivery receipt (``LogPublisher.publish_receipted``)."""
        self.meter.publishes[target.kind] += 1
        return self.log.publish_receipted(target, event, data, exclude)

    def publish_keyed(self, entries: Sequence[Entry], keys: Sequence[str | None]
                      ) -> list[int | BadRequest]:
        """Durable publishes with idempotency keys: a repeat within the TTL answers the
        first id and is not delivered again (``LogPublisher.publish_keyed``)."""
        for entry in entries:
            self.meter.publishes[entry.target.kind] += 1
        return self.log.publish_keyed(entries, keys)

    def _deliver_own(self, envs: list[Envelope]) -> None:
        """A batch we publish reaches our own sockets first (the bus skips our origin).

        While the bus is lost, durable ones wait for the gap replay instead: the others'
        messages of that time come from the log then, and ours must not overtake them."""
        self.log_head.seen(max((e.id for e in envs if e.id is not None), default=None))
        if self._gap is not None:
            self._gap.extend(e for e in envs if e.id is not None)
            envs = [e for e in envs if e.id is None]
        elif len(envs) == 1 and envs[0].receipt:  # a receipt is only asked for alone
            self.receipts.note(envs[0])
        self.hub.deliver_batch([(target_of(env), ws_text_frame(event_frame(env)),
                                 env.exclude, env.ts) for env in envs])

    def begin_bus_gap(self) -> None:
        """The bus is lost: hold our own durable messages until ``end_bus_gap``."""
        if self._gap is None:
            self._gap = []

    def end_bus_gap(self, replayed: list[Envelope], margin_s: float) -> int:
        """Deliver what the log holds since the bus was lost and what we published
        meanwhile, in id order, once each; then deliver live again. A socket opened after
        a message was published did not miss it. Returns how many were delivered."""
        held, self._gap = self._gap or [], None
        merged = {env.id: env for env in replayed}
        for env in held:
            merged.setdefault(env.id, env)
        for msg_id in sorted(i for i in merged if i is not None):
            env = merged[msg_id]
            self.hub.deliver(target_of(env), ws_text_frame(event_frame(env)), env.exclude,
                             opened_by=env.ts + margin_s)
        return len(merged)

    def publish_task_note(self, target: Target, event: str, data: msgspec.Raw,
                          durable: bool, dedupe_key: str | None) -> int | None:
        """``publish`` as ``workers.notify.PublishFn`` (task.queued from this frontend)."""
        return self.publish(target, event, data, durable=durable, dedupe_key=dedupe_key)

    def on_bus_batch(self, bodies: list[bytes]) -> None:
        """Messages from the fanout, in order: skip our own, deliver the rest locally.

        Consecutive events go out together, one write per socket; a presence or control
        envelope in between is applied in its place, so order is kept. A bad envelope is
        logged and skipped; the others are still delivered."""
        run: list[Delivery] = []
        self.meter.bus_messages += len(bodies)
        for body in bodies:
            try:
                envs = decode_bus(body)
            except msgspec.DecodeError:
                log.warning("bus: undecodable message skipped (%d bytes)", len(body))
                continue
            for env in envs:
                if env.origin == self.id:
                    continue
                try:
                    if env.kind == "event":
                        self.meter.bus_events += 1
                        self.log_head.seen(env.id)
                        if env.receipt:
                            self.receipts.note(env)
                        run.append((target_of(env), ws_text_frame(event_frame(env)),
                                    env.exclude, env.ts))
                        continue
                    if run:
                        self.hub.deliver_batch(run)
                        run = []
                    self._deliver(env)
                except Exception:
                    log.exception("bus: failed to handle a %s envelope; skipped", env.kind)
        if run:
            self.hub.deliver_batch(run)

    def _deliver(self, env: Envelope) -> None:
        if env.kind == "event":
            self.hub.deliver(target_of(env), ws_text_frame(event_frame(env)), env.exclude,
                             ts=env.ts)
        elif env.kind == "presence":
            self._deliver_presence((env.target["scope"], env.target["group"]),
                                   presence.decode(env.data))
        elif env.kind == "control":
            self._apply_control(env)

    def _deliver_presence(self, key: GroupKey, change: presence.PresenceData) -> None:
        watchers = self.hub.monitors.get(key)
        if not watchers:
            return
        shared: bytes | None = None
        for conn in list(watchers):
            state = conn.monitors.get(key)
            if state is None:
                continue
            if state.pending is not None:  # its snapshot is still being read
                state.pending.append(change)
                continue
            news = state.filter(change)
            if news is change:  # the common case: one frame for every watcher
                if shared is None:
                    shared = ws_text_frame(encode(presence.frame(key[0], key[1], change)))
                conn.deliver(shared)
            elif news.joins or news.leaves or news.updates:
                conn.send(presence.frame(key[0], key[1], news))

    def publish_presence(self, key: GroupKey, joins: list[presence.Member],
                         leaves: list[presence.Member],
                         updates: list[presence.Member] | None = None,
                         wait: bool = False) -> None:
        """Tell monitors of a group, here and on every other frontend, who joined, left or
        changed its meta: within ``PRESENCE_BATCH_S``, coalesced with the group's other
        changes. ``wait``: return once it has left (an op acknowledges after that)."""
        change = presence.PresenceData(joins=joins, leaves=leaves, updates=updates or [])
        self._presence.add((key, change), wait=wait)

    def _flush_presence(self, items: list[PresenceItem]) -> None:
        """One coalesced change per group: to local monitors, then one bus message."""
        by_group: dict[GroupKey, list[presence.PresenceData]] = {}
        for key, change in items:
            by_group.setdefault(key, []).append(change)
        envs = []
        for key, changes in by_group.items():
            net = changes[0] if len(changes) == 1 else presence.coalesce(changes)
            self._deliver_presence(key, net)
            envs.append(presence_envelope(self.id, key[0], key[1], net.joins, net.leaves,
                                          net.updates))
        self._send_presence(envs)

    def _send_presence(self, envs: list[Envelope]) -> None:
        try:
            self.publisher.publish(encode_bus(envs))
        except BROKER_ERRORS as exc:
            log.warning("%d presence changes not published (broker away): %s", len(envs), exc)
