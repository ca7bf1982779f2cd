"""Durable publishing: messages/s through the log and the fanout, durable vs transient, via
the HTTP API (keep-alive, concurrent threads, to frontend A) and via the backend API
(``service.pg.Herald().publish``), all received by one socket on frontend B; then the
latency (publish call -> receipt at that socket) at a modest rate, one publisher.

Also the batched paths, BATCH messages per call: ``POST /api/publish/batch`` and
``Herald().publish_many``. Target (issue): durable publishing >= 5,000 messages/s. One
table: median, min, max.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from websockets.asyncio.client import connect

from bench.common import ROOT, cpu_seconds, percentile, print_summary
from bench.sides import HeraldCluster

Send = Callable[[list[dict[str, Any]]], object]
PHASE_WAIT_S = 120.0  # upper bound on one phase's wait for its deliveries
BATCH = 50  # messages per call in the batched modes (POST /api/publish/batch, publish_many)


async def subscribe(url: str, token: str) -> None:
    """Child process: one socket; after each `end` event print that phase's receipts."""
    async with connect(url, max_size=None, compression=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"op": "hello", "token": token}))
        assert json.loads(await ws.recv())["op"] == "welcome"
        print("ready", flush=True)
        phase, expect, until = 0, -1, 0.0
        stats: dict[str, Any] = {"n": 0, "lat": [], "last": 0.0}
        seen: set[int] = set()  # durable ids: a replay after a bus reconnect may repeat some
        while True:
            wait = until - time.monotonic() if expect >= 0 else 600.0
            try:
                raw: str | bytes | None = await asyncio.wait_for(ws.recv(), max(0.0, wait))
            except TimeoutError:
                raw = None
                if expect < 0:
                    return  # idle for 10 minutes: the parent is gone
            if raw is not None:
                now, f = time.time(), json.loads(raw)
                if f.get("op") != "event":
                    continue
                if f["event"] == "quit":
                    return
                if f["event"] == "end":
                    expect, until = f["data"]["expect"], time.monotonic() + PHASE_WAIT_S
                elif f["data"]["p"] == phase and f.get("id") not in seen:
                    if "id" in f:
                        seen.add(f["id"])
                    stats["n"] += 1
                    stats["lat"].append(now - f["data"]["t"])
                    stats["last"] = now
            if expect >= 0 and (stats["n"] >= expect or raw is None):
                print(json.dumps(stats), flush=True)
                phase, expect = phase + 1, -1
                stats = {"n": 0, "lat": [], "last": 0.0}


class Bench:
    def __init__(self) -> None:
        self.cluster = HeraldCluster()  # also exports its HERALD_* settings to os.environ
        from service.pg import Herald

        self.herald = Herald()
        self.sub = subprocess.Popen(
            [sys.executable, "-m", "bench.durable", "--subscriber", self.cluster.ws_urls[1],
             "--token", self.cluster.token()], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.phase = 0
        assert self.readline(30) == "ready"

    def readline(self, timeout: float) -> str:
        assert self.sub.stdout is not None
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(self.sub.stdout.readline).result(timeout).strip()

    def sender(self, path: str, durable: bool) -> Send:
        """A publish function for one thread (HTTP: its own keep-alive connection); it is
        given one message, or BATCH of them in the batched modes."""
        from service.core.envelope import Target

        if path == "backend":
            return lambda datas: self.herald.publish(Target.all(), "d", datas[0],
                                                     durable=durable)
        if path == "backend batch":
            return lambda datas: self.herald.publish_many(
                [(Target.all(), "d", d) for d in datas], durable=durable)
        port = self.cluster.frontends[0].port
        assert port is not None
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": "Bearer bench-key", "Content-Type": "application/json"}

        def send(datas: list[dict[str, Any]]) -> None:
            msgs = [{"target": {"all": True}, "event": "d", "data": d, "durable": durable}
                    for d in datas]
            if path == "http batch":
                conn.request("POST", "/api/publish/batch", json.dumps({"messages": msgs}),
                             headers)
            else:
                conn.request("POST", "/api/publish", json.dumps(msgs[0]), headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 202:
                raise RuntimeError(f"publish: HTTP {resp.status}")

        return send

    def phase_run(self, path: str, durable: bool, n: int, threads: int,
                  rate: float | None) -> dict[str, float]:
        """Publish n messages from `threads` threads (paced at `rate` when one thread)."""
        phase, errors = self.phase, []
        self.phase += 1

        per_call = BATCH if path.endswith("batch") else 1

        def work(k: int) -> None:
            try:
                send, t0 = self.sender(path, durable), time.monotonic()
                mine = list(range(k, n, threads))
                for j in range(0, len(mine), per_call):
                    if rate:
                        time.sleep(max(0.0, t0 + j / rate - time.monotonic()))
                    now = time.time()
                    send([{"t": now, "p": phase, "i": i} for i in mine[j:j + per_call]])
            except Exception as exc:  # noqa: BLE001 - reported below, the phase goes on
                errors.append(exc)

        pids = self.cluster.server_pids()
        cpu0, start = cpu_seconds(pids), time.time()
        pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=PHASE_WAIT_S)
        from service.core.envelope import Target

        self.cluster.publish(Target.all(), "end", {"expect": n})
        stats = json.loads(self.readline(PHASE_WAIT_S + 30))
        cpu = cpu_seconds(pids) - cpu0
        if errors:
            print(f"# {path} durable={durable}: {len(errors)} publisher errors: {errors[0]!r}",
                  file=sys.stderr)
        lat = [x * 1e3 for x in stats["lat"]]
        return {"rate": stats["n"] / max(1e-9, stats["last"] - start), "lost": n - stats["n"],
                "p50": percentile(lat, 50), "p99": percentile(lat, 99),
                "cpu_us": cpu / max(1, stats["n"]) * 1e6}

    def close(self) -> None:
        from service.core.envelope import Target

        self.cluster.publish(Target.all(), "quit", None)
        try:
            self.sub.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.sub.kill()
        self.herald.close()
        self.cluster.close()


MODES = [(path, durable) for path in ("http", "backend") for durable in (True, False)]
#: Throughput only: BATCH messages per call, durable.
BATCH_MODES = ("http batch", "backend batch")


def one_run(bench: Bench, n: int, threads: int, n_lat: int, rate: float) -> dict[str, float]:
    out: dict[str, float] = {"lost": 0}
    for path in BATCH_MODES:
        r = bench.phase_run(path, True, n, threads, None)
        out[f"{path} durable msg/s"], out["lost"] = r["rate"], out["lost"] + r["lost"]
        out[f"{path} durable frontends CPU us/msg"] = r["cpu_us"]
    for path, durable in MODES:
        name = f"{path} {'durable' if durable else 'transient'}"
        r = bench.phase_run(path, durable, n, threads, None)
        out[f"{name} msg/s"], out["lost"] = r["rate"], out["lost"] + r["lost"]
        out[f"{name} frontends CPU us/msg"] = r["cpu_us"]
        r = bench.phase_run(path, durable, n_lat, 1, rate)
        out[f"{name} p50 ms"], out[f"{name} p99 ms"] = r["p50"], r["p99"]
        out["lost"] += r["lost"]
    for path in ("http", "backend"):
        for q in ("p50", "p99"):
            out[f"{path} durable added {q} ms"] = (out[f"{path} durable {q} ms"]
                                                   - out[f"{path} transient {q} ms"])
    return out


def target_of(key: str) -> str:
    return ">= 5000" if key.endswith("durable msg/s") else "0" if key == "lost" else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--threads", type=int, default=8, help="concurrent publisher threads")
    p.add_argument("--rate", type=float, default=200.0, help="msg/s of the latency phases")
    p.add_argument("--subscriber", help=argparse.SUPPRESS)
    p.add_argument("--token", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.subscriber:
        asyncio.run(subscribe(args.subscriber, args.token))
        return
    n, n_lat = (500, 100) if args.smoke else (5000, 1000)
    bench = Bench()
    try:
        bench.phase_run("backend", True, 50, 2, None)  # warm-up: connections, pools
        bench.phase_run("http", True, 50, args.threads, None)
        results = [one_run(bench, n, args.threads, n_lat, args.rate) for _ in range(args.runs)]
        print_summary(f"Durable publishing ({n} msgs x {args.threads} threads per throughput "
                      f"phase, latency: {n_lat} msgs at {args.rate:.0f}/s, 1 subscriber socket "
                      f"on the other frontend; {args.runs} runs)", results,
                      [(key, key, target_of(key)) for key in results[0]])
    finally:
        bench.close()


if __name__ == "__main__":
    main()
