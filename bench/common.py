"""Shared bench helpers: start Herald processes, read CPU and RSS from /proc, summarise."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_env() -> dict[str, str]:
    ns = uuid.uuid4().hex[:8]
    return {
        **os.environ,
        "HERALD_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/herald_bench_{ns}",
        "HERALD_EXCHANGE": f"herald_bench_{ns}.fanout",
        "HERALD_TASK_QUEUE": f"herald_bench_{ns}.tasks",
        "HERALD_SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "HERALD_API_KEYS": "bench-key",
        "HERALD_OUTBOX_LIMIT": "100000",
        "HERALD_LOG_LEVEL": "WARNING",
        "HERALD_NS": ns,
    }


class Role:
    """A Herald role in its own process group, stopped by its PID."""

    def __init__(self, args: list[str], env: dict[str, str], port: int | None = None) -> None:
        self.port = port
        log = open(ROOT / "var" / f"bench-{env['HERALD_NS']}-{args[1]}-{port}.log", "ab")  # noqa: SIM115
        self.popen = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT,
                                      env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"frontend on {self.port} not ready")

    def pids(self) -> list[int]:
        """This role's PID and its children's (gunicorn's worker)."""
        out = subprocess.run(["pgrep", "-g", str(self.popen.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU seconds of these processes, from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def med_min_max(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)
