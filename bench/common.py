"""Shared bench helpers: start processes, read CPU and RSS from /proc, summarise, print."""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
#: Upper bound of any single wait in a scenario (a stuck run fails instead of hanging).
WAIT_S = 120.0
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> int:
    """Raise this process's soft open-file limit to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def child_setup() -> None:
    """preexec_fn of every process a bench starts: a file limit for 10k sockets, and
    SIGTERM when the bench dies, so no server outlives an interrupted run."""
    raise_nofile()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `finally` blocks stop what a scenario started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def bench_env() -> dict[str, str]:
    ns = uuid.uuid4().hex[:8]
    return {
        **os.environ,
        "HERALD_ENV": "development",
        "HERALD_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/herald_bench_{ns}",
        "HERALD_BROKER_URL": BROKER_URL,
        "HERALD_EXCHANGE": f"herald_bench_{ns}.fanout",
        "HERALD_TASK_QUEUE": f"herald_bench_{ns}.tasks",
        "HERALD_SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "HERALD_API_KEYS": "bench-key",
        "HERALD_OUTBOX_LIMIT": "100000",
        "HERALD_OUTBOX_BYTES": str(256 << 20),
        # the bench's one user replays, publishes and resumes far more than a person would
        "HERALD_USER_REPLAY_PER_MIN": "100000000",
        "HERALD_USER_DURABLE_PER_MIN": "100000000",
        "HERALD_USER_TASKS_PER_MIN": "100000000",
        "HERALD_REPLAY_LIMIT": "100000",
        "HERALD_LOG_LEVEL": "WARNING",
        # scenarios that share one token (groups, tasks) hold more sockets than a user may
        "HERALD_MAX_USER_CONNECTIONS": "1000000",
        "HERALD_NS": ns,
    }


def delete_exchange(name: str, task_queue: str | None = None) -> None:
    """Remove a bench run's exchange from the broker (best effort), and its task queue
    with the queue's exchanges when the run enqueued tasks (webhook checks, demo tasks)."""
    from kombu import Connection, Exchange, Queue

    names = [name, f"{name}.routed"]  # the routed one exists once something routed
    if task_queue:
        with contextlib.suppress(Exception), Connection(BROKER_URL, connect_timeout=5) as conn:
            Queue(task_queue, channel=conn.channel()).delete()
        names += [task_queue, f"{task_queue}.events"]
    for each in names:
        with contextlib.suppress(Exception), Connection(BROKER_URL, connect_timeout=5) as conn:
            Exchange(each, channel=conn.channel()).delete()


class Server:
    """A server process (gunicorn master) in its own process group, stopped by its PID."""

    def __init__(self, argv: list[str], env: dict[str, str], log_name: str,
                 port: int | None = None, ready_path: str = "/readyz") -> None:
        self.port = port
        self.ready_path = ready_path
        (ROOT / "var").mkdir(exist_ok=True)
        with open(ROOT / "var" / log_name, "ab") as log:
            self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=child_setup)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"server on {self.port} exited ({self.popen.returncode})")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=1).ok:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"server on {self.port} not ready")

    def pids(self) -> list[int]:
        """This server's PID and its children's (gunicorn's worker)."""
        out = subprocess.run(["pgrep", "-g", str(self.popen.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def worker_pid(self) -> int:
        """gunicorn's (only) worker: the child of the master."""
        out = subprocess.run(["pgrep", "-P", str(self.popen.pid)], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        if len(pids) != 1:
            raise RuntimeError(f"expected one worker under {self.popen.pid}, found {pids}")
        return pids[0]

    def stop(self) -> None:
        stop_all([self])

    def terminate(self) -> None:
        """SIGTERM its group: the first half of ``stop``, so several servers drain at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)

    def finish_stop(self) -> None:
        """Wait for the exit (bounded), then SIGKILL what is left of its group."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def stop_all(servers: Sequence[Server]) -> None:
    """Stop several servers at once (a frontend takes a second or two to exit)."""
    for server in servers:
        server.terminate()
    for server in servers:
        server.finish_stop()


class Role(Server):
    """A Herald role (``manage.py ARGS``)."""

    def __init__(self, args: list[str], env: dict[str, str], port: int | None = None) -> None:
        super().__init__([sys.executable, str(ROOT / "manage.py"), *args], env,
                         f"bench-{env['HERALD_NS']}-{args[1]}-{port}.log", port=port)


def cpu_split(pids: Sequence[int]) -> tuple[float, float]:
    """User and system CPU seconds of these processes (all their threads), from the utime
    and stime fields of /proc/<pid>/stat (clock ticks; the kernel splits a process's time
    between the two by where its ticks landed)."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: Sequence[int]) -> float:
    """User+system CPU seconds of these processes, from /proc/<pid>/stat."""
    return sum(cpu_split(pids))


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


def print_summary(title: str, results: list[dict[str, float]],
                  rows: Sequence[tuple[str, str, str]], digits: int = 1) -> None:
    """One Herald-only table: per row (key in each run's results, label, target) the
    median, min and max over the runs."""
    width = max(len(label) for _, label, _ in rows) + 2
    print(title)
    print(f"{'metric':<{width}} {'median':>9} {'min':>9} {'max':>9}  target")
    for key, label, target in rows:
        med, lo, hi = med_min_max([r[key] for r in results])
        print(f"{label:<{width}} {med:>9.{digits}f} {lo:>9.{digits}f} {hi:>9.{digits}f}  "
              f"{target}")
    sys.stdout.flush()


def retry(fn: Callable[[], bool], timeout: float, pause: float = 0.2) -> bool:
    """Call ``fn`` until it returns True or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if fn():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)


# --- output ---------------------------------------------------------------------------------

def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "-"
    if abs(value) >= 1000 or digits == 0:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def spread(values: Sequence[float], digits: int = 1) -> str:
    """`median (min-max)` of a metric over runs; a single run prints just its value."""
    if not values or all(v != v for v in values):  # none, or all NaN
        return "-"
    med, lo, hi = med_min_max(list(values))
    if len(values) == 1:
        return fmt(med, digits)
    return f"{fmt(med, digits)} ({fmt(lo, digits)}-{fmt(hi, digits)})"


def ratio(a: Sequence[float], b: Sequence[float]) -> str:
    """a/b of the medians (Herald/peer, …)."""
    if not a or not b:
        return "-"
    num, den = statistics.median(a), statistics.median(b)
    return f"{num / den:.2f}" if den else "-"


def ratio_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """The ratio columns of a table with these sides: Herald over each other side, or the
    first over the second when Herald is not among two."""
    if "Herald" in names:
        return [("Herald", other) for other in names if other != "Herald"]
    return [(names[0], names[1])] if len(names) == 2 else []


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """One aligned table: a `== title ==` line, the header, the rows."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n== {title} ==")
    for r in [header, *rows]:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))
    sys.stdout.flush()


def machine_header() -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), "
            f"{cpu}, {mem_kib / 2**20:.1f} GiB RAM, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}, {now}")
