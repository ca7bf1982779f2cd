"""Issue 14: the faults production brings, on the production topology (``tests/topology``):
a three-node RabbitMQ cluster, three frontends and a worker on hosts of their own, 210
clients here. Each test streams durable messages to every client, breaks something while
the stream runs, heals it, and counts: every message accepted (202) reaches every client,
once after de-duplication by id, each publisher's in the order it published them. What
each fault cost (the longest a message waited, 503s, messages replayed) is written to
``test-artifacts/faults.json``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import ENV
from tests.support import ARTIFACTS, WAIT_S, Client, Proc, ResumingClient, api, wait_until
from tests.topology.hosts import Topology, topology

CLIENTS_PER_FRONTEND = 70
GROUP = f"faults-{uuid.uuid4().hex[:6]}"
#: Durable publishes per second while a fault runs, and how long a link stays cut.
RATE_HZ = 20
CUT_S = 20.0
IMPAIR_S = 60.0
#: How long clients may take to have everything once the fault is healed.
CATCH_UP_S = 60.0


class TimedClient(Client):
    """A client that stamps each frame with its arrival time (for the fault figures)."""

    def on_frame(self, frame: dict[str, Any]) -> None:
        frame["_t"] = time.time()
        super().on_frame(frame)


class Stream:
    """Durable messages to the group at ``RATE_HZ`` through the given frontends' API,
    bounded in count; a refused publish (503) is retried on the next frontend."""

    def __init__(self, via: list[Proc]) -> None:
        self.via = via
        self.sent: dict[int, float] = {}  # id -> when it was accepted
        self.via_of: dict[int, int] = {}  # id -> which frontend accepted it
        self.refused = 0
        self.first_refusal: float | None = None
        self.recovered_after: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)

    def _run(self) -> None:
        limit = int((CUT_S + IMPAIR_S + 60) * RATE_HZ)  # a bound whatever the test does
        due = time.monotonic()
        for n in range(limit):
            if self._stop.is_set():
                return
            self._publish(n)
            # on a schedule, so slow publishes (a loaded machine) do not thin the stream;
            # after a stall it catches up with at most a second's worth at once
            due = max(due + 1 / RATE_HZ, time.monotonic() - 1.0)
            self._stop.wait(max(0.0, due - time.monotonic()))

    def _publish(self, n: int) -> None:
        for attempt in range(len(self.via) * 10):
            proc = self.via[(n + attempt) % len(self.via)]
            asked = time.time()
            try:
                r = api(proc, "POST", "/api/publish",
                        json={"target": {"group": GROUP}, "event": "tick", "data": {"n": n}})
            except requests.RequestException:
                r = None
            if r is not None and r.status_code == 202:
                msg_id = r.json()["id"]
                self.sent[msg_id] = asked
                self.via_of[msg_id] = (n + attempt) % len(self.via)
                if self.first_refusal is not None and self.recovered_after is None:
                    self.recovered_after = time.time() - self.first_refusal
                return
            assert r is None or r.status_code == 503, (r.status_code, r.text)
            if r is not None:
                assert r.json()["error"] == "unavailable", r.text
            self.refused += 1
            if self.first_refusal is None:
                self.first_refusal = time.time()
            time.sleep(0.2)
        raise AssertionError(f"publish {n} refused {len(self.via) * 10} times")


class Fleet:
    """The clients, ``CLIENTS_PER_FRONTEND`` on each frontend, all in ``GROUP``."""

    def __init__(self, topo: Topology, token: Any) -> None:
        self.topo = topo
        self.clients: list[ResumingClient] = []
        self.home: list[int] = []  # the frontend each client is on now
        for i, fe in enumerate(topo.frontends):
            for _ in range(CLIENTS_PER_FRONTEND):
                c = ResumingClient(fe.ws_url, token(f"u-{uuid.uuid4().hex[:8]}"),
                                   client=TimedClient)
                assert c.current.request("join", group=GROUP)["op"] == "ack"
                self.clients.append(c)
                self.home.append(i)

    def on(self, i: int) -> list[ResumingClient]:
        return [c for c, h in zip(self.clients, self.home, strict=True) if h == i]

    def check(self, stream: Stream, name: str, **figures: Any) -> dict[str, Any]:
        """Every accepted id at every client, once after de-duplication, each publisher's
        in order; write the fault's figures."""
        want = sorted(stream.sent)
        assert want, "the stream sent nothing"
        wanted = set(want)

        def complete() -> bool:
            return all(wanted <= set(c.durable_ids()) for c in self.clients)

        try:
            wait_until(complete, timeout=CATCH_UP_S, interval=0.5)
        except TimeoutError:
            short = [(i, len(wanted - set(c.durable_ids())))
                     for i, c in enumerate(self.clients) if not wanted <= set(c.durable_ids())]
            raise AssertionError(f"{len(short)} clients miss messages: {short[:10]}") from None
        waits = []
        # each publisher's messages in the order it published them (as RabbitMQ keeps
        # them); two publishers' messages may interleave differently on two frontends
        disordered = []
        for n, c in enumerate(self.clients):
            got = [i for i in c.unique_in_order() if i in wanted]
            for via in set(stream.via_of.values()):
                mine = [i for i in got if stream.via_of[i] == via]
                if mine != sorted(mine):
                    disordered.append((n, self.home[n], via, _first_difference(
                        mine, sorted(mine))))
        assert not disordered, f"{len(disordered)} clients out of order: {disordered[:5]}"
        for c in self.clients:
            first: dict[int, float] = {}
            for sock in c.sockets:
                for f in list(sock.frames):
                    if f.get("id") in wanted:
                        first[f["id"]] = min(first.get(f["id"], f["_t"]), f["_t"])
            waits.extend(first[i] - stream.sent[i] for i in want)
        waits.sort()
        result = {"messages": len(want), "clients": len(self.clients),
                  "deliveries": len(waits), "refused_503": stream.refused,
                  "retry_succeeded_after_s": stream.recovered_after,
                  "p50_s": round(waits[len(waits) // 2], 3),
                  "p99_s": round(waits[int(len(waits) * 0.99)], 3),
                  "longest_wait_s": round(waits[-1], 3), **figures}
        _record(name, result)
        return result

    def close(self) -> None:
        for c in self.clients:
            for sock in c.sockets:
                sock.close()


def _first_difference(got: list[int], want: list[int]) -> list[int]:
    """``got`` around its first difference from ``want`` (for the failure message)."""
    at = next(i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w)
    return got[max(0, at - 2):at + 4]


def _record(name: str, result: dict[str, Any]) -> None:
    path = ARTIFACTS / "faults.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = result
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    print(f"\nfault {name}: {result}")


def _replayed(fe: Proc) -> float:
    text = requests.get(fe.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("herald_replayed_messages_total"):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with topology(ENV) as t:
        yield t


@pytest.fixture(scope="module")
def fleet(topo: Topology) -> Iterator[Fleet]:
    from service.core.auth import issue_token

    def token(user: str) -> str:
        return issue_token(ENV["HERALD_SECRET_KEY"], user, join=("*/*",), publish=("*/*",),
                           tasks=(), ttl_s=3600)

    f = Fleet(topo, token)
    try:
        yield f
    finally:
        f.close()


def _all_connected(fleet: Fleet) -> None:
    dropped = [i for i, c in enumerate(fleet.clients) if c.current.closed.is_set()]
    assert not dropped, f"clients dropped: {dropped[:10]}"


def test_broker_node_killed(topo: Topology, fleet: Fleet) -> None:
    """1. SIGKILL the node frontend 0 consumes from: it fails over to the next node."""
    assert topo.rabbit is not None
    node = topo.rabbit.nodes[0]
    before = _replayed(topo.frontends[0])
    with Stream(topo.frontends) as stream:
        time.sleep(3)
        topo.rabbit.kill(node)
        time.sleep(10)
    try:
        result = fleet.check(stream, "broker_node_killed",
                             replayed=_replayed(topo.frontends[0]) - before)
        _all_connected(fleet)
        assert result["messages"] >= 100 and result["clients"] >= 200
    finally:
        topo.rabbit.restart(node)


def test_broker_link_cut(topo: Topology, fleet: Fleet) -> None:
    """3. Frontend 0 loses the broker for CUT_S; its browsers stay connected."""
    fe = topo.frontends[0]
    link = topo.hosts[0].links["broker"]
    before = _replayed(fe)
    with Stream(topo.frontends[1:]) as stream:
        time.sleep(2)
        link.cut()
        healed_at = time.monotonic() + CUT_S
        try:
            # noticed two broker heartbeats after the link went quiet
            reason = wait_until(lambda: _unready(fe), timeout=CUT_S - 1)
        finally:
            time.sleep(max(0.0, healed_at - time.monotonic()))
            link.heal()
        wait_until(lambda: _unready(fe) is None, timeout=WAIT_S)
        time.sleep(2)
    fleet.check(stream, "broker_link_cut", cut_s=CUT_S, readiness=reason,
                replayed=_replayed(fe) - before)
    _all_connected(fleet)


def _unready(fe: Proc) -> str | None:
    r = requests.get(fe.url + "/readyz", timeout=5)
    return None if r.status_code == 200 else str(r.json().get("reason"))


def _members(via: Proc) -> dict[str, str]:
    r = api(via, "GET", f"/api/groups/default/{GROUP}/members")
    assert r.status_code == 200, r.text
    return {m["connection_id"]: m["frontend"] for m in r.json()}


def _live(fleet: Fleet) -> dict[str, str]:
    """connection id -> frontend, as the live sockets' welcomes say."""
    return {w["connection_id"]: w["frontend"] for w in (c.welcomes[-1] for c in fleet.clients)}


def test_database_link_cut(topo: Topology, fleet: Fleet) -> None:
    """4. Frontend 0 loses Postgres for CUT_S: transient traffic keeps flowing, the
    registry catches up (the sweeper took its rows meanwhile; it takes them back)."""
    fe, other = topo.frontends[0], topo.frontends[1]
    link = topo.hosts[0].links["db"]
    marker = f"transient-{uuid.uuid4().hex[:6]}"
    with Stream(topo.frontends[1:]) as stream:
        time.sleep(2)
        link.cut()
        try:
            time.sleep(CUT_S / 2)
            r = api(other, "POST", "/api/publish", json={
                "target": {"group": GROUP}, "event": marker, "durable": False})
            assert r.status_code == 202, r.text
            for c in fleet.on(0):  # reached through the broker, Postgres or not
                c.current.wait_for(lambda f: f.get("event") == marker)
            swept = _frontend_id(fe) not in topo.frontend_ids(other)
            time.sleep(CUT_S / 2)
        finally:
            link.heal()
        time.sleep(2)
    fleet.check(stream, "database_link_cut", cut_s=CUT_S, swept_while_cut=swept)
    _all_connected(fleet)
    live = _live(fleet)
    wait_until(lambda: _members(other) == live, timeout=WAIT_S)


def _frontend_id(fe: Proc) -> str:
    return str(requests.get(fe.url + "/healthz", timeout=5).json()["frontend"])


def test_frontend_cut_off(topo: Topology, fleet: Fleet) -> None:
    """5. Frontend 2 is cut off from everything for CUT_S: it is swept, its clients resume
    on the others; back, it takes back no row and closes its old sockets with 4409."""
    fe, survivors = topo.frontends[2], topo.frontends[:2]
    fe_id = _frontend_id(fe)
    links = list(topo.hosts[2].links.values())
    moved = fleet.on(2)
    old = [c.current for c in moved]
    with Stream(survivors) as stream:
        time.sleep(2)
        for link in links:
            link.cut()
        try:
            cut_at = time.monotonic()
            wait_until(lambda: fe_id not in topo.frontend_ids(survivors[0]), timeout=CUT_S)
            swept_after = time.monotonic() - cut_at
            for n, c in enumerate(moved):  # what herald.js does when its socket goes quiet
                welcome = c.connect(survivors[n % 2].ws_url)
                assert welcome["resumed"], welcome
            fleet.home = [h if h != 2 else n % 2 for n, h in enumerate(fleet.home)]
            time.sleep(max(0.0, cut_at + CUT_S - time.monotonic()))
        finally:
            for link in links:
                link.heal()
        # the newer socket wins: the old ones hear 4409 once the frontend is back
        for sock in old:
            assert sock.closed.wait(WAIT_S), "an old socket was not closed"
            assert sock.close_code == 4409, sock.close_code
    fleet.check(stream, "frontend_cut_off", cut_s=CUT_S, swept_after_s=round(swept_after, 1))
    wait_until(lambda: _members(survivors[0]) == _live(fleet), timeout=WAIT_S)
    assert fe_id in topo.frontend_ids(survivors[0])  # registered again, holding nothing


def test_broker_link_impaired(topo: Topology, fleet: Fleet) -> None:
    """6. 10% packet loss and 200 ms delay on frontend 0's broker link for IMPAIR_S."""
    link = topo.hosts[0].links["broker"]
    with Stream(topo.frontends) as stream:
        time.sleep(2)
        link.drop(loss_pct=10)
        topo.delay_broker(0.2)
        try:
            time.sleep(IMPAIR_S)
        finally:
            topo.delay_broker(0.0)
            link.restore()
        time.sleep(2)
    fleet.check(stream, "broker_link_impaired", loss_pct=10, delay_ms=200,
                impaired_s=IMPAIR_S)
    _all_connected(fleet)
