"""The peer server: Flask-SocketIO under gunicorn's gevent worker, rooms over RabbitMQ.

    gunicorn -k gevent -w 1 bench.peer.app:app     (PEER_CHANNEL names the kombu exchange)

WebSocket transport comes from simple-websocket (the same library under Herald's
flask-sock), which python-engineio uses with the plain gevent worker when gevent-websocket
is not installed. A client may pass ``?group=NAME`` to be put in that room on connect: the
peer's equivalent of Herald's hello + join (no token, no registry).
"""

from __future__ import annotations

import os

from flask import Flask, request
from flask_socketio import SocketIO, join_room

app = Flask(__name__)
socketio = SocketIO(
    app,
    message_queue=os.environ.get("PEER_MQ_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    channel=os.environ.get("PEER_CHANNEL", "herald-bench-peer"),
    async_mode="gevent",
    cors_allowed_origins="*",
    logger=False,
    engineio_logger=False,
)


@app.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}


@socketio.on("connect")
def on_connect(auth: object = None) -> None:
    group = request.args.get("group")
    if group:
        join_room(group)
