"""Idle sockets: memory per held connection on ONE frontend process, Herald vs peer.

For each N (1,000, 5,000, 10,000) and run: a fresh single server (one Herald frontend, or
one peer instance), 20 warm-up sockets opened and closed, the worker's VmRSS read, N
sockets opened (Herald: after `welcome`; peer: after the Socket.IO connect) and held idle,
the worker's VmRSS read again after a short settle. Reported: (after - before) / N in KiB,
and the worker's RSS with N sockets. The gunicorn master holds no sockets and is left out.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from bench.common import (
    exit_on_sigterm,
    print_table,
    raise_nofile,
    ratio,
    rss_bytes,
    spread,
)
from bench.fanout import HeraldCluster, PeerSide, Side, finish, read_line, start_loadgens

SOCKETS_PER_LOADGEN = 2500
WARMUP_SOCKETS = 20
SETTLE_S = 2.0


@contextlib.contextmanager
def held(side: Side, n: int) -> Iterator[int]:
    """`n` idle sockets open on `side` (yields how many connected) until the block ends."""
    gens = start_loadgens(side, n, ["--idle"], per=SOCKETS_PER_LOADGEN, stdin=True)
    try:
        yield sum(int(read_line(g)["connected"]) for g in gens)
    finally:
        finish(gens)  # closing their stdin tells them to go


def measure(side: Side, worker: int, n: int) -> dict[str, float]:
    with held(side, WARMUP_SOCKETS):
        pass
    time.sleep(1.0)
    before = rss_bytes(worker)
    with held(side, n) as connected:
        time.sleep(SETTLE_S)
        after = rss_bytes(worker)
    return {"KiB/socket": (after - before) / 1024 / n, "worker RSS MiB": after / 2**20,
            "not connected": float(n - connected)}


def herald_one() -> tuple[Side, int]:
    cluster = HeraldCluster(frontends=1)
    return cluster, cluster.frontends[0].worker_pid()


def peer_one() -> tuple[Side, int]:
    side = PeerSide(instances=1, publisher=False)
    return side, side.cluster.servers[0].worker_pid()


Results = dict[str, dict[int, dict[str, list[float]]]]


def run(sizes: list[int], runs: int,
        starters: dict[str, Callable[[], tuple[Side, int]]]) -> Results:
    res: Results = {
        name: defaultdict(lambda: defaultdict(list)) for name in starters}
    for i in range(runs):
        for n in sizes:
            for name, start in starters.items():
                side, worker = start()
                try:
                    r = measure(side, worker, n)
                finally:
                    side.close()
                print(f"  run {i + 1}/{runs} {name:>6} N={n}: {r['KiB/socket']:.1f} KiB/socket, "
                      f"worker {r['worker RSS MiB']:.0f} MiB", file=sys.stderr, flush=True)
                for m, v in r.items():
                    res[name][n][m].append(v)
    return res


def table(res: Results, runs: int) -> None:
    names = list(res)
    header = ["N", "metric", *names] + ([f"{names[0]}/{names[1]}"] if len(names) == 2 else [])
    rows = []
    for n in res[names[0]]:
        for m in ("KiB/socket", "worker RSS MiB", "not connected"):
            vals = [res[s][n][m] for s in names]
            row = [str(n), m, *[spread(v, 0 if m == "not connected" else 1) for v in vals]]
            if len(names) == 2:
                row.append(ratio(vals[0], vals[1]))
            rows.append(row)
    print_table(f"idle sockets: RSS per socket, one worker (median (min-max) of {runs} runs)",
                header, rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sockets", type=int, nargs="+", default=[1000, 5000, 10000])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--side", choices=("both", "herald", "peer"), default="both")
    p.add_argument("--smoke", action="store_true", help="300 sockets, one run")
    args = p.parse_args(argv)
    if args.smoke:
        args.sockets, args.runs = [300], 1
    exit_on_sigterm()
    raise_nofile()
    starters: dict[str, Callable[[], tuple[Side, int]]] = {}
    if args.side in ("both", "herald"):
        starters["Herald"] = herald_one
    if args.side in ("both", "peer"):
        starters["peer"] = peer_one
    res = run(args.sockets, args.runs, starters)
    table(res, args.runs)


if __name__ == "__main__":
    main()
