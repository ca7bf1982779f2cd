"""Connect storm: sockets per second through connect + join on 2 instances, Herald vs peers.

Herald: WebSocket open, `hello` (JWT verify, per-user connection count, the connection row
written and awaited), `welcome`, `join` (membership row written and awaited, presence
published), `ack`. Afterwards the group's member rows are counted through Herald's API
(``GET /api/groups/default/<group>/members``): they must all exist. The peers (Flask-SocketIO,
and socket.io on Node with connection state recovery on): WebSocket open, Engine.IO open
packet, Socket.IO connect whose handler joins the room (``?group=``), its ``40`` reply.
Rate = sockets / time from "go" to the last socket through, with ``--concurrency``
handshakes in flight at once (split over the load generators).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from typing import Any

import requests

from bench.common import (
    cpu_seconds,
    exit_on_sigterm,
    print_table,
    ratio,
    ratio_pairs,
    retry,
    spread,
)
from bench.fanout import finish, read_line, start_loadgens, tell
from bench.sides import HeraldCluster, Side, add_side_argument, chosen_sides, started_sides

LOADGENS = 2
ROWS_WAIT_S = 60.0


def member_rows(side: Side, group: str) -> int | None:
    """Herald's registry: members of `group` (None for a peer, which has no registry)."""
    if not isinstance(side, HeraldCluster):
        return None
    url = (f"http://127.0.0.1:{side.frontends[0].port}/api/groups/default/{group}/members")
    r = requests.get(url, headers={"Authorization": "Bearer bench-key"}, timeout=30)
    r.raise_for_status()
    return len(r.json())


def storm(side: Side, n: int, concurrency: int, group: str) -> dict[str, float]:
    per = -(-n // LOADGENS)
    gens = start_loadgens(side, n, ["--storm", "--join-all", group, "--concurrency",
                                    str(max(1, concurrency // LOADGENS))], per=per, stdin=True)
    rows: int | None = None
    try:
        for g in gens:
            read_line(g)  # each says it is waiting
        pids = side.server_pids()
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        tell(gens)
        done: list[dict[str, Any]] = [read_line(g) for g in gens]
        wall = time.monotonic() - t0
        cpu = cpu_seconds(pids) - cpu0
        connected = sum(int(d["connected"]) for d in done)
        if isinstance(side, HeraldCluster):
            retry(lambda: member_rows(side, group) == connected, ROWS_WAIT_S)
            rows = member_rows(side, group)
    finally:
        finish(gens)
    if isinstance(side, HeraldCluster):  # the next run starts from an empty registry
        retry(lambda: member_rows(side, group) == 0, ROWS_WAIT_S)
    return {"sockets/s": connected / wall, "failed": float(n - connected),
            "member rows": float("nan") if rows is None else float(rows),
            "server CPU ms/socket": cpu / max(1, connected) * 1e3,
            "client CPU s": sum(float(d["cpu_s"]) for d in done)}


Results = dict[str, dict[str, list[float]]]


def run(sides: list[Side], n: int, concurrency: int, runs: int) -> Results:
    res: Results = {s.name: defaultdict(list) for s in sides}
    for i in range(runs):
        for side in sides:
            r = storm(side, n, concurrency, f"storm-{i}")
            print(f"  run {i + 1}/{runs} {side.name:>6}: {r['sockets/s']:.0f} sockets/s, "
                  f"{r['server CPU ms/socket']:.2f} server ms/socket, rows {r['member rows']:.0f}",
                  file=sys.stderr, flush=True)
            for m, v in r.items():
                res[side.name][m].append(v)
    return res


def table(res: Results, n: int, concurrency: int, runs: int) -> None:
    names = list(res)
    pairs = ratio_pairs(names)
    header = ["metric", *names, *[f"{a}/{b}" for a, b in pairs]]
    rows = []
    for m, digits in (("sockets/s", 0), ("failed", 0), ("member rows", 0),
                      ("server CPU ms/socket", 2), ("client CPU s", 2)):
        vals = {s: res[s][m] for s in names}
        rows.append([m, *[spread(vals[s], digits) for s in names],
                     *["-" if m in ("failed", "member rows") else ratio(vals[a], vals[b])
                       for a, b in pairs]])
    print_table(f"connect storm: {n} sockets, concurrency {concurrency}, 2 instances "
                f"(median (min-max) of {runs} runs)", header, rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sockets", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    add_side_argument(p)
    p.add_argument("--smoke", action="store_true", help="300 sockets, one run")
    args = p.parse_args(argv)
    if args.smoke:
        args.sockets, args.runs = 300, 1
    exit_on_sigterm()
    with started_sides(chosen_sides(args.side, args.smoke), publisher=False) as sides:
        res = run(sides, args.sockets, args.concurrency, args.runs)
    table(res, args.sockets, args.concurrency, args.runs)


if __name__ == "__main__":
    main()
