"""The bench suite's smoke mode runs end to end, Herald and the Flask-SocketIO peer both, so
the benchmarks cannot rot. No timing assertions: every scenario runs and prints its table,
and the fan-out loses nothing."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from bench.run import SCENARIOS
from tests.support import PYTHON, ROOT

SMOKE_TIMEOUT_S = 480
#: Scenarios run at once: the smoke checks that each runs, not how fast (it waits mostly).
SMOKE_JOBS = 2
#: The tables bench/run.py's own scenarios print (the others are checked by their status).
TABLES = ("== fan-out", "== idle sockets", "== connect storm", "== scale: group messages",
          "== consume")
#: A fan-out row: N, rate, target, metric, Herald, peer, ratio.
ROW = re.compile(r"^\s*(\d+)\s+(\S+)\s+(all|half)\s+(.+?)\s{2,}(\S+)\s+(\S+)\s+(\S+)\s*$")


@pytest.mark.timeout(SMOKE_TIMEOUT_S + 60)
def test_bench_smoke() -> None:
    # the bench makes its own databases and exchanges: none of this test run's settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    proc = subprocess.run([PYTHON, "-m", "bench.run", "--smoke", "--jobs", str(SMOKE_JOBS)],
                          cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    out = proc.stdout
    assert proc.returncode == 0, f"bench.run --smoke failed:\n{out}\n{proc.stderr[-4000:]}"
    assert out.startswith("machine: ")
    for header in TABLES:
        assert header in out, f"no {header!r} table in:\n{out}"
    for name, _ in SCENARIOS:
        assert f"scenario {name}: ok" in out, f"scenario {name} did not run:\n{out}"

    rows = [m.groups() for line in out.splitlines() if (m := ROW.match(line))]
    lost = [r for r in rows if r[3] == "lost"]
    rates = [r for r in rows if r[3] == "deliveries/s"]
    assert lost and rates, f"no fan-out rows in:\n{out}"
    for r in lost:
        assert r[4] == "0" and r[5] == "0", f"fan-out lost messages: {r}"
    for r in rates:
        assert float(r[4]) > 0 and float(r[5]) > 0, f"fan-out delivered nothing: {r}"
    # scale tables: routing, F, six figures, lost; nothing lost in any
    scale = [line.split() for line in out.splitlines()
             if re.match(r"^\s*(fanout|targeted)\s+\d+\s", line)]
    assert scale and all(row[-1] == "0" for row in scale), f"scale lost messages:\n{out}"
