"""Issue 4: a client that stops reading is cut off with 1013; nobody else waits for it."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from service.core.envelope import Target
from service.pg import Herald
from tests.rawws import RawClient
from tests.support import Client

#: Readers that keep up (50 show that one stalled socket costs the others nothing; 200
#: cost CI a minute of this process reading 2 GB)
OTHERS = 50
MESSAGES = 5000
PAD = "x" * 2000  # 5,000 of these overflow any kernel buffer plus the default outbox
#: Publishing pace: what this test's own reader threads (one Python process) sustain.
RATE_PER_S = 500


class CountingClient(Client):
    """Keeps counts, not frames: 200 sockets x 5,000 messages would not fit otherwise."""

    def __init__(self, url: str) -> None:
        self.ticks = bytearray(MESSAGES)
        self.dups = 0
        self.done = threading.Event()
        super().__init__(url)

    def on_frame(self, frame: dict[str, Any]) -> None:
        if frame.get("op") == "event" and frame.get("event") == "tick":
            i = frame["data"]["i"]
            self.dups += self.ticks[i]
            self.ticks[i] = 1
            return
        if frame.get("event") == "end":
            self.done.set()
        super().on_frame(frame)


def test_a_stalled_reader_is_closed_1013_and_the_rest_get_everything(cluster: Any,
                                                                      token: Any) -> None:
    fe = cluster.frontend("slow")  # the default HERALD_OUTBOX_LIMIT (1024)
    others = []
    for _ in range(OTHERS):
        c = CountingClient(fe.ws_url)
        c.hello(token(f"u-{uuid.uuid4().hex[:6]}"))
        others.append(c)
    stalled = RawClient("127.0.0.1", fe.port, rcvbuf=4096)
    stalled.send_json({"op": "hello", "token": token("stalled")})
    assert stalled.read_json()["op"] == "welcome"
    # from here on the stalled client reads nothing

    herald = Herald()
    start = time.monotonic()
    for i in range(MESSAGES):
        herald.publish(Target.all(), "tick", {"i": i, "pad": PAD}, durable=False)
        time.sleep(max(0.0, start + (i + 1) / RATE_PER_S - time.monotonic()))
    herald.publish(Target.all(), "end", None, durable=False)

    for c in others:
        assert c.done.wait(300), "a healthy client did not get to the end"
        assert c.ticks.count(1) == MESSAGES and c.dups == 0
        assert not c.closed.is_set()
    assert stalled.read_until_close() == 1013
    herald.close()
