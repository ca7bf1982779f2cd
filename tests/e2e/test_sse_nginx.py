"""SSE through the example proxy (compose/nginx.conf, a real nginx): each event passes at
once (no buffering), and after a SIGKILL of the stream's frontend the client reconnects
through nginx with ``Last-Event-ID`` and gets every durable event once, in order, from
whichever frontend nginx picks (no sticky sessions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.nginx import NGINX, Nginx
from tests.e2e.test_nginx_example import render
from tests.e2e.test_sse import publish, uid
from tests.sse_client import SseClient

#: Durable events published before the kill and while no stream is open (bounded).
BEFORE_KILL = 4
DURING_OUTAGE = 4


def test_sse_through_nginx_resumes_after_a_sigkill(cluster: Any, token: Any,
                                                   tmp_path: Path) -> None:
    if not Path(NGINX).exists():
        pytest.fail("needs Debian's nginx: apt-get install -y nginx")
    a, b = cluster.frontends("sse-na", "sse-nb")
    by_id = {requests.get(p.url + "/healthz", timeout=5).json()["frontend"]: p
             for p in (a, b)}
    proxy = Nginx(tmp_path / "nginx", [], render=render(b.port, other_port=a.port))
    group, tok = uid("room"), token(uid("u"))
    url = f"{proxy.url}/sse?groups=default/{group}"
    auth = {"Authorization": f"Bearer {tok}"}
    streams: list[SseClient] = []
    try:
        proxy.wait_ready()
        s = SseClient(url, headers=auth)
        streams.append(s)
        assert s.response.status_code == 200, s.response.text
        assert s.response.headers["Content-Type"].startswith("text/event-stream")
        serving = by_id[s.wait_for(bool)[0]["data"]["frontend"]]
        other = b if serving is a else a
        sent: list[int | None] = []
        for i in range(BEFORE_KILL):  # each one arrives before the next is sent: unbuffered
            sent.append(publish(other, {"group": group}, "n", i))
            s.wait_for(lambda ev, want=sent[-1]: any(x.get("id") == want for x in ev))
        seen = s.comments
        s.wait_for(lambda ev: s.comments > seen)  # the keep-alive comments pass too
        last = max(x["id"] for x in s.events if x.get("event") == "n")
        serving.kill()
        s.close()
        sent += [publish(other, {"group": group}, "n", BEFORE_KILL + i)
                 for i in range(DURING_OUTAGE)]
        r = SseClient(url, headers={**auth, "Last-Event-ID": str(last)})
        streams.append(r)
        assert r.response.status_code == 200, r.response.text
        welcome = r.wait_for(bool)[0]["data"]
        assert by_id[welcome["frontend"]] is other and welcome["gap"] is False
        r.wait_for(lambda ev: any(x.get("id") == sent[-1] for x in ev))
        ids = [x["id"] for st in streams for x in st.events if x.get("event") == "n"]
        assert list(dict.fromkeys(ids)) == sent  # every durable event once, in order
    finally:
        for st in streams:
            st.close()
        proxy.stop()
