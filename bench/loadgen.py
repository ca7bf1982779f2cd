"""Load generator process: holds sockets, counts deliveries, reports latency and its own CPU.

Run by the scenarios, one process per share of sockets (asyncio + websockets), so the
client side is never the bottleneck on its own core share. Two protocols over the same
harness: Herald's (`hello`/`welcome`, `join`/`ack`, `event` frames) and Socket.IO v5 over
Engine.IO v4 on a raw websocket (the peer): open packet ``0{...}``, ``40`` → ``40{...}``,
events ``42["tick",{...}]``, pings ``2`` answered with ``3``.

Modes (one JSON line out per step, commands in on stdin; every wait bounded by --timeout):

* fan-out (default): connect, print ``ready``, count ticks until every socket got ``end``,
  print received/latencies/CPU.
* ``--idle``: connect, print ``ready``, hold the sockets until a line on stdin.
* ``--storm``: print ``waiting``, connect all on a line on stdin (``--concurrency`` at a
  time), print how many connected, hold them until the next line.
* ``--churn N``: Herald only: after a line on stdin, join+leave N times per socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect

from bench.common import raise_nofile

CONNECT_CONCURRENCY = 50


@dataclass
class Stats:
    target: int
    connected: int = 0
    failed: int = 0
    ended: int = 0
    received: int = 0
    ops: int = 0
    lat: list[float] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def opened(self, ok: bool) -> None:
        if ok:
            self.connected += 1
        else:
            self.failed += 1
        if self.connected + self.failed == self.target:
            self.ready.set()

    def end(self) -> None:
        self.ended += 1
        if self.ended == self.connected:
            self.done.set()


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def ws_connect(url: str) -> ClientConnection:
    # no client keepalive pings (the server's protocol decides), no compression
    return await connect(url, max_size=None, open_timeout=60, compression=None,
                         ping_interval=None, close_timeout=2)


# --- the two protocols ------------------------------------------------------------------------

async def open_herald(url: str, token: str, join: str | None) -> ClientConnection:
    ws = await ws_connect(url)
    await ws.send(json.dumps({"op": "hello", "token": token}))
    reply = json.loads(await ws.recv())
    if reply.get("op") != "welcome":
        await ws.close()
        raise RuntimeError(f"no welcome: {reply}")
    if join:
        await ws.send(json.dumps({"op": "join", "group": join, "ref": 1}))
        while (reply := json.loads(await ws.recv())).get("ref") != 1:
            pass
        if reply.get("op") != "ack":
            await ws.close()
            raise RuntimeError(f"join refused: {reply}")
    return ws


async def open_sio(url: str, join: str | None) -> ClientConnection:
    """Engine.IO open, then the Socket.IO connect to the default namespace (the peer's
    connect handler joins the room named by ``group`` before it answers)."""
    ws = await ws_connect(url + (f"&group={quote(join)}" if join else ""))
    opened = await ws.recv()
    if not isinstance(opened, str) or not opened.startswith("0{"):
        raise RuntimeError(f"no engine.io open packet: {opened!r}")
    await ws.send("40")
    while True:
        reply = await ws.recv()
        if reply == "2":
            await ws.send("3")
            continue
        if isinstance(reply, str) and reply.startswith("40"):
            return ws
        await ws.close()
        raise RuntimeError(f"socket.io connect refused: {reply!r}")


async def consume_herald(ws: ClientConnection, stats: Stats) -> None:
    async for raw in ws:
        now = time.time()
        frame = json.loads(raw)
        if frame.get("op") != "event":
            continue
        if frame["event"] == "end":
            stats.end()
            continue
        stats.received += 1
        stats.lat.append(now - frame["ts"])


async def consume_sio(ws: ClientConnection, stats: Stats) -> None:
    async for raw in ws:
        now = time.time()
        if raw == "2":  # engine.io ping
            await ws.send("3")
            continue
        if not isinstance(raw, str) or not raw.startswith("42"):
            continue
        event, data = json.loads(raw[2:])[:2]
        if event == "end":
            stats.end()
            continue
        stats.received += 1
        stats.lat.append(now - data["ts"])


# --- one socket -------------------------------------------------------------------------------

class Client:
    """Opens and then reads one socket in the chosen protocol."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.urls = args.urls.split(",")
        self.tokens: list[str] = []
        if args.protocol == "herald":
            self.tokens = mint_tokens(args)

    def join_of(self, i: int) -> str | None:
        if self.args.join_all:
            return str(self.args.join_all)
        if self.args.join_half and i % 2 == 0:
            return str(self.args.join_half)
        return None

    async def open(self, i: int) -> ClientConnection:
        url = self.urls[i % len(self.urls)]
        if self.args.protocol == "socketio":
            return await open_sio(url, self.join_of(i))
        return await open_herald(url, self.tokens[i], self.join_of(i))

    async def run(self, i: int, stats: Stats, sem: asyncio.Semaphore) -> None:
        try:
            async with sem:
                ws = await self.open(i)
        except Exception as exc:  # noqa: BLE001 - a failed socket is counted, not fatal
            stats.opened(False)
            if stats.failed <= 3:
                print(f"loadgen: socket {i} failed: {exc!r}", file=sys.stderr)
            return
        stats.opened(True)
        consume = consume_sio if self.args.protocol == "socketio" else consume_herald
        try:
            with contextlib.suppress(Exception):
                await consume(ws, stats)
        finally:
            with contextlib.suppress(Exception):
                await ws.close()


def mint_tokens(args: argparse.Namespace) -> list[str]:
    """One token per socket, each for its own user (as browsers would), or the shared one."""
    if not args.secret:
        return [args.token] * args.count
    from service.auth import issue_token

    pid = os.getpid()
    return [issue_token(args.secret, f"bench-{pid}-{i}", join=["*"], ttl_s=3600)
            for i in range(args.count)]


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def stdin_line(timeout: float) -> str:
    """The next line on stdin ('' at EOF or after ``timeout``)."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        return str(await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline),
                                          timeout))
    return ""


async def main_sockets(args: argparse.Namespace) -> None:
    client = Client(args)
    stats = Stats(target=args.count)
    sem = asyncio.Semaphore(args.concurrency)
    if args.storm:
        emit({"waiting": True})
        await stdin_line(args.timeout)
    t0, cpu0 = time.monotonic(), cpu_now()
    tasks = [asyncio.create_task(client.run(i, stats, sem)) for i in range(args.count)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stats.ready.wait(), args.timeout)
    opened = {"connected": stats.connected, "failed": stats.failed,
              "elapsed": time.monotonic() - t0, "cpu_s": cpu_now() - cpu0}
    if args.storm or args.idle:
        emit({"ready": True, **opened})
        await stdin_line(args.timeout)
    else:
        emit({"ready": True, **opened})
        cpu0 = cpu_now()
        with contextlib.suppress(TimeoutError):  # the parent publishes `end` when it is done
            await asyncio.wait_for(stats.done.wait(), args.timeout)
        emit({"received": stats.received, "ended": stats.ended, "connected": stats.connected,
              "lat": [round(x, 6) for x in stats.lat], "cpu_s": cpu_now() - cpu0})
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def churn(url: str, token: str, rounds: int, stats: Stats, go: asyncio.Event,
                sem: asyncio.Semaphore) -> None:
    """Hold one socket; after `go`, join and leave a group `rounds` times, awaiting acks."""
    async with sem:
        ws = await open_herald(url, token, None)
    stats.opened(True)
    await go.wait()
    group = f"churn-{stats.connected % 50}"
    for i in range(rounds):
        for op in ("join", "leave"):
            await ws.send(json.dumps({"op": op, "group": group, "ref": i}))
            reply = json.loads(await ws.recv())
            if reply.get("op") == "ack":
                stats.ops += 1
    await ws.close()


async def main_churn(args: argparse.Namespace) -> None:
    urls = args.urls.split(",")
    tokens = mint_tokens(args)
    stats = Stats(target=args.count)
    go = asyncio.Event()
    sem = asyncio.Semaphore(args.concurrency)
    tasks = [asyncio.create_task(churn(urls[i % len(urls)], tokens[i], args.churn, stats, go,
                                       sem)) for i in range(args.count)]
    await asyncio.wait_for(stats.ready.wait(), args.timeout)
    emit({"ready": True})
    await stdin_line(args.timeout)
    t0 = time.monotonic()
    go.set()
    await asyncio.wait_for(asyncio.gather(*tasks), args.timeout)
    emit({"ops": stats.ops, "elapsed": time.monotonic() - t0, "cpu_s": cpu_now()})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--urls", required=True, help="comma-separated ws URLs, used round robin")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--protocol", choices=("herald", "socketio"), default="herald")
    p.add_argument("--token", default="", help="Herald: one token for every socket")
    p.add_argument("--secret", default="", help="Herald: mint a token per socket (own user)")
    p.add_argument("--join-half", default="", help="group that every second socket joins")
    p.add_argument("--join-all", default="", help="group that every socket joins")
    p.add_argument("--timeout", type=float, default=120, help="bound of every wait, s")
    p.add_argument("--concurrency", type=int, default=CONNECT_CONCURRENCY)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--idle", action="store_true")
    mode.add_argument("--storm", action="store_true")
    mode.add_argument("--churn", type=int, default=0, help="join+leave rounds per socket")
    args = p.parse_args(argv)
    if args.protocol == "herald" and not (args.token or args.secret):
        p.error("Herald needs --token or --secret")
    return args


def main() -> None:
    args = parse_args()
    raise_nofile()
    asyncio.run(main_churn(args) if args.churn else main_sockets(args))


if __name__ == "__main__":
    main()
    sys.exit(0)
