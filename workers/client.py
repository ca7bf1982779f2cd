"""Starting Herald tasks from Python: what the API, the ``task`` op and backends call."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from sqlalchemy import Engine

from service.core.config import Settings
from service.core.envelope import Target
from service.core.errors import BadRequest, NotFound
from workers.celery_app import app
from workers.notify import NOTIFY_HEADER, QUEUED_HEADER, PublishFn, record_queued

#: The demo tasks (``workers.tasks``): the tasks a client may start, in development only.
DEMO_TASKS = ("demo.sleep", "demo.fail", "demo.noop")


def public_tasks(settings: Settings) -> tuple[str, ...]:
    """Task names a client may start through the ``task`` op or ``POST /api/tasks``: the
    deployment's ``HERALD_PUBLIC_TASKS``, and the demo tasks in development."""
    return settings.public_tasks + (() if settings.production else DEMO_TASKS)


def start_task(name: str, args: dict[str, Any], notify: Target, *,
               settings: Settings, engine: Engine, publish: PublishFn) -> str:
    """Enqueue a public task whose state is reported to ``notify``; return its id.

    The caller's ``engine`` and ``publish`` (a frontend's own: its sockets first) write the
    task record and ``task.queued`` before the task message leaves. Equivalent to
    ``app.send_task(name, kwargs=args, headers={"herald_notify": ...})``, which a backend
    may also call directly (then ``workers.notify`` does the same with its own publisher).
    """
    if name not in public_tasks(settings):
        demo = settings.production and name in DEMO_TASKS
        raise NotFound(f"no task named {name!r}" + (
            " (the demo tasks exist only in development)" if demo else
            " (HERALD_PUBLIC_TASKS lists the tasks clients may start)"))
    if b"\\u0000" in msgspec.json.encode(args):
        # Postgres' jsonb has no NUL: the task record would be lost inside Celery's signal
        raise BadRequest("args must not contain NUL characters")
    task_id = uuid.uuid4().hex
    record_queued(engine, publish, task_id, name, args, notify)
    app.send_task(name, kwargs=args, task_id=task_id,
                  headers={NOTIFY_HEADER: notify.as_json(), QUEUED_HEADER: True})
    return task_id
