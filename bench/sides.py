"""The sides a comparison scenario measures, behind one interface: Herald, the Flask-SocketIO
peer (bench/peer/) and the Node.js socket.io peer (bench/peer_node/), and ``--side``.

``--side`` takes one or more of ``herald``, ``peer`` (Flask-SocketIO), ``node``, or ``all``
(``both`` is its old name, from when there were two sides). Without it a full run measures
every side, and ``--smoke`` Herald and the Flask-SocketIO peer: the Node peer needs Redis and
``npm ci``, which CI's smoke does not set up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from bench.common import ROOT, Role, bench_env, delete_exchange, free_port, stop_all

#: The sides, in the order they are started and take turns (and the tables' column order).
SIDES = ("herald", "peer", "node")
#: What ``--side`` takes besides a side's name.
ALL = ("all", "both")
#: The sides of ``--smoke`` when ``--side`` is not given.
SMOKE_SIDES = ("herald", "peer")


def add_side_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--side", nargs="+", choices=(*ALL, *SIDES), default=None,
                   help="the sides to measure: herald, peer (Flask-SocketIO), node (socket.io "
                        "on Node), or all (both: the same); default all, --smoke herald peer")


def chosen_sides(side: list[str] | None, smoke: bool) -> list[str]:
    """The side names ``--side`` asks for, in SIDES order."""
    if not side:
        return list(SMOKE_SIDES if smoke else SIDES)
    if set(side) & set(ALL):
        return list(SIDES)
    return [s for s in SIDES if s in side]


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
        stop_all(self.frontends)
        from service.store.db import drop_database

        drop_database(self.env["HERALD_DATABASE_URL"])
        delete_exchange(self.env["HERALD_EXCHANGE"], self.env["HERALD_TASK_QUEUE"])


class _ClusterSide:
    """A peer's cluster (``PeerProcesses``) behind the Side interface; Socket.IO for both."""

    protocol = "socketio"
    cluster: Any

    @property
    def ws_urls(self) -> list[str]:
        return list(self.cluster.ws_urls)

    def auth_args(self) -> list[str]:
        return []

    def server_pids(self) -> list[int]:
        return list(self.cluster.server_pids())

    def publish_ticks(self, messages: int, rate: float | None, group: str | None) -> None:
        self.cluster.publish(messages, rate, group)

    def close(self) -> None:
        self.cluster.close()


class PeerSide(_ClusterSide):
    """The Flask-SocketIO peer (bench/peer/) behind the same interface."""

    name = "peer"

    def __init__(self, instances: int = 2, publisher: bool = True) -> None:
        from bench.peer.cluster import PeerCluster

        self.cluster = PeerCluster(instances, publisher)

    def worker_pid(self) -> int:
        """The process holding the sockets of the first instance (its gunicorn worker)."""
        return int(self.cluster.servers[0].worker_pid())


class NodeSide(_ClusterSide):
    """The Node.js socket.io peer (bench/peer_node/): the same Socket.IO protocol as the
    Flask-SocketIO peer, so the same load generator mode."""

    name = "node"

    def __init__(self, instances: int = 2, publisher: bool = True) -> None:
        from bench.peer_node.cluster import NodeCluster

        self.cluster = NodeCluster(instances, publisher)

    def worker_pid(self) -> int:
        """The process holding the sockets of the first instance (node itself)."""
        return int(self.cluster.servers[0].popen.pid)


def start_side(name: str, instances: int = 2, publisher: bool = True) -> Side:
    """One side by its ``--side`` name, with ``instances`` servers."""
    if name == "herald":
        return HeraldCluster(frontends=instances)
    if name == "peer":
        return PeerSide(instances, publisher)
    return NodeSide(instances, publisher)


def delayed_herald(write_delay_ms: int) -> HeraldCluster:
    """Herald with ``HERALD_WRITE_DELAY_MS`` (the write delay's CPU/latency curve)."""
    side = HeraldCluster(env={**bench_env(), "HERALD_WRITE_DELAY_MS": str(write_delay_ms)})
    side.name = f"Herald wd{write_delay_ms}"
    return side


@contextlib.contextmanager
def started_sides(names: list[str], publisher: bool = True,
                  write_delays: Sequence[int] = ()) -> Iterator[list[Side]]:
    """The named sides (two instances each), started in that order, then Herald once per
    write delay; whichever were started are closed afterwards, whatever happens."""
    sides: list[Side] = []
    try:
        for name in names:
            sides.append(start_side(name, publisher=publisher))
        for ms in write_delays:
            sides.append(delayed_herald(ms))
        yield sides
    finally:
        for side in sides:
            side.close()
