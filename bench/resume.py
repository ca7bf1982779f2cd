"""Resume after a crash: N sockets on frontend A (half in a group) that have all received
some durable messages; A is SIGKILLed while a backend keeps publishing durable messages
(to all and to the group); every client reconnects to frontend B with `resume` + `last_id`
(bounded concurrency). Measures the time from the kill until every client has its welcome,
and until it has every durable message addressed to it (de-duplicated by id); counts lost.

Target (issue): resume of 1,000 sockets <= 10 s, nothing lost. One table: median, min, max.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.common import Role, cpu_seconds, free_port, print_summary
from bench.sides import HeraldCluster

GROUP = "bench-resume"
WAIT_S = 120.0  # upper bound of every wait


class Client:
    """One user's socket: remembers its resume token and every durable id, with when it
    first arrived."""

    def __init__(self, token: str, member: bool) -> None:
        self.token, self.member = token, member
        self.resume = ""
        self.seen: dict[int, float] = {}
        self.dups = self.replayed = 0
        self.welcomed = 0.0
        self.resumed = False
        self.ws: ClientConnection | None = None

    def take(self, raw: str | bytes) -> None:
        now, f = time.time(), json.loads(raw)
        if f.get("op") == "event" and "id" in f:
            if f["id"] in self.seen:
                self.dups += 1
            else:
                self.seen[f["id"]] = now

    async def open(self, url: str, sem: asyncio.Semaphore, resume: bool) -> None:
        async with sem:
            ws = await connect(url, max_size=None, compression=None, open_timeout=WAIT_S)
            hello: dict[str, Any] = {"op": "hello", "token": self.token, "ref": "h"}
            if resume:
                hello.update(resume=self.resume, last_id=max(self.seen, default=0))
            await ws.send(json.dumps(hello))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
            assert welcome["op"] == "welcome", welcome
            self.welcomed, self.resume = time.time(), welcome["resume"]
            self.resumed, self.replayed = welcome["resumed"], welcome["replayed"]
            if self.member and not resume:
                await ws.send(json.dumps({"op": "join", "group": GROUP, "ref": "j"}))
                while (f := json.loads(await asyncio.wait_for(ws.recv(), WAIT_S)))["op"] != "ack":
                    assert f["op"] != "error", f
        self.ws = ws

    async def read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                self.take(raw)

    async def life(self, a: str, b: str, sem: asyncio.Semaphore,
                   opened: Callable[[], None]) -> None:
        await self.open(a, sem, resume=False)
        opened()
        await self.read()  # until A dies
        for attempt in range(3):
            try:
                await self.open(b, sem, resume=True)
                break
            except (OSError, TimeoutError, ConnectionClosed):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.5)
        await self.read()

    def missing(self, ids: dict[int, bool]) -> int:
        """How many of the published ids addressed to this client it has not got."""
        return sum(1 for i, to_group in ids.items()
                   if (self.member or not to_group) and i not in self.seen)


def publish(herald: Any, ids: dict[int, bool], count: int, rate: float, tag: int) -> None:
    """Durable messages, alternately to all and to the group; id -> sent to the group."""
    from service.core.envelope import Target

    t0 = time.monotonic()
    for i in range(count):
        to_group = i % 2 == 1
        msg_id = herald.publish(Target.group(GROUP) if to_group else Target.all(), "tick",
                                {"i": i, "run": tag})
        ids[msg_id] = to_group
        if rate:
            time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))


async def wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def run_once(cluster: HeraldCluster, herald: Any, n: int, pre: int, rate: float,
                   seconds: float, concurrency: int, tag: int) -> dict[str, float]:
    from service.core.auth import issue_token

    secret = cluster.env["HERALD_SECRET_KEY"]
    clients = [Client(issue_token(secret, f"resume-{tag}-{i}", join=["*"], ttl_s=3600),
                      member=i % 2 == 0) for i in range(n)]
    sem, all_open, opened = asyncio.Semaphore(concurrency), asyncio.Event(), [0]

    def on_open() -> None:
        opened[0] += 1
        if opened[0] == n:
            all_open.set()

    a, b = cluster.ws_urls
    tasks = [asyncio.create_task(c.life(a, b, sem, on_open)) for c in clients]
    try:
        await asyncio.wait_for(all_open.wait(), WAIT_S)
        ids: dict[int, bool] = {}
        await asyncio.to_thread(publish, herald, ids, pre, 0.0, tag)
        if not await wait_until(lambda: all(c.missing(ids) == 0 for c in clients), WAIT_S):
            raise RuntimeError("the messages before the kill did not all arrive")
        pub = threading.Thread(target=publish, args=(herald, ids, int(rate * seconds), rate, tag))
        pub.start()
        await asyncio.sleep(min(0.5, seconds / 4))
        usage0, kill_at = resource.getrusage(resource.RUSAGE_SELF), time.time()
        victim, survivor = cluster.frontends[0], cluster.frontends[1].pids()
        cpu_b = cpu_seconds(survivor)
        os.killpg(victim.popen.pid, signal.SIGKILL)
        victim.popen.wait(timeout=10)
        await asyncio.to_thread(pub.join, WAIT_S)
        pub_end = time.time() - kill_at
        snapshot = dict(ids)
        await wait_until(lambda: all(c.missing(snapshot) == 0 for c in clients), WAIT_S)
        usage, cpu_b = resource.getrusage(resource.RUSAGE_SELF), cpu_seconds(survivor) - cpu_b
        done = [max([c.welcomed] + [c.seen.get(i, c.welcomed) for i, g in snapshot.items()
                                    if c.member or not g]) for c in clients]
        return {"all welcomed (s)": max(c.welcomed for c in clients) - kill_at,
                "all caught up (s)": max(done) - kill_at,
                "publisher ended (s)": pub_end,
                "lost": sum(c.missing(snapshot) for c in clients),
                "not resumed": sum(not c.resumed for c in clients),
                "replayed (frames)": sum(c.replayed for c in clients),
                "duplicates dropped": sum(c.dups for c in clients),
                "frontend B CPU in recovery (s)": cpu_b,
                "client CPU in recovery (s)": (usage.ru_utime + usage.ru_stime
                                               - usage0.ru_utime - usage0.ru_stime)}
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*(c.ws.close() for c in clients if c.ws is not None),
                             return_exceptions=True)


TARGETS = {"all welcomed (s)": "<= 10", "all caught up (s)": "<= 10", "lost": "0"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--concurrency", type=int, default=100, help="reconnects at once")
    p.add_argument("--rate", type=float, default=20.0, help="durable msg/s during the kill")
    args = p.parse_args()
    n, seconds = (100, 2.0) if args.smoke else (1000, 3.0)
    cluster = HeraldCluster()  # also exports its HERALD_* settings to os.environ
    from service.pg import Herald

    herald = Herald()
    try:
        results = []
        for run in range(args.runs):
            if run:  # a fresh frontend A (on a new port) to kill again
                port = free_port()
                cluster.frontends[0] = Role(["run", "frontend", "--port", str(port)],
                                            cluster.env, port=port)
                cluster.frontends[0].wait_ready()
            results.append(asyncio.run(run_once(cluster, herald, n, 10, args.rate, seconds,
                                                args.concurrency, run)))
        print_summary(f"Resume after SIGKILL of frontend A ({n} sockets, half in a group; "
                      f"{args.rate:.0f} durable msg/s for {seconds:.0f} s around the kill; "
                      f"{args.concurrency} reconnects at once; {args.runs} runs)", results,
                      [(key, key, TARGETS.get(key, "")) for key in results[0]], digits=2)
    finally:
        herald.close()
        cluster.close()


if __name__ == "__main__":
    main()
