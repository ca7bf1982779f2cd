"""The example proxy config (compose/nginx.conf) run by a real nginx in front of a real
frontend: the API and WebSockets pass, /metrics stays internal (issue 11), every location
forwards the client's address, and a frontend that refuses upgrades with 503 (a draining
one) costs no client its connect: nginx retries on the other and takes it out."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.nginx import NGINX, Nginx, Upstream
from tests.support import ROOT, Client

EXAMPLE = ROOT / "compose" / "nginx.conf"


def render(frontend_port: int, other_port: int | None = None) -> Any:
    """compose/nginx.conf as it is, but for this machine: our frontend as both upstreams
    (or as frontend-b, with ``other_port`` as frontend-a), a loopback port, and pid, logs
    and temp files in the test's directory."""
    def text(d: Path, port: int) -> str:
        conf = EXAMPLE.read_text()
        conf, n = re.subn(r"server frontend-a:8000",
                          f"server 127.0.0.1:{other_port or frontend_port}", conf)
        assert n == 2, "the example's upstreams changed: update this test"
        conf, n = re.subn(r"server frontend-b:8000", f"server 127.0.0.1:{frontend_port}",
                          conf)
        assert n == 2, "the example's upstreams changed: update this test"
        conf, n = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", conf)
        assert n == 1
        conf = conf.replace("access_log    /dev/stdout;", f"access_log {d}/access.log;")
        conf = conf.replace("error_log     /dev/stderr warn;", f"error_log {d}/error.log;")
        conf = re.sub(r"worker_connections \d+;", "worker_connections 256;", conf)
        conf = conf.replace("worker_processes auto;", "worker_processes 1;")
        temp = "".join(f"    {k}_temp_path {d}/{k};\n"
                       for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = conf.replace("http {\n", "http {\n" + temp, 1)
        return f"daemon off;\npid {d}/nginx.pid;\n" + conf
    return text


def test_the_example_proxy_keeps_metrics_internal(cluster: Any, token: Any,
                                                  tmp_path: Path) -> None:
    if not Path(NGINX).exists():
        pytest.fail("needs Debian's nginx: apt-get install -y nginx")
    fe = cluster.frontend("ngx")
    proxy = Nginx(tmp_path / "nginx", [], render=render(fe.port))
    try:
        proxy.wait_ready()
        assert requests.get(fe.url + "/metrics", timeout=5).status_code == 200  # inside
        for path in ("/metrics", "/metrics/", "/metrics?x=1", "//metrics", "/%6Detrics",
                     "/metrics/../metrics"):
            r = requests.get(proxy.url + path, timeout=5)
            assert r.status_code == 404 and "herald_" not in r.text, path
        assert requests.get(proxy.url + "/healthz", timeout=5).status_code == 200
        c = Client(proxy.url.replace("http", "ws") + "/ws")
        assert c.hello(token("via-proxy"))["op"] == "welcome"
        c.close()
    finally:
        proxy.stop()


def _needs_nginx() -> None:
    if not Path(NGINX).exists():
        pytest.fail("needs Debian's nginx: apt-get install -y nginx")


def test_every_location_forwards_the_client_address(tmp_path: Path) -> None:
    _needs_nginx()
    echo = Upstream()  # answers with the headers it was sent
    proxy = Nginx(tmp_path / "nginx", [], render=render(echo.port))
    try:
        proxy.wait_ready()
        for path in ("/healthz", "/readyz", "/ws", "/sse", "/api/frontends", "/"):
            headers = requests.get(proxy.url + path, timeout=5).json()
            for name in ("x-forwarded-for", "x-real-ip", "x-forwarded-proto", "host"):
                assert name in headers, f"{path}: {name} not forwarded: {headers}"
            assert headers["x-forwarded-proto"] == "http"
            assert headers["x-real-ip"] == "127.0.0.1"
    finally:
        proxy.stop()
        echo.stop()


def test_a_frontend_refusing_upgrades_costs_no_client_its_connect(
        cluster: Any, token: Any, tmp_path: Path) -> None:
    """frontend-a answers 503 to everything, as a draining frontend answers an upgrade
    (tests/integration/http/test_probes_memory.py); frontend-b is a real frontend."""
    _needs_nginx()
    fe = cluster.frontend("ngx-b")
    draining = Upstream(status=503)
    proxy = Nginx(tmp_path / "nginx", [], render=render(fe.port, other_port=draining.port))
    clients: list[Client] = []
    try:
        proxy.wait_ready()
        fe_id = requests.get(fe.url + "/healthz", timeout=5).json()["frontend"]
        for i in range(6):  # held open: least_conn sends the next one to the emptiest
            c = Client(proxy.url.replace("http", "ws") + "/ws")
            clients.append(c)
            assert c.hello(token(f"via-proxy-{i}"))["frontend"] == fe_id
        # it was tried (it held the fewest sockets) and then left out of rotation
        assert 1 <= draining.upgrades < len(clients), draining.upgrades
    finally:
        for c in clients:
            c.close()
        proxy.stop()
        draining.stop()
