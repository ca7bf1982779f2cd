"""``manage.py run frontend``: gunicorn with one gevent worker (one frontend instance)."""

from __future__ import annotations

import logging
import signal
from typing import Any

import gevent
from gunicorn.app.base import BaseApplication

from service.core.config import Settings

log = logging.getLogger(__name__)

# gevent records, for every greenlet, who spawned it and a copy of the spawning stack
# (for debugging tools): a few hundred bytes per socket and CPU on every spawn. Off here.
gevent.config.track_greenlet_tree = False

#: Sockets one gevent worker may hold (gunicorn's default of 1000 is too low).
WORKER_CONNECTIONS = 20000
#: Seconds gunicorn waits for a draining worker before killing it.
GRACEFUL_TIMEOUT_S = 30


#: gunicorn's own loggers in the same one-JSON-object-per-line format as Herald's.
GUNICORN_JSON_LOGS: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "service.core.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                            "stream": "ext://sys.stderr"}},
    "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["stderr"],
                                   "propagate": False}},
    "root": {"level": "INFO", "handlers": ["stderr"]},
}


class FrontendServer(BaseApplication):  # type: ignore[misc]  # gunicorn ships no types
    """A gunicorn application serving one Herald frontend on ``host:port``."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.flask_app: Any = None
        super().__init__()

    def load_config(self) -> None:
        cfg = {
            "bind": f"{self.settings.host}:{self.port}",
            "workers": 1,
            "worker_class": "gevent",
            "worker_connections": WORKER_CONNECTIONS,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "timeout": 0,  # websockets are long-lived; liveness comes from heartbeats
            "keepalive": 5,
            "backlog": 4096,
            "proc_name": f"herald-frontend-{self.port}",
            "post_worker_init": self._post_worker_init,
            "worker_exit": self._worker_exit,
            "control_socket_disable": True,  # one fixed path would be shared by every frontend
        }
        if self.settings.log_json:
            cfg["logconfig_dict"] = GUNICORN_JSON_LOGS
        for key, value in cfg.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # imported here, in the worker after gevent has patched the standard library
        from service.app import create_app

        self.flask_app = create_app(port=self.port)
        return self.flask_app

    def _post_worker_init(self, worker: Any) -> None:
        """Replace the worker's SIGTERM handler: drain the sockets first, then exit."""
        import gevent

        node = self.flask_app.extensions["herald"]

        def drain_then_exit() -> None:
            try:
                node.drain()
            finally:
                worker.alive = False  # gunicorn's loop now stops accepting and exits

        def on_sigterm(sig: int, frame: Any) -> None:
            if not node.draining:
                gevent.spawn(drain_then_exit)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _worker_exit(self, server: Any, worker: Any) -> None:
        if self.flask_app is not None:
            self.flask_app.extensions["herald"].stop()


def run(settings: Settings, port: int) -> None:
    FrontendServer(settings, port).run()
