"""Run nginx in front of frontends for a test: a config in a temp dir, stopped by its PID.

Everything nginx writes (pid, logs, temp files) stays in that directory; the process runs
in the foreground (``daemon off``) in its own process group, so the test stops exactly it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import requests

from tests.support import WAIT_S, free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """\
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream herald {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://herald;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


class Nginx:
    """nginx proxying to ``upstreams`` ("host:port" [+ " backup"] lines, in order)."""

    def __init__(self, directory: Path, upstreams: list[str],
                 render: Callable[[Path, int], str] | None = None) -> None:
        """``render(directory, port)``: the whole config instead of the test's own."""
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)  # nginx's workers drop root: they must reach the temp paths
        self.port = free_port()
        servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=30s;"
                            for u in upstreams)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(render(self.dir, self.port) if render is not None
                             else CONFIG.format(d=self.dir, port=self.port, servers=servers))
        self._log = open(self.dir / "stdout.log", "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(self.conf)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "error.log").read_text(errors="replace")
        return ""

    def wait_ready(self, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"nginx exited {self.popen.returncode}: {self.error_log()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"nginx not ready in {timeout}s: {self.error_log()}")

    def stop(self) -> None:
        """SIGTERM (fast shutdown: open WebSockets would hold a graceful one) to the master
        we started, then SIGKILL whatever is left in its process group."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # workers left in its own group
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=WAIT_S)
        self._log.close()


class Upstream:
    """A stand-in upstream on a loopback port, in a thread: it answers every request with
    ``status`` and, as JSON, the request's headers (lower-cased), counting the requests
    that asked for a WebSocket upgrade."""

    def __init__(self, status: int = 200) -> None:
        import http.server
        import json
        import threading

        owner = self
        self.upgrades = 0
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                if self.headers.get("Upgrade", "").lower() == "websocket":
                    owner.upgrades += 1
                body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
