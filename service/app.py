"""The application factory: ``create_app(test_config=None)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from flask_sock import Sock

from service.cluster.frontend import Frontend
from service.core.config import Settings
from service.delivery.wsock import InlineReader, NoWaiter
from service.http import admin, api
from service.http import history as _history  # noqa: F401  (its route joins api)
from service.http import messages as _messages  # noqa: F401  (its route joins api)
from service.http.lean import LeanPublish
from service.http.ports import InternalPort
from service.sockets import sse, ws

#: WSGI environ key simple-websocket reads to negotiate permessage-deflate.
_EXTENSIONS_HEADER = "HTTP_SEC_WEBSOCKET_EXTENSIONS"


class NoDeflate:
    """WSGI middleware: hide the client's extension offer so no socket gets deflate.

    simple-websocket accepts permessage-deflate whenever it is offered, at ~100 KiB of
    zlib state per socket; Herald makes it a setting (HERALD_WS_DEFLATE), off by default.
    """

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ.pop(_EXTENSIONS_HEADER, None)
        return self.wsgi_app(environ, start_response)


def create_app(test_config: dict[str, Any] | None = None, *, port: int | None = None,
               start: bool = True) -> Flask:
    """Build the frontend app. ``test_config`` overrides settings fields by name.

    ``start=False`` builds everything but starts no background work (unit tests).
    """
    settings = Settings.from_env()
    if test_config:
        settings = dataclasses.replace(settings, **test_config)
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.config.update(
        HERALD_SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_frame_bytes,
        SOCK_SERVER_OPTIONS={"max_message_size": settings.max_frame_bytes,
                             "thread_class": InlineReader, "event_class": NoWaiter},
    )
    node = Frontend(settings, port)
    app.extensions["herald"] = node
    ws.init_app(app, Sock(app))
    app.wsgi_app = LeanPublish(app.wsgi_app, node,  # type: ignore[method-assign]
                               settings.max_frame_bytes)
    api.init_app(app)
    admin.init_app(app)
    sse.init_app(app)
    from service.http import demo
    demo.init_app(app)
    if not settings.ws_deflate:
        app.wsgi_app = NoDeflate(app.wsgi_app)  # type: ignore[method-assign]
    if settings.metrics_port:  # outermost: the metrics port reaches nothing but its paths
        app.wsgi_app = InternalPort(app.wsgi_app, settings.metrics_port)  # type: ignore[method-assign]
    if settings.webhook_urls:
        _wire_webhooks(node)
    if start:
        node.start()
    return app


def _wire_webhooks(node: Frontend) -> None:
    """Enqueue the webhooks' checks after registry commits and durable log inserts."""
    import gevent

    from workers.webhook_hooks import FrontendHooks

    def user_of(connection_id: str) -> str | None:
        conn = node.hub.conns.get(connection_id)
        return None if conn is None else conn.user_id

    hooks = FrontendHooks(node.settings, gevent.spawn, user_of,
                          lambda user: bool(node.hub.by_user.get(user)))
    node.registry.on_commit = hooks.registry_committed
    node.log.on_logged = hooks.logged
