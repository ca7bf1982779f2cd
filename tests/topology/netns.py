"""Hosts of the test's own: network namespaces joined to this one by veth links.

Each host is a namespace (``ip netns add``) with its loopback up and one veth pair per link
(broker, database, clients...), each link a /24 of its own in 10.X.0.0/16 where X is picked
per run among the second octets no interface here uses yet, and held with a lock file for
the network's life, so test processes running side by side never pick the same one (the
kernel drops the lock with the process, whatever happens). A link can be cut (its
root-side end down: packets vanish, no process is told, as when a cable is pulled), healed,
or made to lose packets at random in both directions (nftables in the host's namespace;
this kernel has no netem, so a delay comes from ``relay.py``). Nothing is routed anywhere else:
no default route, no forwarding, so no traffic leaves these namespaces and the loopback.
Everything is removed by ``destroy()`` (deleting a namespace deletes its veth ends).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import subprocess
import uuid
from dataclasses import dataclass, field
from typing import IO

#: Where the lock file that holds a network's second octet lives while the network does.
LOCK_DIR = "/tmp"


def ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


def nft(args: list[str], netns: str, stdin: str | None = None, check: bool = True) -> None:
    cmd = ["ip", "netns", "exec", netns, "nft", *args]
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


@dataclass
class Link:
    """One veth pair between this namespace (``root_*``) and a host (``host_*``)."""

    host: str
    root_dev: str
    host_dev: str
    root_addr: str
    host_addr: str

    def cut(self) -> None:
        ip("link", "set", self.root_dev, "down")

    def heal(self) -> None:
        ip("link", "set", self.root_dev, "up")

    def drop(self, loss_pct: int) -> None:
        """Lose ``loss_pct`` % of the packets crossing this link, either way, at random:
        nftables in the host's namespace (this kernel has no netem), so the rule lives
        and dies with the namespace."""
        table = f"herald_{self.host_dev}"
        rules = (f"table inet {table} {{\n"
                 f"  chain inbound {{ type filter hook input priority 0; policy accept;\n"
                 f"    iifname {self.host_dev} numgen random mod 100 < {loss_pct} drop\n  }}\n"
                 f"  chain outbound {{ type filter hook output priority 0; policy accept;\n"
                 f"    oifname {self.host_dev} numgen random mod 100 < {loss_pct} drop\n  }}\n"
                 f"}}\n")
        nft(["-f", "-"], self.host, stdin=rules)

    def restore(self) -> None:
        """Undo ``drop``."""
        nft(["delete", "table", "inet", f"herald_{self.host_dev}"], self.host, check=False)


@dataclass
class Host:
    """A network namespace and its links, by name (``links["broker"]``)."""

    netns: str
    links: dict[str, Link] = field(default_factory=dict)

    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside this host."""
        return ["ip", "netns", "exec", self.netns]


def _used_second_octets() -> set[int]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                         check=True).stdout
    return {int(m) for m in re.findall(r"inet 10\.(\d+)\.", out)}


def _claim_octet() -> tuple[int, IO[bytes]]:
    """A second octet no interface uses and no other test process holds, with its lock."""
    free = sorted(set(range(100, 250)) - _used_second_octets())
    random.shuffle(free)
    for octet in free:
        path = os.path.join(LOCK_DIR, f"herald-netns-10.{octet}.lock")
        lock = open(path, "ab")  # noqa: SIM115 - closed by Network.destroy
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # the holder before us unlinks the file before it unlocks: a lock on that
            # unlinked file holds nothing, so it must still be the file at the path
            if os.fstat(lock.fileno()).st_ino == os.stat(path).st_ino:
                return octet, lock
        except (BlockingIOError, FileNotFoundError):
            pass
        lock.close()
    raise RuntimeError("no free 10.X.0.0/16 for the test's network namespaces")


class Network:
    """The hosts of one test run; ``destroy()`` removes all of them."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.octet, self._octet_lock = _claim_octet()
        self.hosts: list[Host] = []
        self._links = 0

    def host(self, name: str) -> Host:
        host = Host(f"herald-{self.tag}-{name}")
        ip("netns", "add", host.netns)
        self.hosts.append(host)
        ip("link", "set", "lo", "up", netns=host.netns)
        return host

    def link(self, host: Host, kind: str) -> Link:
        """A new veth pair to ``host`` with a /24 of its own; returns it up."""
        self._links += 1
        n = self._links
        root_dev, host_dev = f"hr{self.tag}{n}r", f"hr{self.tag}{n}h"
        root_addr, host_addr = f"10.{self.octet}.{n}.1", f"10.{self.octet}.{n}.2"
        ip("link", "add", root_dev, "type", "veth", "peer", "name", host_dev,
           "netns", host.netns)
        ip("addr", "add", f"{root_addr}/24", "dev", root_dev)
        ip("link", "set", root_dev, "up")
        ip("addr", "add", f"{host_addr}/24", "dev", host_dev, netns=host.netns)
        ip("link", "set", host_dev, "up", netns=host.netns)
        link = Link(host.netns, root_dev, host_dev, root_addr, host_addr)
        host.links[kind] = link
        return link

    def root_addresses(self, kind: str) -> tuple[str, ...]:
        """This namespace's ends of every ``kind`` link (what a server here listens on)."""
        return tuple(h.links[kind].root_addr for h in self.hosts if kind in h.links)

    def destroy(self) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, timeout=30)
        self.hosts.clear()
        if not self._octet_lock.closed:  # the octet is free again
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._octet_lock.name)
            self._octet_lock.close()
