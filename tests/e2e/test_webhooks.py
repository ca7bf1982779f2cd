"""Webhooks end to end: real frontends, a real Celery worker (and beat), and a real HTTP
receiver started here on 127.0.0.1 that records every request and checks its signature."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from service.core.webhook_signature import HEADER, verify
from tests.support import WAIT_S, Client, api, wait_until

SECRET = "test-webhook-secret"
#: Short windows for tests: offline/vacated after 1 s; first retry after 0.2 s.
FLAP_S = "1"
RETRY_BASE_S = "0.2"
#: How long a test watches for an event that must not come (several flap windows).
QUIET_S = 3.5


class Receiver:
    """An http.server on a free port recording each POST; ``fail_first`` answers 500
    to the first request of each event id, then 200."""

    def __init__(self, fail_first: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                event = json.loads(body)
                with receiver.lock:
                    seen = any(r["event"]["id"] == event["id"] for r in receiver.requests)
                    status = 500 if receiver.fail_first and not seen else 200
                    receiver.requests.append({
                        "event": event, "status": status,
                        "valid": verify(SECRET, body, self.headers.get(HEADER, ""))})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self, kind: str | None = None, ok: bool = True) -> list[dict[str, Any]]:
        """Events received (each acknowledged one once when ``ok``), of one type."""
        with self.lock:
            reqs = [r for r in self.requests if not ok or r["status"] == 200]
        return [r["event"] for r in reqs if kind is None or r["event"]["type"] == kind]

    def env(self, **extra: str) -> dict[str, str]:
        return {"HERALD_WEBHOOK_URLS": self.url, "HERALD_WEBHOOK_SECRET": SECRET,
                "HERALD_WEBHOOK_FLAP_S": FLAP_S, "HERALD_WEBHOOK_RETRY_BASE_S": RETRY_BASE_S,
                **extra}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def _of_user(events: list[dict[str, Any]], user: str) -> list[str]:
    return [e["type"] for e in events if e["data"].get("user_id") == user]


def test_signed_online_then_offline_and_retry_of_a_500(cluster: Any, token: Any) -> None:
    receiver = Receiver(fail_first=True)
    try:
        env = receiver.env()
        fe = cluster.frontend("wh", env)
        cluster.worker(env)
        client = Client(fe.ws_url)
        client.hello(token("wh-alice"))
        wait_until(lambda: receiver.events("user.online"))
        client.close()
        wait_until(lambda: receiver.events("user.offline"))
        assert _of_user(receiver.events(), "wh-alice") == ["user.online", "user.offline"]
        assert all(r["valid"] for r in receiver.requests), receiver.requests
        # every event was refused once (500) and retried with the same id
        statuses: dict[str, list[int]] = {}
        for r in receiver.requests:
            statuses.setdefault(r["event"]["id"], []).append(r["status"])
        assert statuses and all(s[:2] == [500, 200] for s in statuses.values()), statuses
    finally:
        receiver.close()


def test_a_reload_within_the_window_sends_nothing(cluster: Any, token: Any,
                                                  receiver: Receiver) -> None:
    env = receiver.env()
    fe = cluster.frontend("wh", env)
    cluster.worker(env)
    first = Client(fe.ws_url)
    first.hello(token("wh-bob"))
    first.request("join", group="wh-room")
    wait_until(lambda: receiver.events("group.occupied"))
    wait_until(lambda: receiver.events("user.online"))
    first.close()  # a reload: gone and back well within the 1 s window
    second = Client(fe.ws_url)
    second.hello(token("wh-bob"))
    assert second.request("join", group="wh-room")["op"] == "ack"
    time.sleep(QUIET_S)  # several windows: an offline would have been sent by now
    assert _of_user(receiver.events(), "wh-bob") == ["user.online"]
    assert [e["type"] for e in receiver.events() if e["type"].startswith("group.")] \
        == ["group.occupied"]
    assert receiver.events("group.occupied")[0]["data"] == {"scope": "default",
                                                             "group": "wh-room"}
    # the last leave vacates the group once the window has passed; bob stays online
    assert second.request("leave", group="wh-room")["op"] == "ack"
    wait_until(lambda: receiver.events("group.vacated"))
    assert receiver.events("group.vacated")[0]["data"] == {"scope": "default",
                                                            "group": "wh-room"}
    assert _of_user(receiver.events(), "wh-bob") == ["user.online"]
    assert not receiver.events("member.joined")  # opt-in only
    second.close()


def test_a_resume_elsewhere_sends_nothing_and_server_joins_count(
        cluster: Any, token: Any, receiver: Receiver) -> None:
    env = receiver.env()
    a, b = cluster.frontends("wh-a", "wh-b", env=env)
    cluster.worker(env)
    first = Client(a.ws_url)
    welcome = first.hello(token("wh-erin"))
    wait_until(lambda: receiver.events("user.online"))
    first.ws.close(code=4000)  # dropped without a goodbye: detached, awaiting resume
    first.closed.wait(5)
    second = Client(b.ws_url)  # resumed on the other frontend within the window
    assert second.hello(token("wh-erin"), resume=welcome["resume"], last_id=0)["resumed"]
    # a server-side join through the API of the frontend that does not hold the socket
    r = api(a, "PUT", f"/api/groups/default/wh-server/members/{welcome['connection_id']}")
    assert r.status_code < 300, r.text
    wait_until(lambda: receiver.events("group.occupied"))
    assert receiver.events("group.occupied")[0]["data"]["group"] == "wh-server"
    time.sleep(QUIET_S)
    assert _of_user(receiver.events(), "wh-erin") == ["user.online"]
    second.close()


def test_a_resume_after_the_window_is_offline_then_online(cluster: Any, token: Any,
                                                          receiver: Receiver) -> None:
    env = receiver.env()
    fe = cluster.frontend("wh", env)
    cluster.worker(env)
    first = Client(fe.ws_url)
    welcome = first.hello(token("wh-gina"))
    first.request("join", group="wh-late")
    wait_until(lambda: receiver.events("group.occupied"))
    first.ws.close(code=4000)  # dropped: detached, resumable, but not back in time
    wait_until(lambda: receiver.events("user.offline") and receiver.events("group.vacated"))
    second = Client(fe.ws_url)
    w = second.hello(token("wh-gina"), resume=welcome["resume"], last_id=0)
    assert w["resumed"] and w["groups"] == [{"scope": "default", "group": "wh-late"}]
    wait_until(lambda: len(receiver.events("user.online")) == 2
               and len(receiver.events("group.occupied")) == 2)
    assert _of_user(receiver.events(), "wh-gina") == ["user.online", "user.offline",
                                                      "user.online"]
    second.close()


def test_a_drain_sends_nothing(cluster: Any, token: Any, receiver: Receiver) -> None:
    env = receiver.env(HERALD_WEBHOOK_FLAP_S="3")  # room for the drain and the reconnect
    a, b = cluster.frontends("wh-a", "wh-b", env=env)
    cluster.worker(env)
    first = Client(a.ws_url)
    welcome = first.hello(token("wh-frank"))
    first.request("join", group="wh-drained")
    wait_until(lambda: receiver.events("user.online") and receiver.events("group.occupied"))
    stopping = threading.Thread(target=a.stop, daemon=True)  # SIGTERM: a drain
    stopping.start()
    assert first.closed.wait(30) and first.close_code == 1012
    second = Client(b.ws_url)  # what herald.js does on 1012: resume on another frontend
    assert second.hello(token("wh-frank"), resume=welcome["resume"], last_id=0)["resumed"]
    stopping.join(30)
    time.sleep(QUIET_S + 2)  # past the 3 s window
    assert sorted(e["type"] for e in receiver.events()) == ["group.occupied", "user.online"]
    second.close()


def test_member_events_when_opted_in(cluster: Any, token: Any, receiver: Receiver) -> None:
    env = receiver.env(HERALD_WEBHOOK_EVENTS="member.joined,member.left")
    fe = cluster.frontend("wh", env)
    cluster.worker(env)
    client = Client(fe.ws_url)
    welcome = client.hello(token("wh-carol"))
    client.request("join", group="wh-members")
    client.request("leave", group="wh-members")
    wait_until(lambda: receiver.events("member.left"))
    joined = receiver.events("member.joined")
    assert [e["data"] for e in joined] == [{
        "scope": "default", "group": "wh-members", "user_id": "wh-carol",
        "connection_id": welcome["connection_id"]}]
    time.sleep(QUIET_S)
    # only the listed types: no online, occupied, vacated
    assert {e["type"] for e in receiver.events()} == {"member.joined", "member.left"}
    client.close()


def test_a_killed_frontends_users_go_offline(cluster: Any, token: Any,
                                             receiver: Receiver) -> None:
    env = receiver.env()
    doomed = cluster.frontend("wh-doomed", env)
    cluster.worker(env)
    cluster.beat(env)
    client = Client(doomed.ws_url)
    client.hello(token("wh-dave"))
    client.request("join", group="wh-crash")
    wait_until(lambda: receiver.events("group.occupied") and receiver.events("user.online"))
    doomed.kill()  # SIGKILL: no disconnect ever reaches the registry
    # beat (a fresh process: slow to start on a loaded machine) sweeps it, then the flap
    # window passes: allow for both
    # (beat's sweep also settles groups earlier tests of this run left "leaving": only
    # this test's own group and user are this test's business)
    wait_until(lambda: _of_user(receiver.events(), "wh-dave") == ["user.online", "user.offline"]
               and any(e["data"]["group"] == "wh-crash" for e in receiver.events("group.vacated")),
               timeout=3 * WAIT_S)
    assert _of_user(receiver.events(), "wh-dave") == ["user.online", "user.offline"]


def test_message_undelivered_only_for_a_user_without_socket(cluster: Any, token: Any,
                                                            receiver: Receiver) -> None:
    env = receiver.env()
    fe = cluster.frontend("wh", env)
    other = cluster.frontend("wh-other", env)
    cluster.worker(env)
    here = Client(fe.ws_url)
    here.hello(token("wh-online"))
    there = Client(other.ws_url)  # online on another frontend than the publishing one
    there.hello(token("wh-elsewhere"))
    for user in ("wh-online", "wh-elsewhere", "wh-offline"):
        r = api(fe, "POST", "/api/publish", json={"target": {"user": user},
                                                  "event": "note", "data": {"n": 1}})
        assert r.status_code == 202, r.text
        if user == "wh-offline":
            offline_id = r.json()["id"]
    # a task's outcome, published by the worker, to a user who is not connected either
    from workers.celery_app import app

    app.send_task("demo.noop", headers={"herald_notify": {"user": "wh-task-owner"}})
    wait_until(lambda: any(e["data"] == {"message_id": offline_id, "user_id": "wh-offline",
                                         "event": "note"}
                           for e in receiver.events("message.undelivered")))
    wait_until(lambda: any(e["data"]["event"] == "task.succeeded"
                           for e in receiver.events("message.undelivered")))
    time.sleep(QUIET_S)  # any for the online users would have come by now
    users = {e["data"]["user_id"] for e in receiver.events("message.undelivered")}
    assert users == {"wh-offline", "wh-task-owner"}
    assert len([e for e in receiver.events("message.undelivered")
                if e["data"]["user_id"] == "wh-offline"]) == 1
    here.close()
    there.close()


def test_manage_webhooks_test_sends_a_signed_sample(runner: Any, receiver: Receiver) -> None:
    out = runner("webhooks", "test", env=receiver.env()).stdout
    assert f"{receiver.url}: HTTP 200" in out
    assert [r["valid"] for r in receiver.requests] == [True]
    assert runner("webhooks", "test", check=False,
                  env={"HERALD_WEBHOOK_URLS": ""}).returncode == 2
