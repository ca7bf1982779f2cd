"""Test support: a per-run namespace, real processes managed by PID, a WebSocket client."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
PYTHON = sys.executable
#: Upper bound for any wait in the tests (they assert behaviour, never timings).
WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def namespace_env() -> dict[str, str]:
    """Environment for one test run: its own database, exchange, queue, keys."""
    ns = uuid.uuid4().hex[:10]
    return {
        "HERALD_ENV": "development",
        "HERALD_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/herald_test_{ns}",
        "HERALD_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
        "HERALD_EXCHANGE": f"herald_test_{ns}.fanout",
        "HERALD_TASK_QUEUE": f"herald_test_{ns}.tasks",
        "HERALD_SECRET_KEY": "test-secret-" + uuid.uuid4().hex,
        "HERALD_API_KEYS": "test-key-1,test-key-2",
        "HERALD_HEARTBEAT": "1",
        "HERALD_VAR_DIR": str(ARTIFACTS / f"var-{ns}"),
        "HERALD_NS": ns,
    }


class Proc:
    """One role started by a test, in its own process group, stopped by that PID only."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], port: int | None = None,
                 prefix: list[str] | None = None, host: str = "127.0.0.1"):
        self.name = name
        self.port = port
        self.host = host
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"{env.get('HERALD_NS', 'x')}-{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # ``prefix`` runs it elsewhere, e.g. ``ip netns exec NS``, which execs in place, so
        # the PID is still the role's own
        self.popen = subprocess.Popen([*(prefix or []), PYTHON, str(ROOT / "manage.py"), *args],
                                      cwd=ROOT,
                                      env={**os.environ, **env}, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited: see {self.log_path}")
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready in {timeout}s: see {self.log_path}")

    def signal_group(self, sig: int) -> None:
        # the process group is the one this test created with start_new_session
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the role and its children (a crash)."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait(timeout=WAIT_S)
        self._log.close()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait, then SIGKILL what is left."""
        self.terminate()
        self.finish_stop(timeout)

    def terminate(self) -> None:
        """The first half of ``stop``: SIGTERM, so several roles can drain at once."""
        if self.alive():
            self.signal_group(signal.SIGTERM)

    def finish_stop(self, timeout: float = 20.0) -> None:
        """The second half of ``stop``: wait for the exit, then SIGKILL what is left."""
        if self.alive():
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(timeout=WAIT_S)
        self.signal_group(signal.SIGKILL)  # stragglers in the group (gunicorn's worker)
        self._log.close()


def stop_all(procs: list[Proc], timeout: float = 20.0) -> None:
    """Stop every role at once: all get SIGTERM first, so the drains overlap (a frontend
    takes a second or two to exit, and a cluster holds up to five roles)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.finish_stop(timeout)


class Client:
    """A WebSocket client with a reader thread that keeps every frame it receives."""

    def __init__(self, url: str, origin: str | None = None) -> None:
        headers = {"Origin": origin} if origin else None
        self.ws: ClientConnection = connect(url, additional_headers=headers, open_timeout=10,
                                            max_size=None, legacy=True,
                                            ping_interval=None)  # tests measure the server
        self.frames: list[dict[str, Any]] = []
        self.raw: queue.Queue[dict[str, Any]] = queue.Queue()
        self.close_code: int | None = None
        self.closed = threading.Event()
        self._cond = threading.Condition()
        self._ref = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for msg in self.ws:
                self.on_frame(json.loads(msg))
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            with self._cond:
                self._cond.notify_all()

    def on_frame(self, frame: dict[str, Any]) -> None:
        """Keep one received frame (subclasses may count instead)."""
        with self._cond:
            self.frames.append(frame)
            self._cond.notify_all()

    def send(self, obj: Any) -> None:
        self.ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = WAIT_S,
                 count: int = 1) -> list[dict[str, Any]]:
        """Wait until ``count`` received frames match ``pred``; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [f for f in self.frames if pred(f)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.closed.is_set() and len(found) < count):
                    raise TimeoutError(f"{len(found)}/{count} matching frames; last: "
                                       f"{self.frames[-5:]}, close={self.close_code}")
                self._cond.wait(left)

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a frame with a fresh ref and return the reply carrying that ref."""
        self._ref += 1
        ref = f"r{self._ref}"
        self.send({"op": op, "ref": ref, **fields})
        return self.wait_for(lambda f: f.get("ref") == ref and f.get("op") != "event")[0]

    def hello(self, token: str, **fields: Any) -> dict[str, Any]:
        reply = self.request("hello", token=token, **fields)
        assert reply["op"] == "welcome", reply
        return reply

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [f for f in self.frames if f.get("op") == "event"
                    and (name is None or f.get("event") == name)]

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already closed
            self.ws.close()
        self.closed.wait(5)


def api(proc: Proc, method: str, path: str, key: str = "test-key-1",
        headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
    """Call the HTTP API of a frontend with a bearer key (none when ``key`` is empty)."""
    merged = {"Authorization": f"Bearer {key}"} if key else {}
    merged.update(headers or {})
    return requests.request(method, proc.url + path, headers=merged, timeout=10, **kw)


def wait_until(pred: Callable[[], Any], timeout: float = WAIT_S, interval: float = 0.1,
               sleep: Callable[[float], None] = time.sleep) -> Any:
    """Poll ``pred`` until it returns something truthy; raise on timeout. ``sleep``:
    ``gevent.sleep`` when greenlets of this process must run meanwhile (memory:// tests)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        sleep(interval)


class ResumingClient:
    """What herald.js does, for tests: remember the resume token and the highest durable
    id, reconnect with both, and count every durable id received across sockets."""

    def __init__(self, url: str, token: str, client: type[Client] = Client) -> None:
        self.token = token
        self.client = client
        self.sockets: list[Client] = []
        self.welcomes: list[dict[str, Any]] = []
        self.connect(url)

    @property
    def current(self) -> Client:
        return self.sockets[-1]

    def connect(self, url: str) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self.welcomes:
            fields = {"resume": self.welcomes[-1]["resume"], "last_id": self.last_id()}
        client = self.client(url)
        self.sockets.append(client)
        welcome = client.hello(self.token, **fields)
        self.welcomes.append(welcome)
        return welcome

    def durable_ids(self) -> list[int]:
        """Every durable id received, in arrival order, duplicates included."""
        return [f["id"] for c in self.sockets for f in list(c.frames)
                if f.get("op") == "event" and "id" in f]

    def last_id(self) -> int:
        return max(self.durable_ids(), default=0)

    def unique_in_order(self) -> list[int]:
        """The client library's view: first copy of each id, in arrival order."""
        seen: set[int] = set()
        out = []
        for i in self.durable_ids():
            if i not in seen:
                seen.add(i)
                out.append(i)
        return out


def in_threads(work: Callable[[int], None], n: int, timeout: float = WAIT_S) -> None:
    """Run ``work(0) … work(n-1)`` in n threads at once and wait for all of them."""
    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
