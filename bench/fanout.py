"""Fan-out: N sockets over 2 instances, messages from a write-only emitter; Herald vs peer.

Each phase opens fresh sockets (half of them in a group), then publishes `--messages`
ticks to all at each rate (10/s, 50/s, flat out) and to the group flat out, then `end`.
Measured per phase: deliveries/s (received / time from the first publish to the last
`end`), latency p50/p95/p99/max (publish time to receive), lost deliveries, server CPU
µs per delivery (/proc of the gunicorn masters and workers) and client CPU seconds.
Herald publishes through its bus (``BusPublisher``); the peer through python-socketio's
write-only ``KombuManager`` (bench/peer/publisher.py). Both sides use the same load
generator (bench/loadgen.py) and take turns within each run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, Protocol

from bench.common import (
    ROOT,
    WAIT_S,
    Role,
    bench_env,
    child_setup,
    cpu_seconds,
    delete_exchange,
    exit_on_sigterm,
    free_port,
    percentile,
    print_table,
    ratio,
    spread,
)

SOCKETS_PER_LOADGEN = 1000
GROUP = "bench-half"


class Side(Protocol):
    name: str
    protocol: str

    @property
    def ws_urls(self) -> list[str]: ...
    def auth_args(self) -> list[str]: ...
    def server_pids(self) -> list[int]: ...
    def publish_ticks(self, messages: int, rate: float | None, group: str | None) -> None: ...
    def close(self) -> None: ...


class HeraldCluster:
    """Two Herald frontends on a fresh database and exchange."""

    name = "Herald"
    protocol = "herald"

    def __init__(self, frontends: int = 2, env: dict[str, str] | None = None) -> None:
        self.env = env or bench_env()
        self.frontends: list[Role] = []
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "db", "upgrade"], cwd=ROOT,
                       env=self.env, check=True, capture_output=True)
        try:
            self.frontends = [Role(["run", "frontend", "--port", str(p)], self.env, port=p)
                              for p in [free_port() for _ in range(frontends)]]
            for fe in self.frontends:
                fe.wait_ready()
        except BaseException:
            self.close()
            raise
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("HERALD_")})
        from service.bus import BusPublisher

        self.bus = BusPublisher(self.env["HERALD_BROKER_URL"], self.env["HERALD_EXCHANGE"])

    @property
    def ws_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{fe.port}/ws" for fe in self.frontends]

    def token(self) -> str:
        """One token for every socket (user `bench`)."""
        from service.core.auth import issue_token

        return issue_token(self.env["HERALD_SECRET_KEY"], "bench", join=["*"], ttl_s=3600)

    def auth_args(self) -> list[str]:
        """The load generator mints a token per socket, each for its own user."""
        return ["--secret", self.env["HERALD_SECRET_KEY"]]

    def server_pids(self) -> list[int]:
        return [pid for fe in self.frontends for pid in fe.pids()]

    def publish(self, target: Any, event: str, data: Any) -> None:
        from service.core.envelope import encode, make_envelope, raw_json

        self.bus.publish(encode(make_envelope("bench", target, event, raw_json(data))))

    def publish_ticks(self, messages: int, rate: float | None, group: str | None) -> None:
        from service.core.envelope import Target

        target = Target.group(group) if group else Target.all()
        t0 = time.monotonic()
        for i in range(messages):
            self.publish(target, "tick", {"i": i, "pad": "x" * 64})
            if rate:
                time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
        self.publish(Target.all(), "end", None)

    def close(self) -> None:
        if hasattr(self, "bus"):
            self.bus.close()
        for fe in self.frontends:
            fe.stop()
        from service.store.db import drop_database

        drop_database(self.env["HERALD_DATABASE_URL"])
        delete_exchange(self.env["HERALD_EXCHANGE"], self.env["HERALD_TASK_QUEUE"])


class PeerSide:
    """The Flask-SocketIO peer (bench/peer/) behind the same interface."""

    name = "peer"
    protocol = "socketio"

    def __init__(self, instances: int = 2, publisher: bool = True) -> None:
        from bench.peer.cluster import PeerCluster

        self.cluster = PeerCluster(instances, publisher)

    @property
    def ws_urls(self) -> list[str]:
        return self.cluster.ws_urls

    def auth_args(self) -> list[str]:
        return []

    def server_pids(self) -> list[int]:
        return self.cluster.server_pids()

    def publish_ticks(self, messages: int, rate: float | None, group: str | None) -> None:
        self.cluster.publish(messages, rate, group)

    def close(self) -> None:
        self.cluster.close()



@contextlib.contextmanager
def started_sides(which: str, publisher: bool = True) -> Iterator[list[Side]]:
    """The sides ``--side`` names (both, herald, peer), started in that order; whichever
    were started are closed afterwards, whatever happens."""
    sides: list[Side] = []
    try:
        if which in ("both", "herald"):
            sides.append(HeraldCluster())
        if which in ("both", "peer"):
            sides.append(PeerSide(publisher=publisher))
        yield sides
    finally:
        for side in sides:
            side.close()

def start_loadgens(side: Side, n: int, extra: list[str], per: int = SOCKETS_PER_LOADGEN,
                   stdin: bool = False) -> list[subprocess.Popen[str]]:
    """Load generators for `n` sockets, `per` each; returns once each printed its first line."""
    gens = []
    for start in range(0, n, per):
        gens.append(subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", "--protocol", side.protocol,
             "--urls", ",".join(side.ws_urls), "--count", str(min(per, n - start)),
             "--timeout", str(WAIT_S), *side.auth_args(), *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.PIPE if stdin else None,
            text=True, preexec_fn=child_setup))
    return gens


def read_line(gen: subprocess.Popen[str]) -> dict[str, Any]:
    assert gen.stdout is not None
    line = gen.stdout.readline()
    if not line:
        gen.wait(timeout=WAIT_S)
        raise RuntimeError(f"load generator exited ({gen.returncode}) without a report")
    return dict(json.loads(line))


def tell(gens: list[subprocess.Popen[str]], line: str = "go") -> None:
    for g in gens:
        assert g.stdin is not None
        g.stdin.write(line + "\n")
        g.stdin.flush()


def finish(gens: list[subprocess.Popen[str]]) -> None:
    for g in gens:
        if g.stdin is not None:
            g.stdin.close()
        try:
            g.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            g.kill()
            g.wait()


def run_phase(side: Side, n: int, messages: int, rate: float | None,
              group: bool) -> dict[str, float]:
    """One phase: fresh sockets (every second one in GROUP), `messages` ticks at `rate`/s."""
    gens = start_loadgens(side, n, ["--join-half", GROUP])
    try:
        opened = [read_line(g) for g in gens]
        connected = sum(int(o["connected"]) for o in opened)
        pids = side.server_pids()
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        side.publish_ticks(messages, rate, GROUP if group else None)
        results = [read_line(g) for g in gens]
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(pids) - cpu0
    finally:
        finish(gens)
    lat = [x for r in results for x in r["lat"]]
    received = sum(int(r["received"]) for r in results)
    # each load generator puts its sockets 0, 2, 4, ... in the group
    shares = [min(SOCKETS_PER_LOADGEN, n - start) for start in range(0, n, SOCKETS_PER_LOADGEN)]
    expected = (sum((c + 1) // 2 for c in shares) if group else n) * messages
    return {
        "deliveries/s": received / elapsed,
        "p50 ms": percentile(lat, 50) * 1e3, "p95 ms": percentile(lat, 95) * 1e3,
        "p99 ms": percentile(lat, 99) * 1e3,
        "max ms": max(lat) * 1e3 if lat else float("nan"),
        "lost": float(expected - received),
        "not connected": float(n - connected),
        "server µs/delivery": cpu / max(1, received) * 1e6,
        "client CPU s": sum(float(r["cpu_s"]) for r in results),
    }


METRICS = ["deliveries/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "lost", "not connected",
           "server µs/delivery", "client CPU s"]
PhaseKey = tuple[int, str, str]


def phases(rates: list[str]) -> list[tuple[float | None, bool]]:
    """Every rate to all, then the group flat out."""
    out: list[tuple[float | None, bool]] = [
        (None if r == "max" else float(r), False) for r in rates]
    return [*out, (None, True)]


def run(sides: list[Side], sockets: list[int], messages: int, rates: list[str],
        runs: int) -> dict[str, dict[PhaseKey, dict[str, list[float]]]]:
    """All phases for every side, `runs` times, sides taking turns within each run."""
    res: dict[str, dict[PhaseKey, dict[str, list[float]]]] = {
        s.name: defaultdict(lambda: defaultdict(list)) for s in sides}
    for i in range(runs):
        for n in sockets:
            for rate, group in phases(rates):
                key = (n, "max" if rate is None else f"{rate:g}", "half" if group else "all")
                for side in sides:
                    r = run_phase(side, n, messages, rate, group)
                    print(f"  run {i + 1}/{runs} {side.name:>6} N={key[0]} rate={key[1]} "
                          f"{key[2]}: {r['deliveries/s']:.0f}/s p50 {r['p50 ms']:.1f} ms "
                          f"lost {r['lost']:.0f} {r['server µs/delivery']:.1f} µs/delivery",
                          file=sys.stderr, flush=True)
                    for m, v in r.items():
                        res[side.name][key][m].append(v)
    return res


def table(res: dict[str, dict[PhaseKey, dict[str, list[float]]]], runs: int) -> None:
    names = list(res)
    first = res[names[0]]
    header = ["N", "rate/s", "to", "metric", *names]
    if len(names) == 2:
        header.append(f"{names[0]}/{names[1]}")
    rows = []
    for key in first:
        for m in METRICS:
            digits = 0 if m in ("deliveries/s", "lost", "not connected") else 1
            if m == "client CPU s":
                digits = 2
            vals = [res[s][key][m] for s in names]
            row = [str(key[0]), key[1], key[2], m, *[spread(v, digits) for v in vals]]
            if len(names) == 2:
                row.append(ratio(vals[0], vals[1]))
            rows.append(row)
    print_table(f"fan-out (median (min-max) of {runs} runs)", header, rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sockets", type=int, nargs="+", default=[1000, 2000])
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--rates", default="10,50,max")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--side", choices=("both", "herald", "peer"), default="both")
    p.add_argument("--smoke", action="store_true", help="200 sockets, 20 messages, one run")
    args = p.parse_args(argv)
    if args.smoke:
        args.sockets, args.messages, args.rates, args.runs = [200], 20, "50,max", 1
    exit_on_sigterm()
    with started_sides(args.side) as sides:
        res = run(sides, args.sockets, args.messages, args.rates.split(","), args.runs)
    table(res, args.runs)


if __name__ == "__main__":
    main()
