"""The plain RFC 6455 upgrade: recognised in the WSGI environ and answered directly.

A plain upgrade (GET, version 13, no extension offered) needs nothing negotiated, so the
frontend answers it from the environ gunicorn already parsed instead of having wsproto
rebuild and re-parse the request (``wsock.HeraldServer.handshake``).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

#: RFC 6455's fixed GUID that Sec-WebSocket-Accept is derived with.
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def plain_upgrade_key(environ: dict[str, Any]) -> bytes | None:
    """The Sec-WebSocket-Key of a plain RFC 6455 upgrade (GET, version 13, Host, no
    extension offered); None for any other request.

    A subprotocol offer keeps an upgrade plain: Herald speaks no subprotocol, so the answer
    names none, which is what simple-websocket answers too (it is given none to choose)."""
    if (environ.get("REQUEST_METHOD") != "GET" or "HTTP_HOST" not in environ
            or environ.get("HTTP_SEC_WEBSOCKET_VERSION") != "13"
            or environ.get("HTTP_UPGRADE", "").lower() != "websocket"
            or "HTTP_SEC_WEBSOCKET_EXTENSIONS" in environ):
        return None
    tokens = environ.get("HTTP_CONNECTION", "").lower().split(",")
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY")
    if not key or "upgrade" not in (t.strip() for t in tokens):
        return None
    return str(key).encode("latin-1")


def switching_protocols(key: bytes) -> bytes:
    """The 101 answer to a plain upgrade with this Sec-WebSocket-Key."""
    accept = base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
