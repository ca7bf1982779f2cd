"""Flower, started by ``manage.py run flower``, sees Herald's tasks and the broker."""

from __future__ import annotations

from typing import Any

import requests

from tests.conftest import ENV
from tests.support import WAIT_S, Proc, api, free_port, wait_until

#: Flower's HTTP API answers 401 without auth unless FLOWER_UNAUTHENTICATED_API is set.
#: Basic auth is what a deployment should use, so the test runs Flower with it
#: (Flower reads FLOWER_* environment variables as its options).
FLOWER_USER, FLOWER_PASSWORD = "herald", "flower-test-password"


def _flower(cluster: Any) -> tuple[Proc, str, tuple[str, str]]:
    port = free_port()
    env = {**ENV, "HERALD_FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}"}
    proc = Proc(f"flower-{port}", ["run", "flower", "--port", str(port)], env, port=port)
    cluster.procs.append(proc)  # stopped by its PID with the rest of the cluster
    url = f"http://127.0.0.1:{port}"
    auth = (FLOWER_USER, FLOWER_PASSWORD)

    def up() -> bool:
        if not proc.alive():
            raise RuntimeError(f"flower exited: see {proc.log_path}")
        try:
            return requests.get(url + "/healthcheck", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_until(up, timeout=WAIT_S)
    return proc, url, auth


def _get(url: str, auth: tuple[str, str], **params: Any) -> Any:
    try:
        r = requests.get(url, auth=auth, params=params, timeout=5)
    except requests.RequestException:
        return None
    return r.json() if r.status_code == 200 else None


def test_flower_sees_the_task_and_the_worker(cluster: Any) -> None:
    worker = cluster.worker()
    flower, url, auth = _flower(cluster)
    mine = f"herald-{worker.pid}@"  # the worker's name: manage.py's PID, kept by exec

    # Flower has consumed the worker's events (heartbeats) once its event state has the
    # worker: from then on it cannot miss the task's events (name comes from task-received)
    def alive_in_events() -> bool:
        status = _get(f"{url}/api/workers", auth, status="true") or {}
        return any(name.startswith(mine) and alive for name, alive in status.items())

    wait_until(alive_in_events, timeout=WAIT_S, interval=0.5)
    frontend = cluster.frontend("fl")

    r = api(frontend, "POST", "/api/tasks", json={
        "name": "demo.sleep", "args": {"seconds": 0.2, "steps": 2}, "notify": {"user": "x"}})
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]

    # Flower learns of tasks from Celery's events: poll (bounded) until it has the outcome
    def succeeded() -> Any:
        info = _get(f"{url}/api/task/info/{task_id}", auth)
        return info if info and info.get("state") == "SUCCESS" else None

    try:
        info = wait_until(succeeded, timeout=WAIT_S, interval=0.5)
    except TimeoutError:
        raise AssertionError(
            f"Flower never reported {task_id} as SUCCESS: last "
            f"{_get(f'{url}/api/task/info/{task_id}', auth)}; logs {flower.log_path}, "
            f"{worker.log_path}") from None
    assert info["name"] == "demo.sleep" and info["uuid"] == task_id

    listed = _get(f"{url}/api/tasks", auth, taskname="demo.sleep")
    assert listed and listed[task_id]["state"] == "SUCCESS"
    assert listed[task_id]["name"] == "demo.sleep"

    # the worker also answers Flower's inspect broadcast (the Workers tab)
    workers = wait_until(lambda: _get(f"{url}/api/workers", auth, refresh="true"),
                         timeout=WAIT_S, interval=0.5)
    assert any(name.startswith(mine) for name in workers), list(workers)

    # the broker page reads RabbitMQ's management API (--broker_api from HERALD_RABBITMQ_API)
    page = requests.get(f"{url}/broker", auth=auth, timeout=10)
    assert page.status_code == 200, page.text[:500]
    assert ENV["HERALD_TASK_QUEUE"] in page.text  # the queue's row, from the management API

    # without credentials the API is refused
    assert requests.get(f"{url}/api/workers", timeout=5).status_code == 401
    # the credentials reach Flower through its environment: not on its command line,
    # which any user of the machine can read (ps, /proc/<pid>/cmdline)
    with open(f"/proc/{flower.pid}/cmdline", "rb") as f:
        argv = f.read()
    assert b"flower" in argv and FLOWER_PASSWORD.encode() not in argv
    assert b"guest:guest" not in argv  # nor the broker API's password
