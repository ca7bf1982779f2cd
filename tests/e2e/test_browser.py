"""The demo page and herald.js in a real browser (Debian's chromium through Playwright).

Two frontends A and B, one worker, and nginx whose upstream is A with B as ``backup``: page 1
comes in through nginx (so it lands on A while A lives), page 2 opens B directly, both as the
same user. Page 1 starts a task and page 2 watches it finish; then A is SIGKILLed, a durable
message goes to the room through B's HTTP API, and page 1 must come back through nginx on
B, resume, and show that message exactly once. An application event named `error` reaches no
client handler of herald.js on either page.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from tests.conftest import ENV
from tests.e2e.nginx import NGINX, Nginx
from tests.support import ARTIFACTS, ROOT, WAIT_S, api

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
WAIT_MS = int(WAIT_S * 1000)
DOCS = ROOT / "docs"
#: Rewrite docs/*.png from this run (else they are written only when missing).
UPDATE_DOCS = os.environ.get("HERALD_UPDATE_DOCS") == "1"
VIEWPORT = {"width": 1180, "height": 500}

def _require_browser_tools() -> None:
    # a missing tool fails the test (a skip would hide it); compose/test.sh installs both
    if not (os.access(CHROMIUM, os.X_OK) and shutil.which(NGINX)):
        pytest.fail("needs Debian's chromium and nginx: apt-get install -y chromium nginx")


needs_browser = pytest.mark.usefixtures("browser_tools")


@pytest.fixture
def browser_tools() -> None:
    _require_browser_tools()
expect.set_options(timeout=WAIT_MS)


def _frontend_id(proc: Any) -> str:
    return str(requests.get(proc.url + "/healthz", timeout=10).json()["frontend"])


@contextlib.contextmanager
def launched(needs_nginx: bool = False) -> Iterator[Any]:
    """Debian's chromium through Playwright, closed afterwards; a missing browser (or
    nginx, when asked) fails the test: a skip would hide it."""
    if not os.access(CHROMIUM, os.X_OK) or (needs_nginx and not shutil.which(NGINX)):
        pytest.fail("needs Debian's chromium and nginx: apt-get install -y chromium nginx")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                      timeout=WAIT_MS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    with launched() as chromium:
        yield chromium


class Tab:
    """One browser page with its own context (storage), console kept for the artifacts."""

    def __init__(self, browser: Any, name: str) -> None:
        self.name = name
        self.context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def sign_in(self, url: str, user: str) -> None:
        self.page.goto(url + "/")
        self.page.fill("#user", user)
        self.save_artifacts("signin")
        self.page.click("#connect")
        expect(self.page.locator("#app")).to_be_visible()
        expect(self.page.locator("#state")).to_have_text("open")

    def frontend(self) -> str:
        return str(self.page.locator("#frontend").text_content())

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))

    def doc_screenshot(self, name: str) -> None:
        """Into test-artifacts/ always; into docs/ when asked to or when it is missing."""
        shot = ARTIFACTS / f"browser-{ENV['HERALD_NS']}-{name}"
        self.screenshot(shot)
        if UPDATE_DOCS or not (DOCS / name).exists():
            DOCS.mkdir(exist_ok=True)
            shutil.copyfile(shot, DOCS / name)

    def save_artifacts(self, label: str) -> None:
        self.screenshot(ARTIFACTS / f"browser-{ENV['HERALD_NS']}-{self.name}-{label}.png")
        (ARTIFACTS / f"browser-{ENV['HERALD_NS']}-{self.name}-console.log").write_text(
            "\n".join(self.console) + "\n")


def test_demo_page_and_token_endpoint(client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert b'src="/static/demo.js"' in page.data
    assert client.get("/static/herald.js").status_code == 200

    reply = client.post("/demo/token", json={"user": "alice"})
    assert reply.status_code == 200, reply.json
    claims = jwt.decode(reply.json["token"], ENV["HERALD_SECRET_KEY"], algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert (claims["join"], claims["publish"], claims["tasks"]) == (
        ["room:*"], ["room:*"], ["demo.*"])
    assert claims["exp"] - claims["iat"] == 3600
    for bad in ({"user": ""}, {"user": "a/b"}, {"name": "x"}, ["alice"]):
        assert client.post("/demo/token", json=bad).status_code == 400


def test_demo_token_endpoint_is_404_in_production(database: str) -> None:
    from service.app import create_app

    app = create_app({"env": "production"}, start=False)
    reply = app.test_client().post("/demo/token", json={"user": "alice"})
    assert reply.status_code == 404
    assert reply.json["error"] == "not_found"


def _say(tab: Tab, text: str) -> None:
    tab.page.fill("#say", text)
    tab.page.press("#say", "Enter")


@needs_browser
def test_demo_task_room_and_failover_through_nginx(cluster: Any, browser: Any,
                                                  tmp_path: Path) -> None:
    a, b = cluster.frontends("a", "b")
    cluster.worker()
    a_id, b_id = _frontend_id(a), _frontend_id(b)
    proxy = Nginx(tmp_path / "nginx", [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port} backup"])
    tabs: list[Tab] = []
    try:
        proxy.wait_ready()
        one, two = Tab(browser, "page1"), Tab(browser, "page2")
        tabs += [one, two]
        one.sign_in(proxy.url, "alice")  # through nginx: A while A lives
        two.sign_in(b.url, "alice")      # B directly
        assert one.frontend() == a_id
        assert two.frontend() == b_id

        # the room: both connections present on both pages, chat across frontends
        for tab in tabs:
            expect(tab.page.locator("#members li")).to_have_count(2)
            expect(tab.page.locator("#members .you")).to_have_count(1)
        _say(two, "Hi from the other tab")
        expect(one.page.locator("#messages li", has_text="Hi from the other tab")).to_have_count(1)
        expect(two.page.locator("#messages li.mine")).to_have_count(1)
        _say(one, "Hello, room")
        expect(two.page.locator("#messages li", has_text="Hello, room")).to_have_count(1)
        # an application event named like one of herald.js's own reaches no client handler
        for event, text in (("error", "not an error"), ("chat", "after the fake error")):
            reply = api(b, "POST", "/api/publish", json={
                "target": {"group": "room:lobby"}, "event": event,
                "data": {"user": "ops", "text": text}})
            assert reply.status_code == 202, reply.text
        for tab in tabs:  # delivered in publish order: the error event came first
            expect(tab.page.locator("#messages li", has_text="after the fake error")
                   ).to_have_count(1)
            assert not [c for c in tab.console if "herald:" in c and "warning" in c], tab.console
        one.doc_screenshot("demo-room.png")

        # the task: started on page 1 (A), watched on page 2 (B)
        one.page.click("#start-task")
        one.page.wait_for_function(
            "() => { const v = +document.querySelector('#progress')"
            ".getAttribute('aria-valuenow'); return v >= 35 && v <= 80; }", timeout=WAIT_MS)
        one.doc_screenshot("demo-task.png")
        for tab in (two, one):
            expect(tab.page.locator("#progress-pct")).to_have_text("100%")
            expect(tab.page.locator("#task-result")).to_contain_text('"slept":4')
            expect(tab.page.locator("#progress-bar")).to_have_attribute("style", "width: 100%;")
        two.save_artifacts("task-done")

        # failover: A dies, a durable message goes to the room while page 1 is away
        a.kill()
        reply = api(b, "POST", "/api/publish", json={
            "target": {"group": "room:lobby"}, "event": "chat",
            "data": {"user": "ops", "text": "Published while A was down"}})
        assert reply.status_code == 202, reply.text
        expect(one.page.locator("#frontend")).to_have_text(b_id)
        expect(one.page.locator("#state")).to_have_text("open")
        expect(one.page.locator("#messages li", has_text="Published while A was down")
               ).to_have_count(1)
        expect(two.page.locator("#messages li", has_text="Published while A was down")
               ).to_have_count(1)
        # still one session: the same connection, still in the room (server-side rejoin)
        expect(one.page.locator("#messages li.notice", has_text=f"Resumed on {b_id}")
               ).to_have_count(1)
        # page 1 monitors again after the resume: its snapshot has both connections on B
        expect(one.page.locator("#members li", has_text=f"on {b_id}")).to_have_count(2)
        expect(two.page.locator("#members li")).to_have_count(2)
        _say(two, "Welcome back")
        expect(one.page.locator("#messages li", has_text="Welcome back")).to_have_count(1)
    finally:
        for tab in tabs:
            tab.save_artifacts("end")
        proxy.stop()
