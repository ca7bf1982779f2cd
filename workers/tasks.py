"""Demo tasks (and a no-op for the benchmark): development mode only.

A production worker does not import this module (``celery_app``), and clients may start
these only in development (``workers.client.DEMO_TASKS``)."""

from __future__ import annotations

import time
from typing import Any

from workers.base import HeraldTask
from workers.celery_app import app

#: Bounds on demo.sleep so a client cannot park a worker for long.
MAX_SLEEP_S = 600.0
MAX_STEPS = 1000


@app.task(bind=True, base=HeraldTask, name="demo.sleep")
def demo_sleep(self: HeraldTask, seconds: float = 3.0, steps: int = 5) -> dict[str, Any]:
    """Sleep ``seconds`` in ``steps`` equal parts, reporting progress after each."""
    seconds = min(MAX_SLEEP_S, max(0.0, float(seconds)))
    steps = min(MAX_STEPS, max(1, int(steps)))
    for i in range(steps):
        time.sleep(seconds / steps)
        self.progress((i + 1) / steps, f"step {i + 1} of {steps}")
    return {"slept": seconds, "steps": steps}


@app.task(bind=True, base=HeraldTask, name="demo.fail")
def demo_fail(self: HeraldTask, message: str = "demo failure") -> None:
    """Fail on purpose, to show task.failed."""
    raise RuntimeError(str(message)[:200])


@app.task(bind=True, base=HeraldTask, name="demo.noop")
def demo_noop(self: HeraldTask) -> dict[str, Any]:
    """Do nothing: measures Herald's own task round trip."""
    return {}
