"""The admin console (GET /admin) in a real browser (Debian's chromium through Playwright),
every flow an operator has, against two live frontends A and B with a few sockets.

A wrong key is refused; with a right one the console lists both frontends with their
connections, the groups with their counts, a user's sockets and frontends; it watches a
group's presence live through herald.js (a socket joins and leaves while it watches);
it publishes a test message that a socket receives with the id the page shows, and the
recent durable log lists that message; the frontends' counters show the publish, written
by each frontend's heartbeat. The page runs under its strict Content-Security-Policy
throughout (a violation would be a console error). Each flow's screenshot is in docs/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.test_browser import Tab, launched
from tests.support import Client, api

#: Taller than the demo's shots: a console panel with its table.
ADMIN_VIEWPORT = {"width": 1180, "height": 660}
SCOPE = "acme"  # a scope of its own: no other test's groups in its counts


@pytest.fixture
def browser() -> Iterator[Any]:
    with launched() as chromium:
        yield chromium


def _socket(fe: Any, token: Any, user: str, *groups: str) -> Client:
    c = Client(fe.ws_url)
    c.hello(token(user))
    for group in groups:
        assert c.request("join", group=group, scope=SCOPE)["op"] == "ack"
    return c


def _cid(c: Client) -> str:
    return str(c.frames[0]["connection_id"])


def test_admin_console_walks_every_flow(cluster: Any, token: Any, browser: Any) -> None:
    a, b = cluster.frontends("adm-a", "adm-b")
    a_id, b_id = (str(api(fe, "GET", "/healthz").json()["frontend"]) for fe in (a, b))
    alice_a = _socket(a, token, "alice", "lobby", "support")
    alice_b = _socket(b, token, "alice", "lobby")
    bob = _socket(a, token, "bob", "lobby")
    sockets = [alice_a, alice_b, bob]
    tab = Tab(browser, "admin")
    page = tab.page
    page.set_viewport_size(ADMIN_VIEWPORT)
    try:
        # sign in: a wrong key is refused with the reason, a right one opens the console
        page.goto(a.url + "/admin")
        page.fill("#api-key", "not-a-key")
        page.click("#sign-in")
        expect(page.locator("#signin-error")).to_contain_text("refused (401 unauthorized")
        expect(page.locator("#console")).to_be_hidden()
        tab.doc_screenshot("admin-signin.png")
        page.fill("#api-key", "test-key-2")
        page.click("#sign-in")
        expect(page.locator("#console")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('herald.admin.key')") == "test-key-2"
        page.reload()  # the key outlives a reload of the tab (session storage)
        expect(page.locator("#console")).to_be_visible()

        # frontends with their connections (the admin page has no socket yet)
        row = {fid: page.locator(f'#frontends tr[data-id="{fid}"]') for fid in (a_id, b_id)}
        expect(row[a_id].locator(".connections")).to_have_text("2")
        expect(row[b_id].locator(".connections")).to_have_text("1")
        expect(row[a_id].locator(".published small")).to_contain_text("in all")

        # groups with their counts
        page.click('.tabs [data-tab="groups"]')
        page.fill("#groups-scope", SCOPE)
        page.press("#groups-scope", "Enter")
        expect(page.locator("#groups tbody tr")).to_have_count(2)
        expect(page.locator('#groups tr[data-group="lobby"] .members')).to_have_text("3")
        expect(page.locator('#groups tr[data-group="support"] .members')).to_have_text("1")
        tab.doc_screenshot("admin-groups.png")

        # a user's sockets and their frontends
        page.click('.tabs [data-tab="users"]')
        page.fill("#user-id", "alice")
        page.press("#user-id", "Enter")
        for c, fid in ((alice_a, a_id), (alice_b, b_id)):
            expect(page.locator(f'#user-connections tr[data-connection="{_cid(c)}"] '
                                ".frontend")).to_have_text(fid)
        expect(page.locator(f'#user-connections tr[data-connection="{_cid(alice_a)}"] .chip')
               ).to_have_text([f"{SCOPE}/lobby", f"{SCOPE}/support"])
        tab.doc_screenshot("admin-user.png")

        # presence live: from the group's row; a socket joins, then leaves, while watched
        page.click('.tabs [data-tab="groups"]')
        page.click('#groups tr[data-group="lobby"] button')
        expect(page.locator("#socket-text")).to_have_text(f"socket open on {a_id} as "
                                                          "admin:console")
        expect(page.locator("#members tbody tr")).to_have_count(3)
        carol = _socket(b, token, "carol", "lobby")
        sockets.append(carol)
        carol_row = page.locator(f'#members tr[data-connection="{_cid(carol)}"]')
        expect(carol_row).to_contain_text(b_id)
        expect(page.locator("#watch-count")).to_have_text("4")
        expect(page.locator("#changes li.join")).to_contain_text("carol joined")
        tab.doc_screenshot("admin-presence.png")
        assert carol.request("leave", group="lobby", scope=SCOPE)["op"] == "ack"
        expect(carol_row).to_have_count(0)
        expect(page.locator("#changes li.leave")).to_contain_text("carol left")
        expect(page.locator("#watch-count")).to_have_text("3")

        # publish a test message: a socket in the group receives it with the id shown
        page.click('.tabs [data-tab="publish"]')
        page.fill("#pub-scope", SCOPE)
        page.fill("#pub-group", "lobby")
        page.fill("#pub-data", '{"text": "Maintenance at 18:00"}')
        page.click("#publish")
        expect(page.locator("#pub-id")).to_have_text(re.compile(r"^id \d+$"))
        msg_id = int(str(page.locator("#pub-id").text_content()).removeprefix("id "))
        got = alice_b.wait_for(lambda f: f.get("event") == "admin.test")[0]
        assert (got["id"], got["data"]) == (msg_id, {"text": "Maintenance at 18:00"})
        tab.doc_screenshot("admin-publish.png")

        # the recent durable log shows it first
        page.click('.tabs [data-tab="log"]')
        logged = page.locator(f'#log tr[data-id="{msg_id}"]')
        expect(logged).to_contain_text("admin.test")
        expect(logged).to_contain_text(f"group {SCOPE}/lobby")
        expect(page.locator("#log tbody tr").first).to_have_attribute("data-id", str(msg_id))
        tab.doc_screenshot("admin-log.png")

        # the frontends' counters, from their heartbeats: A published it, B delivered it
        # to its one socket in the group (through the bus)
        page.click('.tabs [data-tab="frontends"]')
        expect(row[a_id].locator(".published small")).to_have_text("1 in all")
        expect(row[b_id].locator(".delivered small")).to_have_text("1 in all")
        tab.doc_screenshot("admin-frontends.png")

        # sign out: the key is gone from the tab
        page.click("#sign-out")
        expect(page.locator("#signin")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
        # nothing went wrong but the wrong key's 401
        problems = [c for c in tab.console if c.startswith(("error:", "pageerror:"))
                    or "Content Security Policy" in c]
        assert len(problems) == 1 and "status of 401" in problems[0], problems
    finally:
        tab.save_artifacts("end")
        for c in sockets:
            c.close()
