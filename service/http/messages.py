"""``GET /api/messages``: the newest durable messages of the whole log for an operator
(API key), a page at a time (``store/logpage.py``); the admin console's log."""

from __future__ import annotations

from typing import Any

from flask import Response

from service.core.envelope import Envelope, encode
from service.http.api import api, node, require_key
from service.http.history import _int_arg
from service.store import logpage
from service.store.history import MAX_LOG_ID


def _entry(env: Envelope) -> dict[str, Any]:
    # the data goes out as the log holds it (msgspec.Raw): never decoded here
    return {"id": env.id, "ts": env.ts, "target": env.target, "event": env.event,
            "data": env.data, "origin": env.origin}


@api.get("/messages")
@require_key
def recent_messages() -> Response:
    """``{messages, next}``: newest first; ``?before=<next>`` pages on to older ones."""
    fe = node()
    got = logpage.newest(fe.engine, ttl_s=fe.settings.history_ttl_s,
                         limit=_int_arg("limit", 1, logpage.LOG_PAGE_MAX)
                         or logpage.LOG_PAGE_DEFAULT,
                         before=_int_arg("before", 0, MAX_LOG_ID))
    return Response(encode({"messages": [_entry(e) for e in got.messages], "next": got.next}),
                    mimetype="application/json")
