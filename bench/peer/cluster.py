"""Run the peer from Herald's venv: its virtualenv, two gunicorn instances, the emitter."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

from bench.common import (
    BROKER_URL,
    ROOT,
    Server,
    delete_exchange,
    free_port,
)
from bench.peer_base import PeerProcesses

VENV = ROOT / "bench" / ".venv-peer"
REQUIREMENTS = ROOT / "bench" / "requirements-peer.txt"
PYTHON = VENV / "bin" / "python"
#: The same gunicorn settings as Herald's frontend (service/server.py).
WORKER_CONNECTIONS = 20000


def ensure_venv() -> Path:
    """Create bench/.venv-peer and install requirements-peer.txt, again only when it changes."""
    stamp = VENV / ".requirements.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if not (VENV / "bin" / "pip").exists():
        print(f"bench: creating {VENV}", file=sys.stderr, flush=True)
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
    if not stamp.exists() or stamp.read_text().strip() != digest:
        print("bench: installing requirements-peer.txt into bench/.venv-peer", file=sys.stderr,
              flush=True)
        pip = [str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True, stdout=sys.stderr)
        stamp.write_text(digest + "\n")
    return PYTHON


class PeerInstance(Server):
    """One Flask-SocketIO instance: gunicorn master + one gevent worker."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        argv = [str(VENV / "bin" / "gunicorn"), "-k", "gevent", "-w", "1",
                "--worker-connections", str(WORKER_CONNECTIONS), "--backlog", "4096",
                "--keep-alive", "5", "--timeout", "0", "--graceful-timeout", "5",
                "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
                "--name", f"herald-bench-peer-{port}", "bench.peer.app:app"]
        super().__init__(argv, env, f"bench-peer-{env['PEER_CHANNEL']}-{port}.log", port=port,
                         ready_path="/healthz")

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=websocket"


class PeerCluster(PeerProcesses):
    """``instances`` peer servers on one per-run kombu channel, plus the emitter process."""

    def __init__(self, instances: int = 2, publisher: bool = True) -> None:
        ensure_venv()
        self.channel = f"herald_bench_peer_{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '')}",
                    "PEER_CHANNEL": self.channel, "PEER_MQ_URL": BROKER_URL,
                    "PYTHONPATH": str(ROOT)}
        self.env.pop("VIRTUAL_ENV", None)
        super().__init__()
        self.start_servers([PeerInstance(self.env, free_port()) for _ in range(instances)],
                           [str(PYTHON), "-m", "bench.peer.publisher", "--channel",
                            self.channel] if publisher else None, self.env)

    def close(self) -> None:
        super().close()
        delete_exchange(self.channel)
