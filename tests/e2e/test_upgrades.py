"""/ws serves every kind of upgrade: plain ones in front of Flask, the rest through the
flask-sock route (permessage-deflate when HERALD_WS_DEFLATE is on), with the same session."""

from __future__ import annotations

import json
from typing import Any

from websockets.sync.client import connect


def hello_welcome(url: str, token: str, compression: str | None) -> tuple[dict[str, Any], Any]:
    with connect(url, compression=compression, open_timeout=10) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        ws.send(json.dumps({"op": "hello", "token": token}))
        welcome = json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"op": "ping", "ref": 1}))
        pong = json.loads(ws.recv(timeout=10))
        assert pong == {"op": "pong", "ref": 1}
        return welcome, extensions


def test_deflate_offers_take_the_flask_sock_route_when_enabled(cluster: Any, token: Any) -> None:
    on = cluster.frontend("deflate", env={"HERALD_WS_DEFLATE": "1"})
    off = cluster.frontend("plain")
    welcome, ext = hello_welcome(on.ws_url, token("d1"), "deflate")
    assert welcome["op"] == "welcome" and ext and "permessage-deflate" in ext
    welcome, ext = hello_welcome(on.ws_url, token("d2"), None)  # plain, on the same frontend
    assert welcome["op"] == "welcome" and ext is None
    welcome, ext = hello_welcome(off.ws_url, token("d3"), "deflate")  # offer ignored: off
    assert welcome["op"] == "welcome" and ext is None
