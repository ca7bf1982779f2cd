"""Which port serves what, once ``HERALD_METRICS_PORT`` is set.

The metrics name frontends and count connections and rates: they are for the operator's
network, not the public one. With a metrics port, gunicorn listens on both ports and this
middleware keeps them apart: the metrics port serves ``/metrics`` and the probes and
nothing else (no socket, no API key check to probe), and the public port no longer
serves ``/metrics``. The port a request came in on is the listening socket's
(``SERVER_PORT`` from gunicorn), which no header can change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

#: What the metrics port serves: the metrics and the probes.
INTERNAL_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
#: The public port's paths that are the metrics' alone (also as /metrics/..., //metrics).
_METRICS_PATH = re.compile(r"/+metrics(/.*)?")


class InternalPort:
    """WSGI middleware splitting the metrics port from the public one."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], metrics_port: int) -> None:
        self.wsgi_app = wsgi_app
        self.metrics_port = str(metrics_port)

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("SERVER_PORT") == self.metrics_port:
            if path not in INTERNAL_PATHS:
                return _not_found(start_response, "the metrics port serves only "
                                  + ", ".join(sorted(INTERNAL_PATHS)))
        elif _METRICS_PATH.fullmatch(path):
            return _not_found(start_response, f"/metrics is served on HERALD_METRICS_PORT="
                              f"{self.metrics_port}, not on this port")
        return self.wsgi_app(environ, start_response)


def _not_found(start_response: Callable[..., Any], message: str) -> list[bytes]:
    body = json.dumps({"error": "not_found", "message": message}).encode()
    start_response("404 NOT FOUND", [("Content-Type", "application/json"),
                                     ("Content-Length", str(len(body)))])
    return [body]
