"""``GET /api/groups/<scope>/<group>/history``: a page of a group's durable events for a
backend (API key), the HTTP twin of the `history` op (``store/history.py``)."""

from __future__ import annotations

import msgspec
from flask import Response, request

from service.core.envelope import encode, event_frame
from service.core.errors import BadRequest
from service.http.api import _names, api, node, require_key
from service.store import history
from service.store.history import HISTORY_MAX, MAX_LOG_ID


def _int_arg(name: str, lo: int, hi: int) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return value


@api.get("/groups/<scope>/<group>/history")
@require_key
def group_history(scope: str, group: str) -> Response:
    """``{events, gap}``: event frames oldest first, as a client receives them."""
    _names(scope, group)
    limit = _int_arg("limit", 1, HISTORY_MAX) or HISTORY_MAX
    got = history.page(node().engine, scope, group, limit=limit,
                       before=_int_arg("before", 0, MAX_LOG_ID),
                       after=_int_arg("after", 0, MAX_LOG_ID))
    body = {"events": [msgspec.Raw(event_frame(env)) for env in got.events], "gap": got.gap}
    return Response(encode(body), mimetype="application/json")
