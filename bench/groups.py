"""Group scenarios (issue 3): join/leave throughput through one frontend with 2,000 sockets
held, and the time of `members` on a group of 10,000 real sockets over two frontends."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import requests

from bench.common import ROOT
from bench.fanout import SOCKETS_PER_LOADGEN
from bench.sides import HeraldCluster


def churn(cluster: HeraldCluster, sockets: int, rounds: int) -> dict[str, float]:
    url = cluster.ws_urls[0]  # one frontend
    gens = []
    for start in range(0, sockets, SOCKETS_PER_LOADGEN):
        count = min(SOCKETS_PER_LOADGEN, sockets - start)
        gens.append(subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", "--urls", url, "--count", str(count),
             "--token", cluster.token(), "--churn", str(rounds), "--timeout", "300"],
            cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True))
    for g in gens:
        assert g.stdout is not None
        json.loads(g.stdout.readline())
    t0 = time.monotonic()
    for g in gens:
        assert g.stdin is not None
        g.stdin.write("go\n")
        g.stdin.flush()
    results = []
    for g in gens:
        assert g.stdout is not None
        results.append(json.loads(g.stdout.readline()))
        g.wait(timeout=60)
    wall = time.monotonic() - t0
    ops = sum(r["ops"] for r in results)
    return {"sockets": sockets, "ops": ops, "ops_s": ops / wall}


def members_of_big_group(cluster: HeraldCluster, size: int, calls: int) -> dict[str, float]:
    gens = []
    for start in range(0, size, SOCKETS_PER_LOADGEN):
        count = min(SOCKETS_PER_LOADGEN, size - start)
        # --join-half joins every second socket: give each loadgen twice the sockets' share
        gens.append(subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", "--urls", ",".join(cluster.ws_urls),
             "--count", str(count), "--token", cluster.token(), "--join-all", "big",
             "--timeout", "300"], cwd=ROOT, stdout=subprocess.PIPE, text=True))
    for g in gens:
        assert g.stdout is not None
        json.loads(g.stdout.readline())
    fe = cluster.frontends[0]
    headers = {"Authorization": "Bearer bench-key"}
    times = []
    n = 0
    for _ in range(calls):
        t0 = time.perf_counter()
        r = requests.get(f"http://127.0.0.1:{fe.port}/api/groups/default/big/members",
                         headers=headers, timeout=60)
        times.append(time.perf_counter() - t0)
        n = len(r.json())
    from service.core.envelope import Target

    cluster.publish(Target.all(), "end", None)
    for g in gens:
        g.wait(timeout=60)
    return {"members": n, "median_ms": statistics.median(times) * 1e3,
            "min_ms": min(times) * 1e3, "max_ms": max(times) * 1e3}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sockets", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--big", type=int, default=10000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    cluster = HeraldCluster()
    try:
        rates = [churn(cluster, args.sockets, args.rounds)["ops_s"] for _ in range(args.runs)]
        print(f"join+leave ops/s, one frontend, {args.sockets} sockets: median "
              f"{statistics.median(rates):.0f} (min {min(rates):.0f}, max {max(rates):.0f})")
        big = members_of_big_group(cluster, args.big, calls=5)
        print(f"members of a group of {big['members']:.0f}: median {big['median_ms']:.1f} ms "
              f"(min {big['min_ms']:.1f}, max {big['max_ms']:.1f})")
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
