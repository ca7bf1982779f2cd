"""A backend that enqueues with Celery directly gets the same notifications as the API."""

from __future__ import annotations

from typing import Any

from tests.support import Client, api


def test_send_task_with_notify_header_notifies_the_user(cluster: Any, token: Any) -> None:
    from workers.celery_app import app  # the backend's side: the same Celery app

    a = cluster.frontend("a")
    cluster.worker()
    client = Client(a.ws_url)
    client.hello(token("backend-user"))

    result = app.send_task("demo.sleep", kwargs={"seconds": 0.2, "steps": 2},
                           headers={"herald_notify": {"user": "backend-user"}})
    task_id = result.id
    client.wait_for(lambda f: f.get("event") == "task.succeeded"
                    and f["data"]["task_id"] == task_id)
    names = [e["event"] for e in client.events() if e["data"].get("task_id") == task_id]
    assert names == ["task.queued", "task.started", "task.progress", "task.progress",
                     "task.succeeded"]
    status = api(a, "GET", f"/api/tasks/{task_id}").json()
    assert status["state"] == "succeeded" and status["name"] == "demo.sleep"


def test_apply_async_on_the_task_object_works_too(cluster: Any, token: Any) -> None:
    from workers.tasks import demo_fail

    a = cluster.frontend("a")
    cluster.worker()
    client = Client(a.ws_url)
    client.hello(token("backend-user-2"))
    result = demo_fail.apply_async(kwargs={"message": "nope"},
                                   headers={"herald_notify": {"user": "backend-user-2"}})
    failed = client.wait_for(lambda f: f.get("event") == "task.failed")[0]
    assert failed["data"]["task_id"] == result.id and "nope" in failed["data"]["error"]
    assert isinstance(failed["id"], int)


def test_unknown_task_and_unauthorized_api(cluster: Any, token: Any) -> None:
    a = cluster.frontend("a")
    r = api(a, "POST", "/api/tasks", json={"name": "no.such", "args": {},
                                           "notify": {"user": "x"}})
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert api(a, "POST", "/api/publish", key="", json={}).status_code == 401
    r = api(a, "POST", "/api/publish", key="wrong", json={"target": {"all": True}, "event": "e"})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert api(a, "GET", "/api/tasks/nope").status_code == 404
    assert api(a, "POST", "/api/publish", data="nope",
               headers={"Content-Type": "application/json"}).status_code == 400
    client = Client(a.ws_url)
    client.hello(token("u"))
    err = client.request("task", name="demo.nothing", args={})  # granted by demo.*, missing
    assert err["op"] == "error" and err["code"] == "not_found"
    err = client.request("task", name="no.such", args={})  # not granted: no name is revealed
    assert err["op"] == "error" and err["code"] == "forbidden"
    err = client.request("task", name="demo.sleep", args={"seconds": "x"})
    assert err["op"] == "ack"  # a bad argument fails the task, not the socket
