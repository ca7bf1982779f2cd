"""Which logged messages the ``message.undelivered`` check looks at, and enqueuing it.

Kept free of the Celery app's import (``check`` enqueues by task name on ``current_app``),
so the worker's publisher (``workers/notify.py``, which the app imports) can use it too. A
frontend enqueues through the task object instead (``webhook_hooks``): under gevent
``current_app`` is per greenlet, and a fresh greenlet's is Celery's default app.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from celery import current_app

from service.store.messagelog import Entry

#: The task (``workers/webhook_presence.py``) that asks the registry and emits the event.
TASK = "herald.webhook_undelivered"


def items(entries: Sequence[Entry], ids: Sequence[object],
          has_local: Callable[[str], bool]) -> list[list[Any]]:
    """(id, user, event) of each logged user-targeted message whose user has no socket
    here (``has_local``)."""
    return [[i, e.target.key, e.event] for e, i in zip(entries, ids, strict=True)
            if e.target.kind == "user" and isinstance(i, int) and not has_local(e.target.key)]


def check(entries: Sequence[Entry], ids: Sequence[object]) -> None:
    """A worker's ``on_logged``: enqueue the check inline (a worker holds no sockets)."""
    found = items(entries, ids, lambda _user: False)
    if found:
        current_app.send_task(TASK, args=(found,))
