"""Load generator process: holds sockets, counts deliveries, reports latency and its own CPU.

Run by the scenarios, one process per share of sockets (asyncio + websockets), so the
client side is never the bottleneck on its own core share. It prints one JSON line when
its sockets are ready and one with its results after the ``end`` event (or a timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from typing import Any

from websockets.asyncio.client import connect

CONNECT_CONCURRENCY = 50


async def hold(url: str, token: str, join: str | None, stats: dict[str, Any],
               ready: asyncio.Event, done: asyncio.Event, sem: asyncio.Semaphore) -> None:
    async with sem:
        ws = await connect(url, max_size=None, open_timeout=30, compression=None)
        await ws.send(json.dumps({"op": "hello", "token": token}))
        json.loads(await ws.recv())
        if join:
            await ws.send(json.dumps({"op": "join", "group": join, "ref": 1}))
            json.loads(await ws.recv())
    stats["connected"] += 1
    if stats["connected"] == stats["target"]:
        ready.set()
    try:
        async for raw in ws:
            now = time.time()
            frame = json.loads(raw)
            if frame.get("op") != "event":
                continue
            if frame["event"] == "end":
                stats["ended"] += 1
                if stats["ended"] == stats["target"]:
                    done.set()
                continue
            stats["received"] += 1
            stats["lat"].append(now - frame["ts"])
    finally:
        await ws.close()


async def churn(url: str, token: str, rounds: int, ready: asyncio.Event, go: asyncio.Event,
                stats: dict[str, Any], sem: asyncio.Semaphore) -> None:
    """Hold one socket; after `go`, join and leave a group `rounds` times, awaiting acks."""
    async with sem:
        ws = await connect(url, max_size=None, open_timeout=30, compression=None)
        await ws.send(json.dumps({"op": "hello", "token": token}))
        await ws.recv()
    stats["connected"] += 1
    if stats["connected"] == stats["target"]:
        ready.set()
    await go.wait()
    group = f"churn-{stats['connected'] % 50}"
    for i in range(rounds):
        for op in ("join", "leave"):
            await ws.send(json.dumps({"op": op, "group": group, "ref": i}))
            reply = json.loads(await ws.recv())
            if reply.get("op") == "ack":
                stats["ops"] += 1
    await ws.close()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--urls", required=True, help="comma-separated ws URLs, used round robin")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--join-half", default="", help="group that every second socket joins")
    p.add_argument("--join-all", default="", help="group that every socket joins")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--churn", type=int, default=0, help="join+leave rounds per socket")
    args = p.parse_args()
    if args.churn:
        await main_churn(args)
        return
    urls = args.urls.split(",")
    stats: dict[str, Any] = {"connected": 0, "ended": 0, "received": 0, "lat": [],
                             "target": args.count}
    ready, done = asyncio.Event(), asyncio.Event()
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    tasks = [asyncio.create_task(hold(urls[i % len(urls)], args.token,
                                      args.join_all or (args.join_half if args.join_half
                                                        and i % 2 == 0 else None),
                                      stats, ready, done, sem))
             for i in range(args.count)]
    await asyncio.wait_for(ready.wait(), args.timeout)
    print(json.dumps({"ready": True}), flush=True)
    # wait for the parent to say the run is over (it publishes `end`), bounded
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), args.timeout)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"received": stats["received"], "ended": stats["ended"],
                      "lat": stats["lat"], "cpu_s": usage.ru_utime + usage.ru_stime}), flush=True)
    for t in tasks:
        t.cancel()




async def main_churn(args: argparse.Namespace) -> None:
    urls = args.urls.split(",")
    stats: dict[str, Any] = {"connected": 0, "ops": 0, "target": args.count}
    ready, go = asyncio.Event(), asyncio.Event()
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    tasks = [asyncio.create_task(churn(urls[i % len(urls)], args.token, args.churn, ready, go,
                                       stats, sem)) for i in range(args.count)]
    await asyncio.wait_for(ready.wait(), args.timeout)
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    t0 = time.monotonic()
    go.set()
    await asyncio.wait_for(asyncio.gather(*tasks), args.timeout)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"ops": stats["ops"], "elapsed": time.monotonic() - t0,
                      "cpu_s": usage.ru_utime + usage.ru_stime}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
