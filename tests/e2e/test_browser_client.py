"""herald.js in a real browser (Debian's chromium through Playwright), issue 16: the
presence map by user with one meta per connection, and the SSE fallback behind a proxy
that refuses WebSocket upgrades.

One pair of frontends serves the module; each page imports ``/static/herald.js`` from the
origin it was opened on (a frontend, or nginx in front of both). The fallback test SIGKILLs
a frontend, so it comes last.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.nginx import Nginx
from tests.e2e.test_browser import WAIT_MS, Tab, launched
from tests.e2e.test_nginx_example import render
from tests.support import api

#: Durable events published before the frontend's SIGKILL and while the page is away.
BEFORE_KILL = 3
DURING_OUTAGE = 3

#: In the page: connect, join `room` with `meta`, watch its presence by user, and record
#: what the app sees (events of name "n" with their ids, gaps, transports, frontends).
START = """async ({ token, room, meta }) => {
  const { Herald } = await import("/static/herald.js");
  const seen = window.seen = { ids: [], gaps: [], transports: [], frontends: [] };
  const h = window.herald = new Herald({ token });
  h.on("event:n", (_data, frame) => seen.ids.push(frame.id));
  h.on("gap", (g) => seen.gaps.push(g.reason));
  h.on("transport", (t) => seen.transports.push(t));
  h.on("welcome", (w) => seen.frontends.push(w.frontend));
  h.connect();
  await h.join(room, meta ? { meta } : {});
  if (h.transport === "websocket") {
    const mon = await h.presence(room);
    // [user, [[connection, frontend, meta], …]] sorted (and each meta's keys), to compare
    const sorted = (o) => Object.fromEntries(Object.entries(o).sort());
    window.presenceOf = () => [...mon.users.values()].map((u) => [u.user_id,
      u.metas.map((m) => [m.connection_id, m.frontend, sorted(m.meta)]).sort()]).sort();
  }
  return h.connectionId;
}"""


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched(needs_nginx=True) as chromium:
        yield chromium


def _frontend_ids(*procs: Any) -> dict[str, Any]:
    return {requests.get(p.url + "/healthz", timeout=10).json()["frontend"]: p for p in procs}


def _open(browser: Any, name: str, origin: str, token: str, room: str,
          meta: dict[str, Any] | None = None) -> tuple[Tab, str]:
    tab = Tab(browser, name)
    tab.page.goto(origin + "/healthz")  # any page of that origin: the module comes from it
    cid = tab.page.evaluate(START, {"token": token, "room": room, "meta": meta})
    return tab, str(cid)


def _wait_presence(tab: Tab, want: list[Any]) -> None:
    """Until the page's presence map is ``want`` (the map, not its frames: the page's own
    view after every join, update and leave it was told of)."""
    expected = json.dumps(want, separators=(",", ":"), sort_keys=True)
    try:
        tab.page.wait_for_function("(want) => JSON.stringify(presenceOf()) === want",
                                   arg=expected, timeout=WAIT_MS)
    except Exception:
        got = tab.page.evaluate("() => JSON.stringify(presenceOf())")
        raise AssertionError(f"{tab.name}: presence {got} != {expected}") from None


def test_presence_by_user_with_a_meta_per_connection(pair: Any, browser: Any,
                                                     token: Any) -> None:
    pa, pb = pair
    ids = {p: f for f, p in _frontend_ids(pa, pb).items()}
    room, alice, bob = uid("room"), uid("alice"), uid("bob")
    tabs: list[Tab] = []
    try:
        # alice on a laptop (A) and a phone (B), bob on a tablet (A)
        one, c1 = _open(browser, "laptop", pa.url, token(alice), room, {"device": "laptop"})
        two, c2 = _open(browser, "phone", pb.url, token(alice), room, {"device": "phone"})
        three, c3 = _open(browser, "tablet", pa.url, token(bob), room, {"device": "tablet"})
        tabs += [one, two, three]
        laptop, phone = [c1, ids[pa], {"device": "laptop"}], [c2, ids[pb], {"device": "phone"}]
        tablet = [c3, ids[pa], {"device": "tablet"}]
        everyone = sorted([[alice, sorted([laptop, phone])], [bob, [tablet]]])
        for tab in tabs:  # on both frontends: joins from the other one too
            _wait_presence(tab, everyone)

        three.page.evaluate("(room) => herald.update(room, {device: 'tablet', away: true})", room)
        away = [c3, ids[pa], {"device": "tablet", "away": True}]
        for tab in (one, two):
            _wait_presence(tab, sorted([[alice, sorted([laptop, phone])], [bob, [away]]]))

        two.context.close()  # the phone's page closes: its connection leaves, alice stays
        tabs.remove(two)
        for tab in (one, three):
            _wait_presence(tab, sorted([[alice, [laptop]], [bob, [away]]]))
        # the members map of monitor() agrees, keyed by connection
        members = one.page.evaluate(
            "(room) => herald.monitor(room).then((m) => [...m.members.keys()].sort())", room)
        assert members == sorted([c1, c3])
    finally:
        for tab in tabs:
            tab.save_artifacts("end")
            tab.context.close()


def _refusing_upgrades(frontend_port: int, other_port: int) -> Any:
    """compose/nginx.conf with its /ws location answering 403, as a corporate proxy that
    refuses WebSocket upgrades does; /sse and the rest pass to both frontends."""
    example = render(frontend_port, other_port=other_port)

    def text(d: Path, port: int) -> str:
        conf, n = re.subn(r"(location /ws \{\n)",
                          r"\1            return 403;  # no upgrades past this proxy\n",
                          example(d, port))
        assert n == 1, "the example's /ws location changed: update this test"
        return conf
    return text


def _publish(fe: Any, room: str, n: int) -> int:
    r = api(fe, "POST", "/api/publish", json={"target": {"group": room}, "event": "n",
                                              "data": {"n": n}, "durable": True})
    assert r.status_code == 202, r.text
    return int(r.json()["id"])


def test_falls_back_to_sse_behind_a_proxy_and_resumes_after_a_sigkill(
        pair: Any, browser: Any, token: Any, tmp_path: Path) -> None:
    pa, pb = pair
    by_id = _frontend_ids(pa, pb)
    proxy = Nginx(tmp_path / "nginx", [], render=_refusing_upgrades(pb.port, pa.port))
    room = uid("room")
    tab: Tab | None = None
    try:
        proxy.wait_ready()
        assert requests.get(proxy.url + "/ws", headers={"Upgrade": "websocket"},
                            timeout=5).status_code == 403
        tab, _ = _open(browser, "sse", proxy.url, token(uid("u")), room, {"device": "kiosk"})
        page = tab.page
        assert page.evaluate("() => [herald.transport, herald.state, seen.transports]") == [
            "sse", "open", ["sse"]]
        serving = by_id[page.evaluate("() => herald.frontend")]
        other = pb if serving is pa else pa
        # receive-only: what needs a socket says so
        code = page.evaluate("() => herald.publish({group: 'x'}, 'n', {}).catch((e) => e.code)")
        assert code == "unsupported_transport"

        sent = [_publish(other, room, i) for i in range(BEFORE_KILL)]
        page.wait_for_function("(n) => seen.ids.length >= n", arg=len(sent), timeout=WAIT_MS)
        serving.kill()
        sent += [_publish(other, room, BEFORE_KILL + i) for i in range(DURING_OUTAGE)]
        page.wait_for_function("(n) => seen.ids.length >= n", arg=len(sent), timeout=WAIT_MS)
        seen = page.evaluate("() => seen")
        assert seen["ids"] == sent  # every durable event once, in order
        assert seen["gaps"] == [] and seen["transports"] == ["sse"]
        assert seen["frontends"][-1] == next(f for f, p in by_id.items() if p is other)
        assert page.evaluate("() => [herald.transport, herald.state, herald.recovered]") == [
            "sse", "open", True]
    finally:
        if tab is not None:
            tab.save_artifacts("end")
            tab.context.close()
        proxy.stop()
