"""Issue 4: frontends die or drain mid-stream and no durable message is lost."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from service.core.envelope import Target
from service.pg import Herald
from tests.support import ResumingClient, wait_until

CLIENTS = 200
MESSAGES = 120
INTERVAL_S = 0.02


class Stream:
    """A bounded stream of durable messages, alternately to all and to a group, published
    by a backend (no frontend in between), in a background thread."""

    def __init__(self, group: str, count: int = MESSAGES) -> None:
        self.group, self.count = group, count
        self.ids: dict[int, str] = {}  # id -> "all" | "group"
        self.herald = Herald()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.progress = threading.Event()

    def _run(self) -> None:
        for i in range(self.count):
            to_group = i % 2 == 1
            target = Target.group(self.group) if to_group else Target.all()
            msg_id = self.herald.publish(target, "tick", {"i": i})
            assert msg_id is not None
            self.ids[msg_id] = "group" if to_group else "all"
            if i == self.count // 3:
                self.progress.set()
            time.sleep(INTERVAL_S)

    def expected(self, member: bool) -> list[int]:
        return sorted(i for i, kind in self.ids.items() if member or kind == "all")


def _start_clients(a: Any, b: Any, token: Any, group: str) -> list[ResumingClient]:
    clients = []
    for i in range(CLIENTS):
        c = ResumingClient((a if i % 2 == 0 else b).ws_url, token(f"user-{uuid.uuid4().hex[:8]}"))
        if i % 4 < 2:  # half of them, on both frontends, are in the group
            assert c.current.request("join", group=group)["op"] == "ack"
        clients.append(c)
    return clients


def _check_everyone(clients: list[ResumingClient], stream: Stream, group: str) -> None:
    for n, c in enumerate(clients):
        member = n % 4 < 2
        want = stream.expected(member)
        wait_until(lambda c=c, want=want: set(want) <= set(c.durable_ids()), timeout=60)
        got = c.unique_in_order()
        assert got == want, f"client {n}: missing {sorted(set(want) - set(got))[:10]}"


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_clients_resume_on_the_survivor_and_miss_nothing(cluster: Any, token: Any,
                                                         how: str) -> None:
    a, b = cluster.frontends("a", "b")
    group = f"g-{uuid.uuid4().hex[:6]}"
    clients = _start_clients(a, b, token, group)
    on_a = clients[0::2]
    stream = Stream(group)
    stream.thread.start()
    assert stream.progress.wait(30)

    if how == "sigkill":
        a.kill()
    else:
        a.stop()  # SIGTERM: a drain
    for c in on_a:
        assert c.current.closed.wait(30)
        if how == "sigterm":
            assert c.current.close_code == 1012
    for c in on_a:
        welcome = c.connect(b.ws_url)
        assert welcome["resumed"] is True
        assert welcome["connection_id"] == c.welcomes[0]["connection_id"]
    stream.thread.join(60)
    _check_everyone(clients, stream, group)
    # memberships came back with the resume
    member_on_a = on_a[0]
    assert member_on_a.welcomes[-1]["groups"] == [{"scope": "default", "group": group}]
    assert sum(c.welcomes[-1]["replayed"] for c in on_a) > 0
