"""Fan-out scenario for Herald: N sockets over 2 frontends, messages from a write-only emitter.

Prints one table row per phase: deliveries/s, latency p50/p95/p99/max (publish time to
receive), lost deliveries, frontend CPU µs per delivery (from /proc) and client CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT, Role, bench_env, cpu_seconds, free_port, percentile

SOCKETS_PER_LOADGEN = 1000


class HeraldCluster:
    """Two frontends on a fresh database and exchange."""

    def __init__(self) -> None:
        self.env = bench_env()
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "db", "upgrade"], cwd=ROOT,
                       env=self.env, check=True, capture_output=True)
        self.frontends = [Role(["run", "frontend", "--port", str(p)], self.env, port=p)
                          for p in (free_port(), free_port())]
        for fe in self.frontends:
            fe.wait_ready()
        import os

        os.environ.update({k: v for k, v in self.env.items() if k.startswith("HERALD_")})
        from service.bus import BusPublisher

        self.bus = BusPublisher(self.env.get("HERALD_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
                                self.env["HERALD_EXCHANGE"])

    @property
    def ws_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{fe.port}/ws" for fe in self.frontends]

    def token(self) -> str:
        from service.auth import issue_token

        return issue_token(self.env["HERALD_SECRET_KEY"], "bench", join=["*"], ttl_s=3600)

    def server_pids(self) -> list[int]:
        return [pid for fe in self.frontends for pid in fe.pids()]

    def publish(self, target: Any, event: str, data: Any) -> None:
        from service.envelope import encode, make_envelope, raw_json

        self.bus.publish(encode(make_envelope("bench", target, event, raw_json(data))))

    def close(self) -> None:
        self.bus.close()
        for fe in self.frontends:
            fe.stop()
        from service.db import drop_database

        drop_database(self.env["HERALD_DATABASE_URL"])


def run_phase(cluster: HeraldCluster, n: int, messages: int, rate: float | None,
              group: bool) -> dict[str, Any]:
    """One phase: fresh sockets, `messages` publishes at `rate`/s (None: flat out)."""
    from service.envelope import Target

    gens = []
    for start in range(0, n, SOCKETS_PER_LOADGEN):
        count = min(SOCKETS_PER_LOADGEN, n - start)
        gens.append(subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", "--urls", ",".join(cluster.ws_urls),
             "--count", str(count), "--token", cluster.token(), "--timeout", "120",
             *(["--join-half", "bench-half"] if group else [])],
            cwd=ROOT, stdout=subprocess.PIPE, text=True))
    for g in gens:
        assert g.stdout is not None
        json.loads(g.stdout.readline())
    target = Target.group("bench-half") if group else Target.all()
    expected_per_msg = (n + 1) // 2 if group else n
    pids = cluster.server_pids()
    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    for i in range(messages):
        cluster.publish(target, "tick", {"i": i, "pad": "x" * 64})
        if rate:
            time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
    cluster.publish(Target.all(), "end", None)
    results = []
    for g in gens:
        assert g.stdout is not None
        results.append(json.loads(g.stdout.readline()))
        g.wait(timeout=30)
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(pids) - cpu0
    lat = [x for r in results for x in r["lat"]]
    received = sum(r["received"] for r in results)
    expected = expected_per_msg * messages
    return {
        "n": n, "rate": rate or "max", "target": "half" if group else "all",
        "deliveries_s": received / elapsed,
        "p50_ms": percentile(lat, 50) * 1e3, "p95_ms": percentile(lat, 95) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3, "max_ms": max(lat) * 1e3 if lat else float("nan"),
        "lost": expected - received,
        "server_us_per_delivery": cpu / max(1, received) * 1e6,
        "client_cpu_s": sum(r["cpu_s"] for r in results),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sockets", type=int, nargs="+", default=[1000])
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--rates", default="10,50,max")
    args = p.parse_args()
    cluster = HeraldCluster()
    try:
        print(f"{'N':>6} {'rate':>5} {'target':>6} {'deliv/s':>9} {'p50ms':>7} {'p95ms':>7} "
              f"{'p99ms':>7} {'maxms':>7} {'lost':>5} {'µs/deliv':>9} {'client s':>8}")
        for n in args.sockets:
            for rate_s in args.rates.split(","):
                rate = None if rate_s == "max" else float(rate_s)
                for group in (False, True) if rate is None else (False,):
                    r = run_phase(cluster, n, args.messages, rate, group)
                    print(f"{r['n']:>6} {r['rate']!s:>5} {r['target']:>6} "
                          f"{r['deliveries_s']:>9.0f} "
                          f"{r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} {r['p99_ms']:>7.1f} "
                          f"{r['max_ms']:>7.1f} {r['lost']:>5} {r['server_us_per_delivery']:>9.1f} "
                          f"{r['client_cpu_s']:>8.2f}", flush=True)
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
