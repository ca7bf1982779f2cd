"""Scale-out: what a message costs the cluster as frontends are added, fanout vs targeted.

    .venv/bin/python -m bench.scale                      # F = 1, 2, 4, 8, 16; 3 runs
    .venv/bin/python -m bench.scale --frontends 1,4 --runs 1 --messages 300

For each routing (``HERALD_ROUTING=fanout``, the first round's design, and ``targeted``)
and each F, F frontends run as processes with a few sockets each: on frontend 1 a member
of group ``room`` and a socket of user ``alice``; on every frontend one socket of its own
user. A write-only publisher in this process (``service.pg.Herald``, as a backend or a
worker would be) sends, one at a time at a fixed rate, transient messages of four kinds:

- group:  to ``room`` (its one member is on frontend 1)
- user:   to ``alice`` (on frontend 1)
- all:    to everyone
- mix:    70% user messages to the users of random frontends, 20% group, 10% all

and the table shows, per message: the CPU of the recipient frontend (frontend 1) and of
the busiest frontend without a recipient, the whole cluster's frontend CPU, the bus
messages the broker delivered to frontends (each frontend counts what its queue handed
it, ``herald_bus_messages_total``; the broker's own per-queue counters lag by seconds),
and the delivery latency (publish to the client's receipt) p50/p99. CPU is each frontend's
own count (getrusage, in ``/metrics`` as ``herald_cpu_seconds``) over the scenario, minus
its idle rate (measured for a few seconds before the scenarios) times the scenario's
length.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import threading
import time
import warnings
from typing import Any

import msgspec
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from bench.common import (
    ROOT,
    Role,
    bench_env,
    delete_exchange,
    fmt,
    free_port,
    percentile,
    print_table,
    stop_all,
)

#: Messages per scenario and the rate they are published at (one at a time).
MESSAGES = 1500
RATE_PER_S = 600.0
#: Seconds of the idle window each cluster's baseline CPU is measured over.
IDLE_S = 3.0
SCENARIOS = ("group", "user", "all", "mix")
WAIT_S = 60.0


class Recipient:
    """One client socket in a thread: counts events and their latencies."""

    def __init__(self, url: str, token: str, group: str | None = None) -> None:
        self.ws: ClientConnection = connect(url, open_timeout=30, max_size=None)
        self.ws.send(msgspec.json.encode({"op": "hello", "token": token}).decode())
        assert msgspec.json.decode(self.ws.recv(timeout=30))["op"] == "welcome"
        if group is not None:
            self.ws.send(msgspec.json.encode({"op": "join", "group": group, "ref": 1}).decode())
            assert msgspec.json.decode(self.ws.recv(timeout=30))["op"] == "ack"
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                now = time.time()
                frame = msgspec.json.decode(raw)
                if frame.get("op") == "event" and frame.get("event") == "scale":
                    with self.lock:
                        self.latencies.append(now - frame["ts"])
        except (ConnectionClosed, OSError):  # the socket closed at the end of the run
            return

    def take(self) -> list[float]:
        with self.lock:
            got, self.latencies = self.latencies, []
        return got

    def close(self) -> None:
        self.ws.close()


class Cluster:
    """F frontends on a fresh database and exchange, with their recipients."""

    def __init__(self, frontends: int, routing: str) -> None:
        self.env = {**bench_env(), "HERALD_ROUTING": routing, "HERALD_HEARTBEAT": "10"}
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "db", "upgrade"], cwd=ROOT,
                       env=self.env, check=True, capture_output=True)
        self.roles: list[Role] = []
        self.recipients: list[Recipient] = []
        try:
            for _ in range(frontends):
                port = free_port()
                self.roles.append(Role(["run", "frontend", "--port", str(port)], self.env,
                                       port=port))
            for role in self.roles:
                role.wait_ready()
            self.workers = [role.worker_pid() for role in self.roles]
            first = self.url(0)
            self.member = Recipient(first, self.token("member"), group="room")
            self.alice = Recipient(first, self.token("alice"))
            self.own = [Recipient(self.url(i), self.token(f"user-{i}"))
                        for i in range(frontends)]
            self.recipients = [self.member, self.alice, *self.own]
        except BaseException:
            self.close()
            raise
        import dataclasses

        from service.core.config import Settings
        from service.pg import Herald

        settings = dataclasses.replace(
            Settings.from_env(), database_url=self.env["HERALD_DATABASE_URL"],
            exchange=self.env["HERALD_EXCHANGE"], routing=routing)
        self.herald = Herald(settings)

    def url(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.roles[i].port}/ws"

    def token(self, user: str) -> str:
        from service.core.auth import issue_token

        return issue_token(self.env["HERALD_SECRET_KEY"], user, join=["*/*"], ttl_s=3600)

    def cpu(self) -> list[float]:
        """CPU seconds of each frontend's worker as it reports them (getrusage, exact to
        the microsecond: /proc's stat counts 10 ms ticks, too coarse for this)."""
        return [self.metric(role, "herald_cpu_seconds") for role in self.roles]

    @staticmethod
    def metric(role: Role, name: str) -> float:
        text = requests.get(f"http://127.0.0.1:{role.port}/metrics", timeout=10).text
        line = next(ln for ln in text.splitlines() if ln.startswith(name + "{"))
        return float(line.rsplit(" ", 1)[1])

    def measure_idle(self) -> None:
        """What each frontend spends per second anyway (heartbeats), subtracted later."""
        a = self.cpu()
        time.sleep(IDLE_S)
        self.idle_per_s = [(y - x) / IDLE_S for x, y in zip(a, self.cpu(), strict=True)]

    def bus_messages(self) -> list[float]:
        return [self.metric(role, "herald_bus_messages_total") for role in self.roles]

    def close(self) -> None:
        for r in self.recipients:
            r.close()
        if hasattr(self, "herald"):
            self.herald.close()
        stop_all(self.roles)
        from service.store.db import drop_database

        drop_database(self.env["HERALD_DATABASE_URL"])
        delete_exchange(self.env["HERALD_EXCHANGE"])


def targets(cluster: Cluster, scenario: str, n: int, rng: random.Random) -> list[Any]:
    """The n targets of a scenario, and (as a side list) how many sockets each reaches."""
    from service.core.envelope import Target

    frontends = len(cluster.roles)
    if scenario == "group":
        return [Target.group("room")] * n
    if scenario == "user":
        return [Target.user("alice")] * n
    if scenario == "all":
        return [Target.all()] * n
    out = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.7:
            out.append(Target.user(f"user-{rng.randrange(frontends)}"))
        elif roll < 0.9:
            out.append(Target.group("room"))
        else:
            out.append(Target.all())
    return out


def expected(cluster: Cluster, target: Any) -> int:
    """Sockets a target reaches in this cluster."""
    if target.kind == "all":
        return len(cluster.recipients)
    return 1


def run_scenario(cluster: Cluster, scenario: str, n: int) -> dict[str, float]:
    rng = random.Random(7)
    chosen = targets(cluster, scenario, n, rng)
    want = sum(expected(cluster, t) for t in chosen)
    bus0, cpu0 = cluster.bus_messages(), cluster.cpu()
    start = time.monotonic()
    for i, target in enumerate(chosen):
        pause = start + i / RATE_PER_S - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        cluster.herald.publish(target, "scale", i, durable=False)
    deadline = time.monotonic() + WAIT_S
    got: list[float] = []
    while len(got) < want and time.monotonic() < deadline:
        time.sleep(0.05)
        for r in cluster.recipients:
            got += r.take()
    time.sleep(0.2)  # let the frontends finish with what nobody there wanted
    cpu1, elapsed = cluster.cpu(), time.monotonic() - start
    bus1 = cluster.bus_messages()
    for r in cluster.recipients:
        got += r.take()
    spent = [max(0.0, (b - a) - idle * elapsed)
             for a, b, idle in zip(cpu0, cpu1, cluster.idle_per_s, strict=True)]
    per_msg_us = [x / n * 1e6 for x in spent]
    return {"recipient_us": per_msg_us[0],
            "idle_us": max(per_msg_us[1:], default=float("nan")),
            "total_us": sum(per_msg_us),
            "deliveries": sum(b - a for a, b in zip(bus0, bus1, strict=True)) / n,
            "p50_ms": percentile(got, 50) * 1e3, "p99_ms": percentile(got, 99) * 1e3,
            "lost": float(want - len(got))}


def main(argv: list[str] | None = None) -> None:
    # websockets asks for a context manager around each client; these live for the run
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="bench.scale")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frontends", default="1,2,4,8,16", help="comma-separated F values")
    p.add_argument("--messages", type=int, default=MESSAGES, help="per scenario")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--routing", default="fanout,targeted")
    p.add_argument("--smoke", action="store_true", help="F = 2; 150 messages; 1 run")
    args = p.parse_args(argv)
    if args.smoke:  # the bench must run, not measure: one cluster size of each routing
        args.frontends, args.messages, args.runs = "2", 150, 1
    counts = [int(f) for f in args.frontends.split(",")]
    results: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    for run in range(args.runs):
        for routing in args.routing.split(","):
            for f in counts:
                cluster = Cluster(f, routing)
                try:
                    cluster.measure_idle()
                    for scenario in SCENARIOS:
                        r = run_scenario(cluster, scenario, args.messages)
                        results.setdefault((routing, f, scenario), []).append(r)
                        print(f"  run {run + 1}/{args.runs} {routing} F={f} {scenario}: "
                              f"total {r['total_us']:.0f} µs/msg, idle frontend "
                              f"{r['idle_us']:.1f} µs/msg, {r['deliveries']:.2f} bus "
                              f"deliveries/msg, p50 {r['p50_ms']:.1f} ms, lost "
                              f"{r['lost']:.0f}", flush=True)
                finally:
                    cluster.close()
    keys = ["recipient_us", "idle_us", "total_us", "deliveries", "p50_ms", "p99_ms", "lost"]
    digits = {"deliveries": 2, "lost": 0}
    for scenario in SCENARIOS:
        rows = []
        for routing in args.routing.split(","):
            for f in counts:
                runs = results[(routing, f, scenario)]
                rows.append([routing, str(f), *(fmt(statistics.median([r[k] for r in runs]),
                                                   digits.get(k, 1)) for k in keys)])
        print_table(f"scale: {scenario} messages, {args.messages} per run at "
                    f"{RATE_PER_S:.0f}/s, medians of {args.runs} runs",
                    ["routing", "F", "recipient µs", "no-recipient µs (max)", "total µs",
                     "bus deliveries", "p50 ms", "p99 ms", "lost"], rows)


if __name__ == "__main__":
    main()
