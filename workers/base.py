"""``HeraldTask``: a Celery task that reports its life to the target that asked.

queued (at enqueue, see ``notify``), started, progress, succeeded, failed. The final
outcome is durable: written to the log under a key derived from the task id, so a task
that runs again after its worker died publishes its outcome under the same id.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from sqlalchemy import Connection, func, update
from sqlalchemy.dialects.postgresql import insert

from service.core.envelope import Target
from service.store.models import TaskRecord
from workers import notify

log = logging.getLogger(__name__)

#: Longest error text kept in the task record and the task.failed event.
ERROR_MAX_CHARS = 2000


class HeraldTask(Task):  # type: ignore[misc]  # Celery ships no type hints
    """Base class for tasks whose state goes to a Herald notify target."""

    abstract = True

    def _target(self) -> Target | None:
        value = self.request.get(notify.NOTIFY_HEADER)
        if value is None and isinstance(getattr(self.request, "headers", None), dict):
            value = self.request.headers.get(notify.NOTIFY_HEADER)
        return notify.notify_target(value)

    def _record(self, task_id: str, **values: Any) -> None:
        with notify.publisher().engine.begin() as db:
            self._record_in(db, task_id, **values)

    def _record_in(self, db: Connection, task_id: str, **values: Any) -> None:
        target = self._target()
        result = db.execute(update(TaskRecord).where(TaskRecord.id == task_id)
                            .values(updated_at=func.now(), **values))
        if not result.rowcount:
            # enqueued by a process without Herald's signal handler: record it now
            db.execute(insert(TaskRecord).values(
                id=task_id, name=self.name, notify=target.as_json() if target else None,
                **values).on_conflict_do_nothing())

    def _outcome(self, task_id: str, event: str, data: dict[str, Any],
                 **values: Any) -> None:
        """Record the outcome and publish it durably: one transaction for both."""
        target = self._target()
        if target is None:
            self._record(task_id, **values)
            return
        payload = {"task_id": task_id, "name": self.name, **data}
        notify.publish_outcome(target, event, payload, f"task:{task_id}:outcome",
                               lambda db: self._record_in(db, task_id, **values))

    def _notify(self, event: str, data: dict[str, Any], durable: bool = False,
                dedupe_key: str | None = None) -> int | None:
        target = self._target()
        if target is None:
            return None
        payload = {"task_id": self.request.id, "name": self.name, **data}
        return notify.publish(target, event, payload, durable=durable, dedupe_key=dedupe_key)

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        self._notify("task.started", {})  # the client hears first; the record follows
        self._record(task_id, state="started")

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress (0..1) to the notify target and the task record."""
        fraction = min(1.0, max(0.0, float(fraction)))
        self._record(self.request.id, progress=fraction)
        data: dict[str, Any] = {"progress": fraction}
        if message is not None:
            data["message"] = message
        self._notify("task.progress", data)

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        self._outcome(task_id, "task.succeeded", {"result": retval}, state="succeeded",
                      progress=1.0, result=retval)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        error = f"{exc.__class__.__name__}: {exc}"[:ERROR_MAX_CHARS]
        self._outcome(task_id, "task.failed", {"error": error}, state="failed", error=error)
