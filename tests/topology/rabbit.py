"""A RabbitMQ cluster of the test run's own: three nodes on this machine, started, killed,
restarted and removed by the tests.

Each node has its own node name (``herald_<ns>_<i>@localhost``), AMQP and distribution ports,
data and log directories under one temporary folder, and the cluster's own Erlang cookie
(in a ``HOME`` of its own), so nothing reaches the machine's RabbitMQ. Every node is started
in a process group of its own and stopped by that group's PID only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.support import free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
#: Seconds a node may take to boot (about 7 here) or to join the cluster.
BOOT_TIMEOUT_S = 90
CTL_TIMEOUT_S = 60


class Node:
    """One RabbitMQ node of a ``RabbitCluster``."""

    def __init__(self, base: Path, name: str, addresses: tuple[str, ...]) -> None:
        self.name = name
        self.port = free_port()
        self.dist_port = free_port()
        self.addresses = addresses
        self.dir = base / name.split("@", 1)[0]
        self.dir.mkdir(parents=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, address: str = "127.0.0.1") -> str:
        return f"amqp://guest:guest@{address}:{self.port}//"

    def env(self, cookie_home: Path) -> dict[str, str]:
        d = self.dir
        return {**os.environ, "HOME": str(cookie_home), "RABBITMQ_NODENAME": self.name,
                "RABBITMQ_DIST_PORT": str(self.dist_port), "RABBITMQ_BASE": str(d),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"), "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_PID_FILE": str(d / "pid"),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins")}

    def write_config(self) -> None:
        listeners = "\n".join(f"listeners.tcp.{i} = {addr}:{self.port}"
                              for i, addr in enumerate(self.addresses, 1))
        # guest from other hosts (the network namespaces); a minority pauses on a partition
        (self.dir / "rabbitmq.conf").write_text(
            f"{listeners}\nloopback_users = none\n"
            "cluster_partition_handling = pause_minority\n")
        (self.dir / "enabled_plugins").write_text("[].\n")  # no plugins: a faster boot


class RabbitCluster:
    """Three (``size``) nodes joined into one cluster; ``urls()`` is the failover list."""

    def __init__(self, size: int = 3, addresses: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="herald-rmq-"))
        self.home = self.base / "home"
        self.home.mkdir()
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        tag = uuid.uuid4().hex[:8]
        self.nodes = [Node(self.base, f"herald_{tag}_{i}@localhost", addresses)
                      for i in range(1, size + 1)]

    def urls(self, address: str = "127.0.0.1", first: int = 0) -> str:
        """The ``;``-separated URL list, starting at node ``first``."""
        order = self.nodes[first:] + self.nodes[:first]
        return ";".join(node.url(address) for node in order)

    def ctl(self, node: Node, *args: str, check: bool = True) -> str:
        done = subprocess.run([CTL, "-n", node.name, *args], env=node.env(self.home),
                              capture_output=True, text=True, timeout=CTL_TIMEOUT_S + 30)
        if check and done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {node.name}: "
                               f"{done.stdout}{done.stderr}")
        return done.stdout

    def start_node(self, node: Node) -> None:
        node.write_config()
        log = open(node.dir / "server.out", "ab")  # noqa: SIM115 - the child owns it
        node.proc = subprocess.Popen([SERVER], env=node.env(self.home), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def await_node(self, node: Node) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while True:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited: see {node.dir / 'server.out'}")
            done = subprocess.run([CTL, "-n", node.name, "await_startup", "--timeout", "5"],
                                  env=node.env(self.home), capture_output=True, timeout=60)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} did not boot: see {node.dir}")
            time.sleep(0.5)

    def start(self) -> RabbitCluster:
        """Boot every node at once, then join the others to the first."""
        for node in self.nodes:
            self.start_node(node)
        for node in self.nodes:
            self.await_node(node)
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", seed.name)
            self.ctl(node, "start_app")
        for node in self.nodes:
            self.ctl(node, "await_startup", "--timeout", str(CTL_TIMEOUT_S))
        return self

    def running_nodes(self, via: Node) -> list[str]:
        """The cluster's running nodes, as ``via`` sees them."""
        status = json.loads(self.ctl(via, "cluster_status", "--formatter", "json"))
        return sorted(status["running_nodes"])

    def kill(self, node: Node) -> None:
        """SIGKILL one node (a crash): the process group this cluster started for it."""
        if node.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=30)

    def restart(self, node: Node) -> None:
        """Start a killed node again on its own data: it rejoins the cluster."""
        self.start_node(node)
        self.await_node(node)

    def stop(self) -> None:
        """Kill every node this cluster started, then remove its folder."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGTERM)
                try:
                    node.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(node.proc.pid, signal.SIGKILL)
                    node.proc.wait(timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)
