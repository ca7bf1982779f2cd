"""Run the Node peer from Herald's venv: node_modules, two instances, the publisher, cleanup."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import ROOT, Server, free_port
from bench.peer_base import PeerProcesses

DIR = ROOT / "bench" / "peer_node"
LOCK = DIR / "package-lock.json"
MODULES = DIR / "node_modules"
#: Redis for the adapter (its stream, PUB/SUB channels and recovery sessions).
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_TIMEOUT_S = 5.0
#: Keys SCAN returns per call while a run's session keys are removed.
SCAN_COUNT = 1000


def ensure_node_modules() -> Path:
    """`npm ci` in bench/peer_node on first use, again only when package-lock.json changes
    (a stamp in node_modules/, as compose/bootstrap.sh keeps for tests/js)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: the Node peer needs {tool} (Node 18 or later) on PATH; install "
                     "it, or leave the side out (--side herald peer)")
    stamp = MODULES / ".package-lock.sha256"
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != digest:
        print("bench: npm ci in bench/peer_node (socket.io, pinned by its package-lock.json)",
              file=sys.stderr, flush=True)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=DIR,
                       check=True, stdout=sys.stderr)
        stamp.write_text(digest + "\n")
    return MODULES


class Redis:
    """Just enough of RESP for the bench's cleanup (no client library in Herald's venv)."""

    def __init__(self, url: str = REDIS_URL) -> None:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        try:
            self.sock = socket.create_connection((host, port), timeout=REDIS_TIMEOUT_S)
        except OSError as exc:
            sys.exit(f"bench: the Node peer needs Redis at {url} ({exc}); start it, set "
                     "BENCH_REDIS_URL, or leave the side out (--side herald peer)")
        self.reader = self.sock.makefile("rb")

    def __call__(self, *args: str | int) -> Any:
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self) -> Any:
        line = self.reader.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.reader.read(n + 2)[:-2].decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError(f"redis: unexpected reply {line!r}")

    def delete_run(self, stream: str) -> int:
        """Delete a run's stream and its recovery sessions; return how many keys went."""
        gone = int(self("DEL", stream))
        cursor = "0"
        while True:
            cursor, keys = self("SCAN", cursor, "MATCH", f"{stream}:session:*",
                                "COUNT", SCAN_COUNT)
            if keys:
                gone += int(self("DEL", *keys))
            if cursor == "0":
                return gone

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class NodeInstance(Server):
    """One socket.io instance: a single node process (Node serves from one thread)."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        super().__init__(["node", str(DIR / "server.js"), str(port)], env,
                         f"bench-{env['PEER_STREAM']}-{port}.log", port=port,
                         ready_path="/healthz")

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=websocket"


class NodeCluster(PeerProcesses):
    """``instances`` node servers on one per-run Redis stream, plus the publisher process.

    ``close`` stops them and deletes the stream and the sessions that connection state
    recovery stored for the sockets that went away."""

    who = "the Node peer"

    def __init__(self, instances: int = 2, publisher: bool = True) -> None:
        ensure_node_modules()
        Redis().close()  # a clear error now if Redis is not there
        self.stream = f"herald_bench_node_{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, "PEER_STREAM": self.stream, "PEER_REDIS_URL": REDIS_URL}
        super().__init__()
        self.start_servers([NodeInstance(self.env, free_port()) for _ in range(instances)],
                           ["node", str(DIR / "publisher.js")] if publisher else None, self.env)

    def close(self) -> None:
        super().close()
        redis = Redis()
        try:
            redis.delete_run(self.stream)
        finally:
            redis.close()
