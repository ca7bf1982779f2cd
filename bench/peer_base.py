"""What both peers' clusters share: their servers, and a publisher process driven by one
JSON command per phase on stdin, answering one JSON line (bench/peer/publisher.py,
bench/peer_node/publisher.js)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from bench.common import ROOT, WAIT_S, child_setup, stop_all


class PeerProcesses:
    """A peer's server instances and its publisher; ``who`` names it in errors."""

    who = "the peer"

    def __init__(self) -> None:
        self.servers: list[Any] = []
        self.publisher: subprocess.Popen[str] | None = None

    def start_servers(self, servers: list[Any], cmd: list[str] | None,
                      env: dict[str, str]) -> None:
        """Wait for each server, then start the publisher (``cmd``, if any); stop all
        that was started when any of it fails."""
        self.servers = servers
        try:
            for s in self.servers:
                s.wait_ready()
            if cmd is not None:
                self.publisher = subprocess.Popen(
                    cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    text=True, preexec_fn=child_setup)
                self._read()
        except BaseException:
            self.close()
            raise

    @property
    def ws_urls(self) -> list[str]:
        return [s.ws_url for s in self.servers]

    def server_pids(self) -> list[int]:
        return [pid for s in self.servers for pid in s.pids()]

    def _read(self) -> dict[str, Any]:
        assert self.publisher is not None and self.publisher.stdout is not None
        line = self.publisher.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.who}'s publisher exited")
        return dict(json.loads(line))

    def publish(self, messages: int, rate: float | None, room: str | None) -> dict[str, Any]:
        """Emit `messages` ticks at `rate`/s (None: flat out) to a room or all, then `end`."""
        assert self.publisher is not None and self.publisher.stdin is not None
        self.publisher.stdin.write(json.dumps({"messages": messages, "rate": rate,
                                               "room": room}) + "\n")
        self.publisher.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Stop the publisher and the servers (a subclass removes its run's state after)."""
        if self.publisher is not None:
            if self.publisher.stdin is not None:
                self.publisher.stdin.close()
            try:
                self.publisher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.publisher.kill()
                self.publisher.wait(timeout=WAIT_S)
        stop_all(self.servers)
