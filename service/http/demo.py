"""The demo page at ``/`` and, in development only, ``POST /demo/token`` that backs it.

The page (``static/demo.html``) uses ``static/herald.js``: pick a user name, get a token
from ``/demo/token``, connect, start a long task and chat in ``room:lobby``. A real
deployment issues tokens from its own backend; in production the endpoint is a 404.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from service.core.auth import issue_token
from service.core.config import Settings
from service.core.envelope import valid_name
from service.core.errors import BadRequest, NotFound

demo = Blueprint("demo", __name__)

#: What a demo token allows: the lobby and any other room, and the demo tasks.
DEMO_GRANTS: dict[str, Any] = {"join": ["room:*"], "publish": ["room:*"], "tasks": ["demo.*"]}
DEMO_TOKEN_TTL_S = 3600


def _settings() -> Settings:
    return current_app.config["HERALD_SETTINGS"]  # type: ignore[no-any-return]


@demo.get("/")
def page() -> Response:
    response = current_app.send_static_file("demo.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@demo.post("/demo/token")
def token() -> Response:
    settings = _settings()
    if settings.production:
        raise NotFound("no such endpoint")
    body = request.get_json(silent=True)
    user = body.get("user") if isinstance(body, dict) else None
    if not isinstance(user, str) or not valid_name(user.strip()):
        raise BadRequest('body must be {"user": name} with a name of 1-128 characters')
    user = user.strip()
    tok = issue_token(settings.secret_key, user, ttl_s=DEMO_TOKEN_TTL_S, **DEMO_GRANTS)
    return jsonify({"token": tok, "user": user, "expires_in": DEMO_TOKEN_TTL_S})


def init_app(app: Flask) -> None:
    """Register the demo page and its token endpoint."""
    app.register_blueprint(demo)
