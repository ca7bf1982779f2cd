"""Task round trip: a client socket starts `demo.noop` with the `task` op and waits for
`task.succeeded`; sequentially (p50/p99, with the ack and task.started legs), then a burst
fired without waiting (tasks/s with one Celery worker).

Target (issue): round trip p50 <= 15 ms. Prints one table: median, min, max over --runs.
The per-socket frame rate limit is raised for this bench only, so the burst measures the
task pipeline, not the limiter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect

from bench.common import (
    ROOT,
    Role,
    bench_env,
    cpu_seconds,
    delete_exchange,
    free_port,
    percentile,
    print_summary,
    stop_all,
)

WAIT_S = 120.0  # upper bound of any single wait


class TaskStack:
    """One frontend and one Celery worker on a fresh database, exchange and task queue."""

    def __init__(self, concurrency: int) -> None:
        self.env = {**bench_env(), "HERALD_RATE_LIMIT": "100000", "HERALD_RATE_BURST": "100000",
                    "HERALD_WORKER_CONCURRENCY": str(concurrency)}
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "db", "upgrade"], cwd=ROOT,
                       env=self.env, check=True, capture_output=True)
        port = free_port()
        self.frontend = Role(["run", "frontend", "--port", str(port)], self.env, port=port)
        self.worker = Role(["run", "worker"], self.env)
        try:
            self.frontend.wait_ready()
        except BaseException:
            self.close()
            raise

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.frontend.port}/ws"

    def token(self) -> str:
        from service.core.auth import issue_token

        return issue_token(self.env["HERALD_SECRET_KEY"], f"rtt-{uuid.uuid4().hex[:8]}",
                           tasks=["demo.*"], ttl_s=3600)

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by (the frontend, the worker and its children)."""
        return cpu_seconds(self.frontend.pids()), cpu_seconds(self.worker.pids())

    def close(self) -> None:
        stop_all([self.worker, self.frontend])
        from kombu import Connection, Exchange, Queue

        from service.store.db import drop_database

        drop_database(self.env["HERALD_DATABASE_URL"])
        queue = self.env["HERALD_TASK_QUEUE"]  # best effort: leave the broker as it was
        with contextlib.suppress(Exception), Connection(self.env.get(
                "HERALD_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")) as conn:
            Queue(queue, channel=conn.channel()).delete()
            for name in (queue, f"{queue}.events", self.env["HERALD_EXCHANGE"]):
                Exchange(name, channel=conn.channel()).delete()
        delete_exchange(self.env["HERALD_EXCHANGE"])  # and its direct twin


class TaskClient:
    """One socket; records when each ack, task.started and task.succeeded arrived."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.sent: dict[str, float] = {}
        self.task_of: dict[str, str] = {}  # ref -> task_id (from the ack)
        self.acked: dict[str, float] = {}  # ref -> time
        self.started: dict[str, float] = {}  # task_id -> time
        self.succeeded: dict[str, float] = {}  # task_id -> time
        self.changed = asyncio.Event()

    async def read(self) -> None:
        async for raw in self.ws:
            now = time.perf_counter()
            f = json.loads(raw)
            if f.get("op") == "ack" and "task_id" in f:
                self.task_of[f["ref"]], self.acked[f["ref"]] = f["task_id"], now
            elif f.get("op") == "event" and f["event"] in ("task.started", "task.succeeded"):
                seen = self.started if f["event"] == "task.started" else self.succeeded
                seen.setdefault(f["data"]["task_id"], now)
            elif f.get("op") == "error":
                raise RuntimeError(f"error frame: {f}")
            self.changed.set()

    async def start(self, ref: str) -> None:
        self.sent[ref] = time.perf_counter()
        await self.ws.send(json.dumps({"op": "task", "ref": ref, "name": "demo.noop"}))

    def done(self, ref: str) -> bool:
        return ref in self.task_of and self.task_of[ref] in self.succeeded

    async def wait(self, refs: list[str], deadline: float) -> None:
        while not all(self.done(r) for r in refs):
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.001, deadline - time.monotonic()))

    def legs(self, ref: str) -> tuple[float, float, float]:
        """(ack, started, succeeded) seconds after the frame was sent."""
        t0, tid = self.sent[ref], self.task_of[ref]
        return (self.acked[ref] - t0, self.started.get(tid, float("nan")) - t0,
                self.succeeded[tid] - t0)


async def session(url: str, token: str, warmup: int, seq: int, burst: int, tag: str,
                  cpu: Callable[[], tuple[float, float]]) -> dict[str, float]:
    async with connect(url, max_size=None, compression=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"op": "hello", "token": token, "ref": 0}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert welcome["op"] == "welcome", welcome
        client = TaskClient(ws)
        reader = asyncio.create_task(client.read())
        deadline = time.monotonic() + WAIT_S
        try:
            for i in range(warmup):
                await client.start(f"{tag}w{i}")
                await client.wait([f"{tag}w{i}"], deadline)
            refs = [f"{tag}s{i}" for i in range(seq)]
            for ref in refs:
                await client.start(ref)
                await client.wait([ref], deadline)
            legs = [client.legs(r) for r in refs]
            brefs = [f"{tag}b{i}" for i in range(burst)]
            cpu0, t0 = cpu(), time.perf_counter()
            for ref in brefs:
                await client.start(ref)
            await client.wait(brefs, time.monotonic() + WAIT_S)
            elapsed = max(client.succeeded[client.task_of[r]] for r in brefs) - t0
            cpu1 = cpu()
        finally:
            reader.cancel()
    rtt = [x[2] * 1e3 for x in legs]
    return {"rtt_p50": percentile(rtt, 50), "rtt_p99": percentile(rtt, 99),
            "ack_p50": percentile([x[0] * 1e3 for x in legs], 50),
            "started_p50": percentile([x[1] * 1e3 for x in legs], 50),
            "burst_tasks_s": burst / elapsed,
            "frontend_ms": (cpu1[0] - cpu0[0]) / burst * 1e3,
            "worker_ms": (cpu1[1] - cpu0[1]) / burst * 1e3}


ROWS = [("rtt_p50", "round trip p50 (ms)", "<= 15"), ("rtt_p99", "round trip p99 (ms)", ""),
        ("ack_p50", "  ack (enqueued) p50 (ms)", ""),
        ("started_p50", "  task.started p50 (ms)", ""),
        ("burst_tasks_s", "burst tasks/s", ""),
        ("frontend_ms", "  frontend CPU ms/task", ""),
        ("worker_ms", "  worker CPU ms/task", "")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    args = p.parse_args()
    seq, burst = (20, 50) if args.smoke else (200, 500)
    stack = TaskStack(args.concurrency)
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith("HERALD_")})
    try:
        results = []
        for run in range(args.runs):
            # the first run also waits for the worker to come up (its warm-up tasks)
            results.append(asyncio.run(session(stack.ws_url, stack.token(), 10 if run else 20,
                                               seq, burst, f"r{run}", stack.cpu)))
        print_summary(f"Task round trip (demo.noop via the task op; {seq} sequential, burst of "
                      f"{burst}; 1 worker, concurrency {args.concurrency}; {args.runs} runs)",
                      results, ROWS)
    finally:
        stack.close()


if __name__ == "__main__":
    main()
