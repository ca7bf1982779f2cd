"""Issue 4: RabbitMQ and Postgres restarted mid-stream; everything recovers by itself."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from service.core.envelope import Target
from service.pg import Herald
from tests.support import Client, ResumingClient, api, wait_until

#: Both restart the RabbitMQ and Postgres that every other test uses.
pytestmark = pytest.mark.exclusive

CLIENTS = 60
MESSAGES = 90
INTERVAL_S = 0.05


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


@contextmanager
def rabbitmq_down() -> Iterator[None]:
    """Stop the RabbitMQ application (the node stays up), start it again no matter what."""
    _run("rabbitmqctl", "stop_app")
    try:
        yield
    finally:
        _run("rabbitmqctl", "start_app")
        _run("rabbitmqctl", "await_startup")


def _pg_cluster() -> tuple[str, str]:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    return version, "main"


def test_rabbitmq_restart_loses_no_durable_message(cluster: Any, token: Any) -> None:
    a, b = cluster.frontends("a", "b")
    cluster.worker()
    group = f"g-{uuid.uuid4().hex[:6]}"  # this test's own traffic only
    clients = [ResumingClient((a if i % 2 else b).ws_url, token(f"u-{uuid.uuid4().hex[:6]}"))
               for i in range(CLIENTS)]
    for c in clients:
        assert c.current.request("join", group=group)["op"] == "ack"
    herald = Herald()
    ids: list[int] = []
    third = threading.Event()

    def stream() -> None:
        for i in range(MESSAGES):
            msg_id = herald.publish(Target.group(group), "tick", {"i": i})  # log, then publish
            assert msg_id is not None
            ids.append(msg_id)
            if i == MESSAGES // 3:
                third.set()
            time.sleep(INTERVAL_S)

    publisher = threading.Thread(target=stream, daemon=True)
    publisher.start()
    assert third.wait(30)
    with rabbitmq_down():
        time.sleep(3)
    publisher.join(180)
    assert not publisher.is_alive() and len(ids) == MESSAGES

    a.wait_ready(60)
    b.wait_ready(60)
    for n, c in enumerate(clients):
        wait_until(lambda c=c: set(ids) <= set(c.durable_ids()), timeout=60)
        assert c.unique_in_order() == sorted(ids), f"client {n}"
        assert not c.current.closed.is_set()  # the sockets never dropped

    # the worker reconnected by itself too
    r = api(a, "POST", "/api/tasks", json={"name": "demo.noop", "args": {},
                                           "notify": {"user": "after-outage"}})
    task_id = r.json()["task_id"]
    wait_until(lambda: api(a, "GET", f"/api/tasks/{task_id}").json()["state"] == "succeeded",
               timeout=90)
    herald.close()


def test_postgres_restart_keeps_transient_flowing(cluster: Any, token: Any,
                                                  engine: Any) -> None:
    a, b = cluster.frontends("a", "b")
    room = f"room-{uuid.uuid4().hex[:6]}"
    listeners = [Client((a if i % 2 else b).ws_url) for i in range(20)]
    ids = [c.hello(token(f"u-{uuid.uuid4().hex[:6]}"))["connection_id"] for c in listeners]
    for c in listeners:
        c.request("join", group=room)
    sent = 0
    version, name = _pg_cluster()
    restart = threading.Thread(target=_run, args=(
        "pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart", "-m", "fast"))
    restart.start()
    deadline = time.monotonic() + 20
    while restart.is_alive() and time.monotonic() < deadline:
        r = api(a, "POST", "/api/publish", json={"target": {"group": room}, "event": "px",
                                                 "data": sent, "durable": False})
        assert r.status_code == 202, r.text  # transient publishing never needs Postgres
        sent += 1
        time.sleep(0.02)
    restart.join(60)
    for _ in range(20):  # and a few more once it is back
        api(a, "POST", "/api/publish", json={"target": {"group": room}, "event": "px",
                                             "data": sent, "durable": False})
        sent += 1
    for c in listeners:
        c.wait_for(lambda f: f.get("event") == "px" and f["data"] == sent - 1)
        assert [e["data"] for e in c.events("px")] == list(range(sent))

    # the registry is consistent afterwards: a join made now lands, members are right
    late = Client(b.ws_url)
    late_id = late.hello(token("late"))["connection_id"]
    late.request("join", group=room)
    wait_until(lambda: a.alive() and api(a, "GET", "/readyz").status_code == 200, timeout=60)
    members = wait_until(lambda: {m["connection_id"] for m in api(
        a, "GET", f"/api/groups/default/{room}/members").json()} == set(ids) | {late_id})
    assert members
