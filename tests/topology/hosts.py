"""The production topology on one machine, for the fault tests: a three-node RabbitMQ
cluster, a Postgres of the test's own, three frontends and a worker with beat, each on a
host of its own (a network namespace), and the clients here, in this namespace.

Every frontend host has three links (``broker``, ``db``, ``clients``), the worker's host
the first two, so one frontend's link to the broker, to Postgres, or to everything can be
cut while every process goes on running. Frontend ``i`` lists the broker nodes starting at
node ``i``, so each consumes from a different node. Frontend 0 reaches the nodes through
``relay.Relay``s, which can delay its broker traffic (``delay_broker``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

from tests.support import PYTHON, ROOT, Proc, api, free_port
from tests.topology.netns import Host, Network
from tests.topology.pg import PgPair
from tests.topology.rabbit import RabbitCluster
from tests.topology.relay import Relay

FRONTENDS = 3
#: A cut broker link is noticed after two heartbeats: short, so a 20 s cut shows.
BROKER_HEARTBEAT_S = 2


class Topology:
    """Everything one fault-test module runs on; ``close()`` removes all of it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.net = Network()
        self.rabbit: RabbitCluster | None = None
        self.pg: PgPair | None = None
        self.hosts: list[Host] = []
        self.frontends: list[Proc] = []
        self.procs: list[Proc] = []
        self.relays: list[Relay] = []

    def start(self) -> Topology:
        net = self.net
        self.hosts = [net.host(f"fe{i}") for i in range(FRONTENDS)]
        worker_host = net.host("wk")
        for host in [*self.hosts, worker_host]:
            net.link(host, "broker")
            net.link(host, "db")
        for host in self.hosts:
            net.link(host, "clients")
        # servers listen here and on the root ends of the links only
        self.rabbit = RabbitCluster(addresses=("127.0.0.1", *net.root_addresses("broker")))
        self.pg = PgPair(listen_addresses=",".join(("127.0.0.1", *net.root_addresses("db"))),
                         trusted_cidrs=(f"10.{net.octet}.0.0/16",), tag="faults")
        self.rabbit.start()
        self.relays = [Relay(self.hosts[0].links["broker"].root_addr, ("127.0.0.1", node.port))
                       for node in self.rabbit.nodes]
        self.pg.start()
        self._migrate()
        for i, host in enumerate(self.hosts):
            self.frontends.append(self.frontend(i, host))
        for role in ("worker", "beat"):
            self.procs.append(Proc(f"{role}-{worker_host.netns}", ["run", role],
                                   self.role_env(worker_host, first=0),
                                   prefix=worker_host.prefix()))
        return self

    def database_url(self, address: str = "127.0.0.1") -> str:
        assert self.pg is not None
        return (f"postgresql+psycopg://postgres@{address}:{self.pg.primary.port}"
                f"/herald_faults_{self.env['HERALD_NS']}")

    def broker_urls(self, host: Host, first: int) -> str:
        assert self.rabbit is not None
        if host is not self.hosts[0]:
            return self.rabbit.urls(host.links["broker"].root_addr, first)
        relays = self.relays[first:] + self.relays[:first]
        return ";".join(f"amqp://guest:guest@{r.address}:{r.port}//" for r in relays)

    def delay_broker(self, delay_s: float) -> None:
        """Delay frontend 0's broker traffic by ``delay_s`` each way (0: none)."""
        for relay in self.relays:
            relay.delay_s = delay_s

    def role_env(self, host: Host, first: int) -> dict[str, str]:
        return {**self.env,
                "HERALD_BROKER_URL": self.broker_urls(host, first),
                "HERALD_DATABASE_URL": self.database_url(host.links["db"].root_addr),
                "HERALD_BROKER_HEARTBEAT": str(BROKER_HEARTBEAT_S),
                "HERALD_TASK_QUEUE_TYPE": "quorum"}

    def frontend(self, i: int, host: Host) -> Proc:
        port = free_port()
        address = host.links["clients"].host_addr
        proc = Proc(f"fe{i}-{port}", ["run", "frontend", "--port", str(port)],
                    {**self.role_env(host, first=i), "HERALD_HOST": address},
                    port=port, prefix=host.prefix(), host=address)
        self.procs.append(proc)
        proc.wait_ready()
        return proc

    def _migrate(self) -> None:
        subprocess.run([PYTHON, str(ROOT / "manage.py"), "db", "upgrade"], cwd=ROOT,
                       check=True, capture_output=True, timeout=120,
                       env={**os.environ, **self.env,
                            "HERALD_DATABASE_URL": self.database_url()})

    def frontend_ids(self, via: Proc) -> set[str]:
        return {f["id"] for f in api(via, "GET", "/api/frontends").json()}

    def close(self) -> None:
        procs = list(reversed(self.procs))
        for proc in procs:  # all drain at once
            with contextlib.suppress(Exception):
                proc.terminate()
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.finish_stop(timeout=10)
        for relay in self.relays:
            relay.close()
        if self.rabbit is not None:
            self.rabbit.stop()
        if self.pg is not None:
            self.pg.cleanup()
        self.net.destroy()


@contextlib.contextmanager
def topology(env: dict[str, str]) -> Iterator[Topology]:
    topo = Topology(env)
    try:
        yield topo.start()
    finally:
        topo.close()

