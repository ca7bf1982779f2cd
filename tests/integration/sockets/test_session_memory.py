"""The WebSocket session, welcome and resume on the in-memory bus: the app served in this
process (gevent's WSGI server), a real WebSocket client in a thread, the registry and log
in the real Postgres. No broker and no frontend process."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent.pywsgi import WSGIServer
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ENV
from tests.support import wait_until

WAIT_S = 20.0


@pytest.fixture
def served(database: str) -> Iterator[tuple[Any, int]]:
    from service.app import create_app

    app = create_app({"broker_url": f"memory://s-{uuid.uuid4().hex[:8]}", "heartbeat_s": 0.5,
                      "frontend_id": f"mem-{uuid.uuid4().hex[:6]}"})
    node = app.extensions["herald"]
    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    try:
        pump(lambda: node.consumer.connected and node.registered)
        yield node, server.server_port
    finally:
        server.stop(timeout=1)
        node.stop()


def pump(pred: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Wait for ``pred`` while this process's greenlets (the frontends) run."""
    return wait_until(pred, timeout, interval=0.01, sleep=gevent.sleep)


def client(port: int, script: Callable[[ClientConnection], Any]) -> Any:
    """Run ``script`` with a connected client in a thread while this one serves."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
                out["value"] = script(ws)
        except BaseException as exc:  # handed back to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    pump(lambda: not thread.is_alive(), timeout=60)
    if "error" in out:
        raise out["error"]
    return out.get("value")


def ask(ws: ClientConnection, op: str, **fields: Any) -> dict[str, Any]:
    ref = uuid.uuid4().hex[:8]
    ws.send(json.dumps({"op": op, "ref": ref, **fields}))
    while True:
        frame = json.loads(ws.recv(timeout=WAIT_S))
        if frame.get("ref") == ref:
            return frame


def token(user: str, **kw: Any) -> str:
    from service.core.auth import issue_token

    return issue_token(ENV["HERALD_SECRET_KEY"], user, join=kw.get("join", ["*/*"]),
                       publish=["@all"], ttl_s=kw.get("ttl_s", 600))


def test_hello_join_members_and_a_resume(served: tuple[Any, int]) -> None:
    node, port = served
    user, group = f"u-{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"

    def first(ws: ClientConnection) -> dict[str, Any]:
        welcome = ask(ws, "hello", token=token(user))
        assert welcome["op"] == "welcome" and not welcome["resumed"]
        assert ask(ws, "join", group=group)["op"] == "ack"
        members = ask(ws, "members", group=group)
        assert [m["connection_id"] for m in members["members"]] == [welcome["connection_id"]]
        assert members["next"] is None
        ws.close(code=4000)  # not a goodbye: resumable
        return welcome

    w1 = client(port, first)
    pump(lambda: not node.hub.conns)

    def resume(ws: ClientConnection) -> dict[str, Any]:
        return ask(ws, "hello", token=token(user), resume=w1["resume"], last_id=0)

    w2 = client(port, resume)
    assert w2["resumed"] and w2["connection_id"] == w1["connection_id"]
    assert w2["groups"] == [{"scope": "default", "group": group}]
    # the token was spent by that resume: a fresh session now
    w3 = client(port, resume)
    assert not w3["resumed"] and w3["groups"] == []


def test_bad_frames_and_refresh_on_the_session(served: tuple[Any, int]) -> None:
    _, port = served
    user = f"u-{uuid.uuid4().hex[:6]}"

    def script(ws: ClientConnection) -> list[dict[str, Any]]:
        ask(ws, "hello", token=token(user, join=["a", "b"]))
        replies = [ask(ws, "join", group="a"), ask(ws, "join", group="b"),
                   ask(ws, "nope"), ask(ws, "join", group="c"),
                   ask(ws, "refresh", token=token(user, join=["a"])),
                   ask(ws, "ping")]
        return replies

    joined_a, joined_b, unknown, forbidden, refreshed, pong = client(port, script)
    assert joined_a["op"] == joined_b["op"] == "ack"
    assert unknown["code"] == "unknown_op" and forbidden["code"] == "forbidden"
    assert refreshed["left"] == [{"scope": "default", "group": "b"}]
    assert pong["op"] == "pong"
