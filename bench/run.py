"""The bench suite in one command: every scenario, one table each.

    .venv/bin/python -m bench.run            # full: medians of 3 runs (--runs N), every side
    .venv/bin/python -m bench.run --smoke    # a few hundred sockets, Herald and Flask-SocketIO
    .venv/bin/python -m bench.run --side herald node   # only these sides

Creates bench/.venv-peer for the Flask-SocketIO peer on first use (again only when
bench/requirements-peer.txt changes) and bench/peer_node/node_modules for the Node peer
(`npm ci`, again only when its package-lock.json changes), each only when its side runs;
then runs each scenario as its own process and passes its output through. Exits non-zero
when a scenario fails.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO

from bench.common import ROOT, child_setup, exit_on_sigterm, machine_header
from bench.sides import add_side_argument, chosen_sides

#: (name, module): the scenarios, in the order they run.
SCENARIOS = [
    ("fan-out", "bench.fanout"),
    ("idle", "bench.idle"),
    ("connect", "bench.connect"),
    ("tasks round trip", "bench.tasks_rtt"),
    ("durable", "bench.durable"),
    ("resume", "bench.resume"),
    ("scale", "bench.scale"),
    ("consume", "bench.consume"),
    ("100k sockets", "bench.hundredk"),
]
#: Scenarios whose full run is long enough that bench.run takes one run of them, not --runs.
ONE_RUN = {"bench.hundredk"}
#: The scenarios with a peer side (they take --side).
WITH_PEER = {"bench.fanout", "bench.idle", "bench.connect"}
#: Upper bound of one scenario, seconds.
TIMEOUT_S = {"smoke": 240, "full": 1800}


def git_revision() -> str:
    out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def run_scenario(module: str, runs: int, smoke: bool, sides: list[str],
                 timeout: float, out: IO[bytes] | None = None,
                 err: IO[bytes] | None = None) -> int:
    """Run one scenario module, its output passed through (or into ``out``/``err``);
    return its exit code."""
    runs = 1 if module in ONE_RUN else runs
    cmd = [sys.executable, "-m", module, "--runs", str(runs), *(["--smoke"] if smoke else []),
           *(["--side", *sides] if module in WITH_PEER else [])]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, preexec_fn=child_setup,
                            stdout=out, stderr=err)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"bench: {module} still running after {timeout:.0f} s; stopping it",
              file=sys.stderr, flush=True)
        return 124
    finally:
        if proc.poll() is None:  # timed out, or this runner was interrupted
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="small and quick; Herald and the Flask-SocketIO peer (--side adds node)")
    p.add_argument("--runs", type=int, default=None, help="runs per scenario (3; smoke 1)")
    p.add_argument("--only", nargs="+", metavar="MODULE",
                   help="run only these scenarios (e.g. fanout idle)")
    p.add_argument("--jobs", type=int, default=1,
                   help="scenarios run at once (for --smoke: timings taken side by side "
                        "are not comparable)")
    add_side_argument(p)  # fan-out, idle and connect
    args = p.parse_args(argv)
    known = {module.split(".")[-1] for _, module in SCENARIOS}
    if args.only and not set(args.only) <= known:
        p.error(f"--only takes {', '.join(sorted(known))}")
    runs = args.runs or (1 if args.smoke else 3)
    mode = "smoke" if args.smoke else "full"
    exit_on_sigterm()
    print(machine_header())
    sides = chosen_sides(args.side, args.smoke)
    print(f"herald: {git_revision()}; mode: {mode}; runs per scenario: {runs}; "
          f"sides: {' '.join(sides)}", flush=True)

    if "peer" in sides:
        from bench.peer.cluster import ensure_venv

        ensure_venv()
    if "node" in sides:
        from bench.peer_node.cluster import ensure_node_modules

        ensure_node_modules()
    chosen = []
    for name, module in SCENARIOS:
        if args.only and module.split(".")[-1] not in args.only:
            continue
        if importlib.util.find_spec(module) is None:
            print(f"\nscenario {name}: not available ({module} is missing)", flush=True)
            continue
        chosen.append((name, module))
    results = run_all(chosen, args.jobs, lambda module, out=None, err=None: run_scenario(
        module, runs, args.smoke, sides, TIMEOUT_S[mode], out, err))
    summary = [f"scenario {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {took:.0f} s"
               for (name, _), (rc, took) in zip(chosen, results, strict=True)]
    print("\n" + "\n".join(summary), flush=True)
    return 1 if any(rc != 0 for rc, _ in results) else 0


def run_all(chosen: list[tuple[str, str]], jobs: int,
            run: Callable[..., int]) -> list[tuple[int, float]]:
    """Each scenario's (exit code, seconds). One at a time with its output passed through,
    or ``jobs`` at once (the smoke: timings are not its point) with each one's output
    printed whole, in SCENARIOS order, once it is done."""
    if jobs <= 1:
        out = []
        for _, module in chosen:
            t0 = time.monotonic()
            out.append((run(module), time.monotonic() - t0))
        return out

    def captured(module: str) -> tuple[int, float, bytes, bytes]:
        with tempfile.TemporaryFile() as o, tempfile.TemporaryFile() as e:
            t0 = time.monotonic()
            rc = run(module, o, e)
            o.seek(0)
            e.seek(0)
            return rc, time.monotonic() - t0, o.read(), e.read()

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(captured, module) for _, module in chosen]
        results = []
        for future in futures:
            rc, took, stdout, stderr = future.result()
            sys.stderr.buffer.write(stderr)
            sys.stderr.flush()
            sys.stdout.buffer.write(stdout)
            sys.stdout.flush()
            results.append((rc, took))
    return results


if __name__ == "__main__":
    sys.exit(main())
