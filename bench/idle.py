"""Idle sockets: memory per held connection on ONE server process, Herald vs peers.

For each N (1,000, 5,000, 10,000) and run: a fresh single server (one Herald frontend, one
Flask-SocketIO instance, or one node instance), 20 warm-up sockets opened and closed, the
worker's VmRSS read, N sockets opened (Herald: after `welcome`; the peers: after the
Socket.IO connect) and held idle, the worker's VmRSS read again after a short settle.
Reported: (after - before) / N in KiB, and the worker's RSS with N sockets. A gunicorn
master holds no sockets and is left out; node is one process, its own worker.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Iterator

from bench.common import (
    exit_on_sigterm,
    print_table,
    raise_nofile,
    ratio,
    ratio_pairs,
    rss_bytes,
    spread,
)
from bench.fanout import finish, read_line, start_loadgens
from bench.sides import (
    HeraldCluster,
    NodeSide,
    PeerSide,
    Side,
    add_side_argument,
    chosen_sides,
    start_side,
)

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


def one_server(name: str) -> tuple[Side, int]:
    """A side with one server, no publisher, and the PID of the process holding sockets."""
    side = start_side(name, instances=1, publisher=False)
    if isinstance(side, HeraldCluster):
        return side, side.frontends[0].worker_pid()
    assert isinstance(side, PeerSide | NodeSide)
    return side, side.worker_pid()


Results = dict[str, dict[int, dict[str, list[float]]]]


def run(sizes: list[int], runs: int, names: list[str]) -> Results:
    res: Results = {}
    for i in range(runs):
        for n in sizes:
            for name in names:
                side, worker = one_server(name)
                try:
                    r = measure(side, worker, n)
                finally:
                    side.close()
                print(f"  run {i + 1}/{runs} {side.name:>6} N={n}: {r['KiB/socket']:.1f} "
                      f"KiB/socket, worker {r['worker RSS MiB']:.0f} MiB",
                      file=sys.stderr, flush=True)
                per_n = res.setdefault(side.name, defaultdict(lambda: defaultdict(list)))
                for m, v in r.items():
                    per_n[n][m].append(v)
    return res


def table(res: Results, runs: int) -> None:
    names = list(res)
    pairs = ratio_pairs(names)
    header = ["N", "metric", *names, *[f"{a}/{b}" for a, b in pairs]]
    rows = []
    for n in res[names[0]]:
        for m in ("KiB/socket", "worker RSS MiB", "not connected"):
            vals = {s: res[s][n][m] for s in names}
            rows.append([str(n), m,
                         *[spread(vals[s], 0 if m == "not connected" else 1) for s in names],
                         *[ratio(vals[a], vals[b]) for a, b in pairs]])
    print_table(f"idle sockets: RSS per socket, one worker (median (min-max) of {runs} runs)",
                header, rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sockets", type=int, nargs="+", default=[1000, 5000, 10000])
    p.add_argument("--runs", type=int, default=3)
    add_side_argument(p)
    p.add_argument("--smoke", action="store_true", help="300 sockets, one run")
    args = p.parse_args(argv)
    if args.smoke:
        args.sockets, args.runs = [300], 1
    exit_on_sigterm()
    raise_nofile()
    res = run(args.sockets, args.runs, chosen_sides(args.side, args.smoke))
    table(res, args.runs)


if __name__ == "__main__":
    main()
