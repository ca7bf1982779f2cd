"""``manage.py run frontend``: gunicorn with one gevent worker (one frontend instance)."""

from __future__ import annotations

import logging
import math
import signal
from typing import Any

import gevent
from gunicorn.app.base import BaseApplication

from service.cluster.drain import drain_seconds
from service.core.config import DEFAULT_WORKER_CONNECTIONS, ConfigError, Settings
from service.core.fdlimit import raise_open_files

log = logging.getLogger(__name__)

# gevent records, for every greenlet, who spawned it and a copy of the spawning stack
# (for debugging tools): a few hundred bytes per socket and CPU on every spawn. Off here.
gevent.config.track_greenlet_tree = False

#: Sockets one frontend is sized for by default (``HERALD_WORKER_CONNECTIONS``): gunicorn's
#: worker_connections (its default of 1000 is too low), the open-file limit it needs and
#: the time its drain may take.
WORKER_CONNECTIONS = DEFAULT_WORKER_CONNECTIONS
#: File descriptors besides the client sockets: listeners, the database pool (twice
#: HERALD_DB_POOL_SIZE with its overflow) and the readiness probe, the broker connections,
#: log files and the event loop's own, with room to spare.
FD_HEADROOM = 256
#: Seconds the worker takes to exit once drained: stop() ends three greenlets (2 s each at
#: most), flushes the registry (5 s at most) and deregisters; the close frames of 20,000
#: sockets cost about a second of CPU on top of the drain's pauses.
EXIT_MARGIN_S = 10.0


def graceful_timeout_s(sockets: int) -> int:
    """Seconds gunicorn's master waits, from its SIGTERM, for the worker to drain ``sockets``
    and exit before it kills it: the drain plus EXIT_MARGIN_S."""
    return math.ceil(drain_seconds(sockets) + EXIT_MARGIN_S)


#: The default's: drain_seconds(20,000) = ceil(20,000 / DRAIN_BATCH 100) x DRAIN_PAUSE_S
#: 0.05 s = 10 s of batches + DRAIN_WAIT_S 10 s for clients to go + DRAIN_FLUSH_S 5 s =
#: 25 s; + EXIT_MARGIN_S 10 s = 35 s. compose's stop_grace_period and k8s'
#: terminationGracePeriodSeconds (with its preStop sleep) are sized on top of this.
GRACEFUL_TIMEOUT_S = graceful_timeout_s(WORKER_CONNECTIONS)


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
        binds = [f"{self.settings.host}:{self.port}"]
        if self.settings.metrics_port:  # /metrics and the probes only (http/ports.py)
            binds.append(f"{self.settings.host}:{self.settings.metrics_port}")
        cfg = {
            "bind": binds,
            "workers": 1,
            "worker_class": "gevent",
            "worker_connections": self.settings.worker_connections,
            "graceful_timeout": graceful_timeout_s(self.settings.worker_connections),
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
        from service.http import gunicorn_speed

        gunicorn_speed.install()

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
    """Serve one frontend on ``port`` (and HERALD_METRICS_PORT) until it is told to stop."""
    if settings.metrics_port == port:
        raise ConfigError(f"HERALD_METRICS_PORT={port} is the frontend's own port: choose "
                          "another one, or 0 to serve /metrics on the main port")
    # the worker gunicorn forks inherits the limit raised here
    raise_open_files(settings.worker_connections, FD_HEADROOM, strict=settings.production,
                     what="a frontend sized for HERALD_WORKER_CONNECTIONS sockets")
    FrontendServer(settings, port).run()
