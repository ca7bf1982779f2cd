"""Fan-out: N sockets over 2 instances, messages from a write-only emitter; Herald vs peers.

Each phase opens fresh sockets (half of them in a group), then publishes `--messages`
ticks to all at each rate (10/s, 50/s, flat out) and to the group flat out, then `end`.
Measured per phase: deliveries/s (received / time from the first publish to the last
`end`), latency p50/p95/p99/max (publish time to receive), lost deliveries, server CPU
µs per delivery, in all and split into user and system time (/proc of the server
processes: gunicorn masters and workers, or node), that CPU over the floor, and client CPU
seconds. The floor (bench/floor.py) is one ``send()`` of Herald's frame per socket on
loopback, measured with the same N in each run. Herald publishes through its bus
(``BusPublisher``); the Flask-SocketIO peer through python-socketio's write-only
``KombuManager`` (bench/peer/publisher.py); the Node peer through a client-less socket.io
server on the same Redis Streams adapter (bench/peer_node/publisher.js). Every side uses
the same load generator (bench/loadgen.py); the floor and the sides take turns within each
run. Herald is also measured with each ``--write-delays`` value of HERALD_WRITE_DELAY_MS
(columns ``Herald wd<ms>``): CPU against latency as the delay grows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

from bench.common import (
    ROOT,
    WAIT_S,
    child_setup,
    cpu_split,
    exit_on_sigterm,
    percentile,
    print_table,
    ratio,
    ratio_pairs,
    spread,
)
from bench.floor import run_measure
from bench.sides import Side, add_side_argument, chosen_sides, started_sides

SOCKETS_PER_LOADGEN = 1000
#: HERALD_WRITE_DELAY_MS values measured beside plain Herald in a full run.
WRITE_DELAYS_MS = [20, 100]
GROUP = "bench-half"


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
              group: bool, per: int = SOCKETS_PER_LOADGEN) -> dict[str, float]:
    """One phase: fresh sockets (every second one in GROUP), `messages` ticks at `rate`/s,
    read by load generators of `per` sockets each."""
    gens = start_loadgens(side, n, ["--join-half", GROUP], per=per)
    try:
        opened = [read_line(g) for g in gens]
        connected = sum(int(o["connected"]) for o in opened)
        pids = side.server_pids()
        (user0, sys0), t0 = cpu_split(pids), time.monotonic()
        side.publish_ticks(messages, rate, GROUP if group else None)
        results = [read_line(g) for g in gens]
        elapsed = time.monotonic() - t0
        user1, sys1 = cpu_split(pids)
    finally:
        finish(gens)
    lat = [x for r in results for x in r["lat"]]
    received = sum(int(r["received"]) for r in results)
    # each load generator puts its sockets 0, 2, 4, ... in the group
    shares = [min(per, n - start) for start in range(0, n, per)]
    expected = (sum((c + 1) // 2 for c in shares) if group else n) * messages
    per = 1e6 / max(1, received)
    return {
        "deliveries/s": received / elapsed,
        "p50 ms": percentile(lat, 50) * 1e3, "p95 ms": percentile(lat, 95) * 1e3,
        "p99 ms": percentile(lat, 99) * 1e3,
        "max ms": max(lat) * 1e3 if lat else float("nan"),
        "lost": float(expected - received),
        "not connected": float(n - connected),
        "server µs/delivery": (user1 - user0 + sys1 - sys0) * per,
        "server user µs/delivery": (user1 - user0) * per,
        "server sys µs/delivery": (sys1 - sys0) * per,
        "client CPU s": sum(float(r["cpu_s"]) for r in results),
    }


METRICS = ["deliveries/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "lost", "not connected",
           "server µs/delivery", "server user µs/delivery", "server sys µs/delivery",
           "server CPU ÷ floor", "client CPU s"]
FLOOR_METRICS = ["user µs/send", "sys µs/send", "µs/send", "short writes", "not received"]
#: Rounds per second of the floor's sends (the paced phases' middle rate).
FLOOR_RATE = 50.0
PhaseKey = tuple[int, str, str]
Results = dict[str, dict[PhaseKey, dict[str, list[float]]]]
FloorResults = dict[int, dict[str, list[float]]]


def phases(rates: list[str]) -> list[tuple[float | None, bool]]:
    """Every rate to all, then the group flat out."""
    out: list[tuple[float | None, bool]] = [
        (None if r == "max" else float(r), False) for r in rates]
    return [*out, (None, True)]


def run(sides: list[Side], sockets: list[int], messages: int, rates: list[str],
        runs: int, floor_rounds: int, per: int = SOCKETS_PER_LOADGEN
        ) -> tuple[Results, FloorResults]:
    """The floor and all phases for every side, `runs` times, taking turns within each run."""
    res: Results = {s.name: defaultdict(lambda: defaultdict(list)) for s in sides}
    floors: FloorResults = defaultdict(lambda: defaultdict(list))
    for i in range(runs):
        for n in sockets:
            floor = run_measure(n, floor_rounds, FLOOR_RATE) if floor_rounds else {}
            for m in FLOOR_METRICS:
                floors[n][m].append(float(floor.get(m, float("nan"))))
            floors[n]["frame bytes"].append(float(floor.get("frame bytes", float("nan"))))
            if floor:
                print(f"  run {i + 1}/{runs}  floor N={n}: {floor['µs/send']:.2f} µs/send "
                      f"({floor['sys µs/send']:.2f} sys)", file=sys.stderr, flush=True)
            for rate, group in phases(rates):
                key = (n, "max" if rate is None else f"{rate:g}", "half" if group else "all")
                for side in sides:
                    r = run_phase(side, n, messages, rate, group, per)
                    r["server CPU ÷ floor"] = (r["server µs/delivery"] / floor["µs/send"]
                                               if floor else float("nan"))
                    print(f"  run {i + 1}/{runs} {side.name:>6} N={key[0]} rate={key[1]} "
                          f"{key[2]}: {r['deliveries/s']:.0f}/s p50 {r['p50 ms']:.1f} ms "
                          f"lost {r['lost']:.0f} {r['server µs/delivery']:.1f} µs/delivery",
                          file=sys.stderr, flush=True)
                    for m, v in r.items():
                        res[side.name][key][m].append(v)
    return res, floors


def table(res: Results, runs: int) -> None:
    names = list(res)
    pairs = ratio_pairs(names)
    header = ["N", "rate/s", "to", "metric", *names, *[f"{a}/{b}" for a, b in pairs]]
    rows = []
    for key in res[names[0]]:
        for m in METRICS:
            digits = 0 if m in ("deliveries/s", "lost", "not connected") else 1
            if m in ("client CPU s", "server CPU ÷ floor"):
                digits = 2
            vals = {s: res[s][key][m] for s in names}
            rows.append([str(key[0]), key[1], key[2], m,
                         *[spread(vals[s], digits) for s in names],
                         *[ratio(vals[a], vals[b]) for a, b in pairs]])
    print_table(f"fan-out (median (min-max) of {runs} runs)", header, rows)


def floor_table(floors: FloorResults, runs: int) -> None:
    """The floor per N; Herald's (and each peer's) CPU over it is in the fan-out table."""
    size = next((v for f in floors.values() for v in f["frame bytes"] if v == v), float("nan"))
    rows = [[str(n), *[spread(f[m], 0 if m in ("short writes", "not received") else 2)
                       for m in FLOOR_METRICS]] for n, f in floors.items()]
    print_table(f"floor: one send() of Herald's {size:.0f}-byte frame to each of N loopback "
                f"TCP sockets, {FLOOR_RATE:g} rounds/s (median (min-max) of {runs} runs)",
                ["N", *FLOOR_METRICS], rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sockets", type=int, nargs="+", default=[1000, 2000])
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--rates", default="10,50,max")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--floor-rounds", type=int, default=None,
                   help="sends per socket of the floor (default: --messages; 0: no floor)")
    add_side_argument(p)
    p.add_argument("--write-delays", type=int, nargs="*", default=None, metavar="MS",
                   help="also Herald with HERALD_WRITE_DELAY_MS=MS, one column each (the "
                        f"write delay's CPU/latency curve; default {WRITE_DELAYS_MS}, none "
                        "with --smoke or when --side leaves Herald out)")
    p.add_argument("--per-loadgen", type=int, default=SOCKETS_PER_LOADGEN, metavar="N",
                   help="sockets per load generator process (fewer: more processes read in "
                        "parallel, to see how much of the latency is the client's)")
    p.add_argument("--smoke", action="store_true", help="200 sockets, 20 messages, one run")
    args = p.parse_args(argv)
    if args.smoke:
        args.sockets, args.messages, args.rates, args.runs = [200], 20, "50,max", 1
    names = chosen_sides(args.side, args.smoke)
    if args.write_delays is None:
        args.write_delays = [] if args.smoke or "herald" not in names else WRITE_DELAYS_MS
    floor_rounds = args.messages if args.floor_rounds is None else args.floor_rounds
    exit_on_sigterm()
    with started_sides(names, write_delays=args.write_delays) as sides:
        res, floors = run(sides, args.sockets, args.messages, args.rates.split(","),
                          args.runs, floor_rounds, args.per_loadgen)
    table(res, args.runs)
    if floor_rounds:
        floor_table(floors, args.runs)


if __name__ == "__main__":
    main()
