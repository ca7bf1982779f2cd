"""The admin console: the page at ``GET /admin`` and ``POST /api/admin/token`` behind it.

The page (``static/admin.html``, ``admin.js``, ``admin.css``) is static and holds no
secret: the operator signs in with one of ``HERALD_API_KEYS``, which the page keeps in
``sessionStorage`` and sends to the HTTP API like any backend. To watch a group's
presence it opens a socket with ``herald.js`` on a token from ``POST /api/admin/token``
(API key required): a short-lived client token of the user ``admin:console`` that may
join, and so monitor, every group, and nothing else. ``HERALD_ADMIN=off`` turns both
into 404s.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from service.core.auth import issue_token
from service.core.errors import NotFound
from service.http.api import api, node, require_key

admin = Blueprint("admin", __name__)

#: The console's own socket: its user id, grants (a monitor needs a join grant) and life.
ADMIN_USER = "admin:console"
ADMIN_GRANTS: dict[str, Any] = {"join": ["*/*"]}
ADMIN_TOKEN_TTL_S = 600
#: The page runs only its own files: no inline script or style, no other origin, no frame.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
    "connect-src 'self'", "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'"))
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def _enabled() -> None:
    if not node().settings.admin:
        raise NotFound("the admin console is off (HERALD_ADMIN=off); set HERALD_ADMIN=on "
                       "(the default) to serve it at /admin")


@admin.get("/admin")
def page() -> Response:
    _enabled()
    response = current_app.send_static_file("admin.html")
    response.headers.update(PAGE_HEADERS)
    return response


@api.post("/admin/token")
@require_key
def token() -> Response:
    """A client token for the console's socket (see the module's docstring)."""
    _enabled()
    tok = issue_token(node().settings.secret_key, ADMIN_USER, ttl_s=ADMIN_TOKEN_TTL_S,
                      **ADMIN_GRANTS)
    return jsonify({"token": tok, "user": ADMIN_USER, "expires_in": ADMIN_TOKEN_TTL_S})


def init_app(app: Flask) -> None:
    """Register the console's page (its token route is on the API blueprint)."""
    app.register_blueprint(admin)
