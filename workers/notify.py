"""Task notifications: how task state reaches the clients that asked for it.

The task record is written and ``task.queued`` published before the task message leaves,
so the worker's ``task.started`` cannot overtake it. A frontend does that itself, through
its own publish (``workers.client.start_task``, given the frontend's engine and publish:
local sockets first), and marks the message ``herald_queued``; a backend calling Celery
directly with ``headers={"herald_notify": target}`` gets the same from the
``before_task_publish`` handler here, through this process's write-only publisher (with
confirms). Nothing here reaches back into a frontend.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
from celery.signals import before_task_publish
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects.postgresql import insert

from service.bus import make_publisher
from service.cluster import pipeline
from service.core.config import Settings
from service.core.envelope import Target, raw_json
from service.core.errors import BadRequest
from service.store import messagelog
from service.store.db import get_engine
from service.store.models import TaskRecord

log = logging.getLogger(__name__)

NOTIFY_HEADER = "herald_notify"
#: Set by a starter that recorded the task and published task.queued itself.
QUEUED_HEADER = "herald_queued"
#: How often a write-only publisher services its AMQP heartbeats.
HEARTBEAT_TICK_S = 2.0

#: publish(target, event, data, durable, dedupe_key) -> log id or None
PublishFn = Callable[[Target, str, msgspec.Raw, bool, "str | None"], "int | None"]

_lock = threading.Lock()
_publishers: dict[int, WorkerPublisher] = {}


class WorkerPublisher:
    """Write-only publisher for workers and backends: log first, then publish with confirms."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.origin = f"worker:{socket.gethostname()}:{os.getpid()}"
        self.engine = get_engine(settings.database_url, 2, settings.db_tx_idle_timeout_s)
        self.bus = make_publisher(settings.broker_url, settings.exchange, confirm=True,
                                  heartbeat_s=settings.broker_heartbeat_s)
        self.log = pipeline.LogPublisher(self.engine, self.bus, self.origin,
                                           targeted=self.settings.targeted)
        if settings.webhook_urls:  # message.undelivered for task outcomes too
            from workers import undelivered

            self.log.on_logged = undelivered.check
        # keep the broker connection's heartbeats going between publishes
        threading.Thread(target=self._tick, name="herald-heartbeat", daemon=True).start()

    def _tick(self) -> None:
        while True:
            time.sleep(HEARTBEAT_TICK_S)
            self.bus.heartbeat_tick()

    def publish(self, target: Target, event: str, data: msgspec.Raw, durable: bool,
                dedupe_key: str | None = None) -> int | None:
        return self.log.publish(target, event, data, durable, dedupe_key)


def publisher() -> WorkerPublisher:
    """This process's write-only publisher (one per process: fork-safe)."""
    pid = os.getpid()
    with _lock:
        pub = _publishers.get(pid)
        if pub is None:
            # this process's settings (a worker's, a backend's): read here, not imported
            # from the Celery app, which imports this module for its signal handler
            pub = _publishers[pid] = WorkerPublisher(Settings.from_env())
        return pub


def publish(target: Target, event: str, data: Any, durable: bool = False,
            dedupe_key: str | None = None) -> int | None:
    """Publish a notification through this process's write-only publisher."""
    raw = data if isinstance(data, msgspec.Raw) else raw_json(data)
    return publisher().publish(target, event, raw, durable, dedupe_key)


def publish_outcome(target: Target, event: str, data: Any, dedupe_key: str,
                    record: Callable[[Connection], None]) -> int | None:
    """A task's durable outcome and its task record, committed together (one round trip
    instead of two), then published."""
    raw = raw_json(data)
    pub = publisher()
    with pub.engine.begin() as db:
        record(db)
        msg_id = messagelog.append_in(db, pub.origin, target, event, raw, dedupe_key)
    pub.log.send_logged(target, event, raw, msg_id)
    if pub.log.on_logged is not None:
        pub.log.on_logged([messagelog.Entry(target, event, raw)], [msg_id])
    return msg_id


def notify_target(value: Any) -> Target | None:
    """The notify target from a header value, or None when absent or unusable."""
    if value is None:
        return None
    try:
        return Target.from_json(value)
    except BadRequest:  # a bad header means nobody to notify, not a crash
        log.warning("ignoring unusable %s header: %r", NOTIFY_HEADER, value)
        return None


def record_queued(engine: Engine, publish_fn: PublishFn, task_id: str, name: str,
                  kwargs: Any, target: Target) -> None:
    """Write the task record, then publish ``task.queued`` to ``target`` with ``publish_fn``
    (both before the task message leaves)."""
    with engine.begin() as db:
        db.execute(insert(TaskRecord).values(
            id=task_id, name=name, args=kwargs, notify=target.as_json(), state="queued",
        ).on_conflict_do_nothing())
    publish_fn(target, "task.queued", raw_json({"task_id": task_id, "name": name}), False,
               None)


@before_task_publish.connect
def _on_before_publish(sender: str | None = None, headers: dict[str, Any] | None = None,
                       body: Any = None, **_: Any) -> None:
    headers = headers or {}
    if headers.get(QUEUED_HEADER):
        return  # its starter (a frontend) recorded it and told the target already
    target = notify_target(headers.get(NOTIFY_HEADER))
    if target is None:
        return
    task_id = headers.get("id")
    name = headers.get("task") or sender or "?"
    kwargs = body[1] if isinstance(body, (list, tuple)) and len(body) > 1 else {}
    pub = publisher()
    record_queued(pub.engine, pub.publish, str(task_id), name, kwargs, target)
