"""Task notifications: how task state reaches the clients that asked for it.

Whoever enqueues a task (the HTTP API, a client's ``task`` op, or a backend calling Celery
directly with ``headers={"herald_notify": target}``) passes through ``before_task_publish``
here: the task record is written and ``task.queued`` published before the task message
leaves, so the worker's ``task.started`` cannot overtake it. Inside a frontend the publish
hook is the frontend's own (local sockets first); elsewhere a write-only publisher with
confirms is used.
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
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert

from service import messagelog
from service.bus import BusPublisher
from service.db import get_engine
from service.envelope import Target, raw_json
from service.errors import BadRequest
from service.models import TaskRecord

log = logging.getLogger(__name__)

NOTIFY_HEADER = "herald_notify"
#: How often a write-only publisher services its AMQP heartbeats.
HEARTBEAT_TICK_S = 2.0

#: publish(target, event, data, durable, dedupe_key) -> log id or None
PublishFn = Callable[[Target, str, msgspec.Raw, bool, "str | None"], "int | None"]

_hook: PublishFn | None = None
_lock = threading.Lock()
_publishers: dict[int, WorkerPublisher] = {}


def set_publish_hook(fn: PublishFn | None) -> None:
    """Route notifications through ``fn`` (a frontend installs its own publish)."""
    global _hook
    _hook = fn


class WorkerPublisher:
    """Write-only publisher for workers and backends: log first, then publish with confirms."""

    def __init__(self) -> None:
        from workers.celery_app import settings

        self.settings = settings
        self.origin = f"worker:{socket.gethostname()}:{os.getpid()}"
        self.engine = get_engine(settings.database_url, pool_size=2)
        self.bus = BusPublisher(settings.broker_url, settings.exchange, confirm=True)
        self.log = messagelog.LogPublisher(self.engine, self.bus, self.origin)
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
            pub = _publishers[pid] = WorkerPublisher()
        return pub


def publish(target: Target, event: str, data: Any, durable: bool = False,
            dedupe_key: str | None = None) -> int | None:
    """Publish a notification through the hook or this process's publisher."""
    raw = data if isinstance(data, msgspec.Raw) else raw_json(data)
    if _hook is not None:
        return _hook(target, event, raw, durable, dedupe_key)
    return publisher().publish(target, event, raw, durable, dedupe_key)


def publish_outcome(target: Target, event: str, data: Any, dedupe_key: str,
                    record: Callable[[Connection], None]) -> int | None:
    """A task's durable outcome and its task record, committed together (one round trip
    instead of two), then published. Inside a frontend the hook publishes instead."""
    raw = raw_json(data)
    if _hook is not None:
        from workers.celery_app import settings

        with get_engine(settings.database_url, pool_size=2).begin() as db:
            record(db)
        return _hook(target, event, raw, True, dedupe_key)
    pub = publisher()
    with pub.engine.begin() as db:
        record(db)
        msg_id = messagelog.append_in(db, pub.origin, target, event, raw, dedupe_key)
    pub.log.send_logged(target, event, raw, msg_id)
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


@before_task_publish.connect
def _on_before_publish(sender: str | None = None, headers: dict[str, Any] | None = None,
                       body: Any = None, **_: Any) -> None:
    headers = headers or {}
    target = notify_target(headers.get(NOTIFY_HEADER))
    if target is None:
        return
    task_id = headers.get("id")
    name = headers.get("task") or sender or "?"
    kwargs = body[1] if isinstance(body, (list, tuple)) and len(body) > 1 else {}
    from workers.celery_app import settings

    engine = get_engine(settings.database_url, pool_size=2)
    with engine.begin() as db:
        db.execute(insert(TaskRecord).values(
            id=task_id, name=name, args=kwargs, notify=target.as_json(), state="queued",
        ).on_conflict_do_nothing())
    publish(target, "task.queued", {"task_id": task_id, "name": name})
