"""Load generator process: holds sockets, counts deliveries, reports latency and its own CPU.

Run by the scenarios, one process per share of sockets (picows on uvloop; the socket layer
is bench/wsclient.py), so the client side is never the bottleneck on its own core share.
Two protocols over the same harness: Herald's (`hello`/`welcome`, `join`/`ack`, `event`
frames) and Socket.IO v5 over Engine.IO v4 on a raw websocket (the peer): open packet
``0{...}``, ``40`` → ``40{...}``, events ``42["tick",{...}]``, pings ``2`` answered with ``3``.

Modes (one JSON line out per step, commands in on stdin; every wait bounded by --timeout):

* fan-out (default): connect, print ``ready``, count ticks until every socket got ``end``,
  print received/latencies/CPU.
* ``--idle``: connect, print ``ready``, hold the sockets until a line on stdin.
* ``--storm``: print ``waiting``, connect all on a line on stdin (``--concurrency`` at a
  time), print how many connected, hold them until the next line (with ``--then-count``:
  count deliveries until ``end`` instead, as fan-out mode does).
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
from typing import Any
from urllib.parse import quote

import msgspec
import uvloop

from bench.common import raise_nofile
from bench.wsclient import Socket, Stats, open_socket

CONNECT_CONCURRENCY = 50
_encode = msgspec.json.encode


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the two protocols ------------------------------------------------------------------------

async def open_herald(url: str, token: str, join: str | None,
                      source: str | None = None) -> Socket:
    ws = await open_socket(url, source)
    ws.send(_encode({"op": "hello", "token": token}))
    reply = json.loads(await ws.recv())
    if reply.get("op") != "welcome":
        await ws.close()
        raise RuntimeError(f"no welcome: {reply}")
    if join:
        ws.send(_encode({"op": "join", "group": join, "ref": 1}))
        while (reply := json.loads(await ws.recv())).get("ref") != 1:
            pass
        if reply.get("op") != "ack":
            await ws.close()
            raise RuntimeError(f"join refused: {reply}")
    return ws


async def open_sio(url: str, join: str | None, source: str | None = None) -> Socket:
    """Engine.IO open, then the Socket.IO connect to the default namespace (the peer's
    connect handler joins the room named by ``group`` before it answers). The socket
    answers Engine.IO pings itself."""
    ws = await open_socket(url + (f"&group={quote(join)}" if join else ""), source)
    opened = await ws.recv()
    if not opened.startswith(b"0{"):
        await ws.close()
        raise RuntimeError(f"no engine.io open packet: {opened!r}")
    ws.send(b"40")
    reply = await ws.recv()
    if reply.startswith(b"40"):
        return ws
    await ws.close()
    raise RuntimeError(f"socket.io connect refused: {reply!r}")


# --- one socket -------------------------------------------------------------------------------

class Client:
    """Opens one socket in the chosen protocol and hands it to the counting path."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.urls = args.urls.split(",")
        self.sio = args.protocol == "socketio"
        self.tokens: list[str] = []
        if not self.sio:
            self.tokens = mint_tokens(args)
        self.sockets: list[Socket] = []

    def join_of(self, i: int) -> str | None:
        if self.args.join_all:
            return str(self.args.join_all)
        if self.args.join_half and i % 2 == 0:
            return str(self.args.join_half)
        return None

    async def open(self, i: int) -> Socket:
        url = self.urls[i % len(self.urls)]
        source = self.args.source or None
        if self.sio:
            return await open_sio(url, self.join_of(i), source)
        return await open_herald(url, self.tokens[i], self.join_of(i), source)

    async def run(self, i: int, stats: Stats, sem: asyncio.Semaphore) -> None:
        try:
            async with sem:
                ws = await self.open(i)
        except Exception as exc:  # noqa: BLE001 - a failed socket is counted, not fatal
            stats.opened(False)
            if stats.failed <= 3:
                print(f"loadgen: socket {i} failed: {exc!r}", file=sys.stderr)
            return
        ws.count(stats, self.sio)
        self.sockets.append(ws)
        stats.opened(True)

    async def close(self) -> None:
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)


def mint_tokens(args: argparse.Namespace) -> list[str]:
    """One token per socket, each for its own user (as browsers would), or the shared one."""
    if not args.secret:
        return [args.token] * args.count
    from service.core.auth import issue_token

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
    if (args.storm and not args.then_count) or args.idle:
        emit({"ready": True, **opened})
        await stdin_line(args.timeout)
    else:
        emit({"ready": True, **opened})
        cpu0 = cpu_now()
        with contextlib.suppress(TimeoutError):  # the parent publishes `end` when it is done
            await asyncio.wait_for(stats.done.wait(), args.timeout)
        cpu = cpu_now() - cpu0
        emit({"received": stats.received, "ended": stats.ended, "connected": stats.connected,
              "lat": [round(x, 6) for x in stats.lat], "cpu_s": cpu})
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()


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
            ws.send(_encode({"op": op, "group": group, "ref": i}))
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
    p.add_argument("--source", default="", help="local address to connect from (127.0.0.x)")
    p.add_argument("--then-count", action="store_true",
                   help="--storm: then count deliveries until `end` instead of holding")
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
    uvloop.run(main_churn(args) if args.churn else main_sockets(args))


if __name__ == "__main__":
    main()
    sys.exit(0)
