"""Issue 4: a worker killed mid-task; the task runs again and its outcome arrives once."""

from __future__ import annotations

import uuid
from typing import Any

from tests.support import Client, api


def test_sigkilled_worker_task_reruns_and_succeeds_once(cluster: Any, token: Any) -> None:
    fe = cluster.frontend("a")
    first = cluster.worker()
    user = f"u-{uuid.uuid4().hex[:6]}"
    client = Client(fe.ws_url)
    client.hello(token(user))
    task_id = client.request("task", name="demo.sleep", args={"seconds": 3, "steps": 6})["task_id"]
    client.wait_for(lambda f: f.get("event") == "task.progress")  # it is running on `first`

    first.kill()  # SIGKILL to the worker and its pool children
    cluster.worker()  # the message was never acked: the broker hands it to this one
    client.wait_for(lambda f: f.get("event") == "task.succeeded", timeout=60)
    # a marker after the outcome: anything sent twice would have arrived by now
    api(fe, "POST", "/api/publish", json={"target": {"user": user}, "event": "marker",
                                          "durable": False})
    client.wait_for(lambda f: f.get("event") == "marker")
    events = [e for e in client.events() if e["data"] and e["data"].get("task_id") == task_id]
    names = [e["event"] for e in events]
    assert names.count("task.succeeded") == 1
    assert names.count("task.started") == 2  # it really ran twice
    status = api(fe, "GET", f"/api/tasks/{task_id}").json()
    assert status["state"] == "succeeded"
