"""100,000 sockets on one box: memory per socket, the connect storm, one broadcast to all.

    .venv/bin/python -m bench.hundredk                   # 100,000 sockets, 2 frontends, 1 run
    .venv/bin/python -m bench.hundredk --frontends 6     # where a process may hold < 50,256 files
    .venv/bin/python -m bench.hundredk --smoke           # 2,000 sockets, 1 run

Per run, on fresh frontends (``HERALD_WORKER_CONNECTIONS`` sized for their share):

1. Warm-up: a few sockets per frontend opened and closed; each worker's VmRSS is read.
2. Connect storm: the load generators (bench/loadgen.py, SOCKETS_PER_LOADGEN each, every
   socket its own user) wait, then all go at once. Each connects from its own 127.0.0.x
   source address (ip_local_port_range has ~28,000 ephemeral ports, too few for 100,000
   from one address; sockets are bound with IP_BIND_ADDRESS_NO_PORT, see
   ``wsclient.bound_to``) and spreads its sockets round robin over the frontends: WebSocket open,
   ``hello``, ``welcome``, ``join``, ``ack``, ``--concurrency`` handshakes in flight in
   all. Reported: sockets/s (connected / time from "go" to the last load generator
   through), failures, the frontends' CPU ms per socket (/proc, masters and workers).
3. Held idle: once the registry writes are flushed and after SETTLE_S, each worker's VmRSS
   again; KiB/socket = (after - before) / the sockets it holds (its herald_connections).
4. One broadcast (``Target.all``) from a bus publisher in this process, then ``end``:
   delivered (of the sockets held), latency p50/p99/max from publish to receipt, and the
   CPU it took the frontends and the load generators (both share the box's cores).

Limits: each frontend needs a descriptor per socket (50,000 for 100,000 over 2), often
more than the hard open-file limit. The bench raises its own hard limit for the run where
it may (CAP_SYS_RESOURCE; its children inherit it, nothing outside this process tree
changes) and otherwise stops saying how many frontends fit under the limit there is.
Kernel settings (somaxconn, the port range, conntrack) are read and printed, never changed.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import requests

from bench.common import (
    ROOT,
    bench_env,
    child_setup,
    cpu_seconds,
    exit_on_sigterm,
    percentile,
    print_table,
    retry,
    rss_bytes,
    spread,
)
from bench.fanout import finish, read_line, tell
from bench.sides import HeraldCluster

FRONTENDS = 2
SOCKETS_PER_LOADGEN = 12500
#: Handshakes in flight at once, over all load generators.
CONCURRENCY = 200
GROUP = "hundredk"
WARMUP_SOCKETS = 100
#: Seconds the sockets sit idle before the RSS is read (after the registry is flushed).
SETTLE_S = 3.0
#: Bound of each load generator's waits (the storm, the broadcast), s.
LOADGEN_TIMEOUT_S = 600.0
#: Bound of the wait for the registry writes of the storm to be flushed, s.
FLUSH_WAIT_S = 120.0
#: Descriptors a frontend needs besides its sockets (service/server.py FD_HEADROOM).
FD_HEADROOM = 256
SYSCTLS = ("net/core/somaxconn", "net/ipv4/ip_local_port_range",
           "net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_count")


def sysctl(name: str) -> str:
    try:
        return " ".join(Path("/proc/sys", name).read_text().split())
    except OSError:
        return "-"


def frontends_that_fit(sockets: int, concurrency: int) -> int:
    """FRONTENDS, or more when this process may not raise its hard open-file limit to what
    each of FRONTENDS would need (said on stderr)."""
    need = -(-sockets // FRONTENDS) + FD_HEADROOM + concurrency
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= need:
        return FRONTENDS
    try:  # raised for good when allowed: raise_hard_nofile then finds it high enough
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, need))
        return FRONTENDS
    except (ValueError, OSError):
        fit = -(-sockets // max(1, hard - FD_HEADROOM - concurrency))
        print(f"bench.hundredk: the hard open-file limit is {hard} and may not be raised here; "
              f"{fit} frontends instead of {FRONTENDS}", file=sys.stderr, flush=True)
        return max(FRONTENDS, fit)


def raise_hard_nofile(sockets: int, frontends: int, concurrency: int) -> str:
    """This process's open-file limit (soft and hard) raised to what each frontend needs
    when lower; the frontends and load generators it starts inherit it. Returns what was
    done; SystemExit saying what to do when it may not."""
    # a handshake holds two descriptors until the event loop takes its socket over
    need = -(-sockets // frontends) + FD_HEADROOM + concurrency
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        except (ValueError, OSError) as exc:
            fit = -(-sockets // max(1, hard - FD_HEADROOM - concurrency))
            raise SystemExit(
                f"bench.hundredk: each of {frontends} frontends needs {need} open files, the "
                f"hard limit is {hard} and this process may not raise it ({exc}): raise it "
                f"first (`ulimit -Hn {need}` with CAP_SYS_RESOURCE, systemd "
                f"LimitNOFILE={need}), or spread the sockets over --frontends {fit}") from None
        return f"hard open-file limit raised from {hard} to {need} for this run's processes"
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return f"open-file limit {need} or more (hard {hard}), unchanged"


def metric(port: int, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    line = next(ln for ln in text.splitlines() if ln.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


def start_gens(cluster: HeraldCluster, n: int, per: int, sources: list[str],
               extra: list[str]) -> list[subprocess.Popen[str]]:
    """Load generators for ``n`` sockets, ``per`` each, the k-th from ``sources[k]``."""
    gens = []
    for k, start in enumerate(range(0, n, per)):
        gens.append(subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", "--urls", ",".join(cluster.ws_urls),
             "--count", str(min(per, n - start)), "--timeout", str(LOADGEN_TIMEOUT_S),
             "--source", sources[k % len(sources)], *cluster.auth_args(), *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
            preexec_fn=child_setup))
    return gens


def warm_up(cluster: HeraldCluster, frontends: int, sources: list[str]) -> None:
    gens = start_gens(cluster, WARMUP_SOCKETS * frontends, WARMUP_SOCKETS * frontends,
                      sources, ["--idle"])
    try:
        read_line(gens[0])
    finally:
        finish(gens)


def one_run(n: int, frontends: int, per: int, concurrency: int,
            sources: list[str]) -> dict[str, float]:
    share = -(-n // frontends)
    env = {**bench_env(), "HERALD_WORKER_CONNECTIONS": str(share)}
    cluster = HeraldCluster(frontends=frontends, env=env)
    gens: list[subprocess.Popen[str]] = []
    try:
        workers = [fe.worker_pid() for fe in cluster.frontends]
        ports = [int(fe.port or 0) for fe in cluster.frontends]
        warm_up(cluster, frontends, sources)
        time.sleep(1.0)
        before = [rss_bytes(w) for w in workers]
        count = -(-n // per)
        gens = start_gens(cluster, n, per, sources,
                          ["--storm", "--then-count", "--join-all", GROUP,
                           "--concurrency", str(max(1, concurrency // count))])
        for g in gens:
            read_line(g)  # each says it is waiting
        pids = cluster.server_pids()
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        tell(gens)
        opened = [read_line(g) for g in gens]
        wall = time.monotonic() - t0
        cpu = cpu_seconds(pids) - cpu0
        conntrack = sysctl("net/netfilter/nf_conntrack_count")
        connected = sum(int(o["connected"]) for o in opened)
        retry(lambda: all(metric(p, "herald_registry_pending_writes") == 0 for p in ports),
              FLUSH_WAIT_S, pause=1.0)
        time.sleep(SETTLE_S)
        after = [rss_bytes(w) for w in workers]
        held = [metric(p, "herald_connections") for p in ports]
        cpu0, t_pub = cpu_seconds(pids), time.monotonic()
        cluster.publish_ticks(1, None, None)  # one tick to all, then `end`
        results = [read_line(g) for g in gens]
        broadcast_s = time.monotonic() - t_pub
        broadcast_cpu = cpu_seconds(pids) - cpu0
    finally:
        finish(gens)
        cluster.close()
    lat = [x for r in results for x in r["lat"]]
    received = sum(int(r["received"]) for r in results)
    out = {
        "connected": float(connected), "failed": float(n - connected),
        "sockets/s": connected / wall, "storm s": wall,
        "server CPU ms/socket": cpu / max(1, connected) * 1e3,
        "client CPU s": sum(float(o["cpu_s"]) for o in opened),
        "delivered": float(received), "lost": float(connected - received),
        "p50 ms": percentile(lat, 50) * 1e3, "p99 ms": percentile(lat, 99) * 1e3,
        "max ms": max(lat) * 1e3 if lat else float("nan"), "broadcast s": broadcast_s,
        "broadcast server CPU s": broadcast_cpu,
        "broadcast client CPU s": sum(float(r["cpu_s"]) for r in results),
        "conntrack": float(conntrack) if conntrack.isdigit() else float("nan"),
    }
    for i, (b, a, h) in enumerate(zip(before, after, held, strict=True), 1):
        out[f"frontend {i} KiB/socket"] = (a - b) / 1024 / max(1.0, h)
    out["all KiB/socket"] = (sum(after) - sum(before)) / 1024 / max(1.0, sum(held))
    out["fewest sockets"], out["most sockets"] = min(held), max(held)
    out["largest RSS MiB"] = max(after) / 2**20
    return out


def rows_of(frontends: int) -> list[tuple[str, int, str]]:
    """(key, digits, target) of each table row."""
    return [
        ("connected", 0, "all"), ("failed", 0, "0"),
        ("fewest sockets", 0, ""), ("most sockets", 0, ""),
        *[(f"frontend {i} KiB/socket", 1, "<= 8") for i in range(1, frontends + 1)],
        ("all KiB/socket", 1, "<= 8"), ("largest RSS MiB", 0, ""),
        ("sockets/s", 0, ""), ("storm s", 1, ""), ("server CPU ms/socket", 2, ""),
        ("client CPU s", 1, ""), ("conntrack", 0, ""),
        ("delivered", 0, "all connected"), ("lost", 0, "0"),
        ("p50 ms", 0, ""), ("p99 ms", 0, ""), ("max ms", 0, ""), ("broadcast s", 1, ""),
        ("broadcast server CPU s", 2, ""), ("broadcast client CPU s", 2, ""),
    ]


LABELS = {"fewest sockets": "sockets on a frontend, fewest",
          "most sockets": "sockets on a frontend, most",
          "all KiB/socket": "KiB/socket, all frontends",
          "largest RSS MiB": "worker RSS MiB, largest",
          "storm s": "connect storm s", "conntrack": "conntrack entries after storm",
          "delivered": "broadcast delivered", "lost": "broadcast lost",
          "p50 ms": "broadcast p50 ms", "p99 ms": "broadcast p99 ms",
          "max ms": "broadcast max ms", "broadcast s": "broadcast to last report s"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sockets", type=int, default=100_000)
    p.add_argument("--frontends", type=int, default=None,
                   help=f"frontends to spread the sockets over (default {FRONTENDS}, or as "
                        "many as the hard open-file limit needs when it cannot be raised)")
    p.add_argument("--concurrency", type=int, default=CONCURRENCY)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="2,000 sockets, one run")
    args = p.parse_args(argv)
    per = SOCKETS_PER_LOADGEN
    if args.smoke:
        args.sockets, args.runs, per = 2000, 1, 1000
    exit_on_sigterm()
    if args.frontends is None:
        args.frontends = frontends_that_fit(args.sockets, args.concurrency)
    limit = raise_hard_nofile(args.sockets, args.frontends, args.concurrency)
    loadgens = -(-args.sockets // per)
    sources = [f"127.0.0.{2 + k}" for k in range(loadgens)]
    res: dict[str, list[float]] = defaultdict(list)
    for i in range(args.runs):
        r = one_run(args.sockets, args.frontends, per, args.concurrency, sources)
        print(f"  run {i + 1}/{args.runs}: {r['connected']:.0f} connected at "
              f"{r['sockets/s']:.0f}/s, {r['all KiB/socket']:.1f} KiB/socket, broadcast p99 "
              f"{r['p99 ms']:.0f} ms, lost {r['lost']:.0f}", file=sys.stderr, flush=True)
        for k, v in r.items():
            res[k].append(v)
    print(f"kernel (read, not changed): somaxconn {sysctl(SYSCTLS[0])}, ip_local_port_range "
          f"{sysctl(SYSCTLS[1])} per source address, nf_conntrack_max {sysctl(SYSCTLS[2])}; "
          f"{limit}; {loadgens} load generators from {', '.join(sources)}", flush=True)
    rows = [[LABELS.get(k, k), spread(res[k], d), t] for k, d, t in rows_of(args.frontends)]
    print_table(f"100k: {args.sockets} sockets over {args.frontends} frontends, concurrency "
                f"{args.concurrency} (median (min-max) of {args.runs} runs)",
                ["metric", "Herald", "target"], rows)


if __name__ == "__main__":
    main()
