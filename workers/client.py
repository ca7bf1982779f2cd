"""Starting Herald tasks from Python: what the API, the ``task`` op and backends call."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from service.envelope import Target
from service.errors import BadRequest, NotFound
from workers.celery_app import app
from workers.notify import NOTIFY_HEADER
from workers.tasks import PUBLIC_TASKS


def start_task(name: str, args: dict[str, Any], notify: Target) -> str:
    """Enqueue a public task whose state is reported to ``notify``; return its id.

    Equivalent to ``app.send_task(name, kwargs=args, headers={"herald_notify": ...})``,
    which a backend may also call directly.
    """
    if name not in PUBLIC_TASKS:
        raise NotFound(f"no task named {name!r}")
    if b"\\u0000" in msgspec.json.encode(args):
        # Postgres' jsonb has no NUL: the task record would be lost inside Celery's signal
        raise BadRequest("args must not contain NUL characters")
    task_id = uuid.uuid4().hex
    app.send_task(name, kwargs=args, task_id=task_id,
                  headers={NOTIFY_HEADER: notify.as_json()})
    return task_id
