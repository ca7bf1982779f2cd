"""The floor: the CPU one ``send()`` of Herald's fan-out frame costs per socket on loopback.

    .venv/bin/python -m bench.floor --sockets 1000 --rounds 100 --rate 100

This process accepts N loopback TCP connections (TCP_NODELAY, as gunicorn's listener sets
for Herald's frontends) from a reader process that only drains them, then writes the bytes
Herald writes for one fan-out tick (``ws_text_frame(event_frame(...))`` of the same
envelope) to each socket, ``--rounds`` times at ``--rate`` rounds/s: each write one
``socket.send`` on a non-blocking socket, a Python loop over the sockets, as Herald's fast
path (service/delivery/conn.py) writes a frame. Reported (one JSON line): this thread's user
and system CPU per send (getrusage RUSAGE_THREAD), the frame's size, and short writes (a
send that did not take the whole frame; none is expected while the reader keeps up).

No server, no event loop, no framework: what is left is the kernel's loopback TCP path (the
receiving socket's side of it too, which runs in the sender's system call) and a Python
method call. ``bench.fanout`` measures it in each run and divides each side's server CPU per
delivery by it.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT, WAIT_S, child_setup, raise_nofile

#: Listen backlog: every reader connection may be pending at once.
BACKLOG = 4096
READ_CHUNK = 65536


def herald_frame() -> bytes:
    """The bytes a Herald frontend writes to each socket for one of bench.fanout's ticks."""
    from service.core.envelope import Target, event_frame, make_envelope, raw_json, ws_text_frame

    env = make_envelope("bench", Target.all(), "tick", raw_json({"i": 100, "pad": "x" * 64}))
    return ws_text_frame(event_frame(env))


def thread_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime, usage.ru_stime


def measure(n: int, rounds: int, rate: float) -> dict[str, float]:
    """Send the frame to `n` loopback sockets `rounds` times; CPU per send, µs."""
    frame = herald_frame()
    with socket.socket() as listener:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(BACKLOG)
        listener.settimeout(WAIT_S)
        port = listener.getsockname()[1]
        reader = subprocess.Popen(
            [sys.executable, "-m", "bench.floor", "--read", str(port), "--sockets", str(n),
             "--bytes", str(n * rounds * len(frame))],
            cwd=ROOT, stdout=subprocess.PIPE, text=True, preexec_fn=child_setup)
        conns: list[socket.socket] = []
        try:
            for _ in range(n):
                conn, _addr = listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setblocking(False)
                conns.append(conn)
            short = 0
            size = len(frame)
            (user0, sys0), t0 = thread_cpu(), time.monotonic()
            for r in range(rounds):
                for conn in conns:
                    try:
                        if conn.send(frame) != size:
                            short += 1
                    except BlockingIOError:
                        short += 1
                time.sleep(max(0.0, t0 + (r + 1) / rate - time.monotonic()))
            user1, sys1 = thread_cpu()
            out, _ = reader.communicate(timeout=WAIT_S)
        finally:
            for conn in conns:
                conn.close()
            if reader.poll() is None:
                reader.kill()
                reader.wait()
    sends = n * rounds
    user_us, sys_us = (user1 - user0) / sends * 1e6, (sys1 - sys0) / sends * 1e6
    received = json.loads(out)["received"] if out.strip() else 0
    return {"sockets": n, "frame bytes": size, "user µs/send": user_us,
            "sys µs/send": sys_us, "µs/send": user_us + sys_us,
            "short writes": short, "not received": sends * size - received}


def read(port: int, n: int, total: int) -> None:
    """The reader: `n` connections to `port`, drained until `total` bytes came (or WAIT_S)."""
    raise_nofile()
    sel = selectors.DefaultSelector()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) for _ in range(n)]
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    received = 0
    deadline = time.monotonic() + WAIT_S
    while received < total and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            sock: Any = key.fileobj
            try:
                chunk = sock.recv(READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(sock)
            received += len(chunk)
    print(json.dumps({"received": received}), flush=True)
    for s in socks:
        s.close()


def run_measure(n: int, rounds: int, rate: float) -> dict[str, float]:
    """``measure`` in a process of its own (its own file limit, nothing else on its thread)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.floor", "--sockets", str(n), "--rounds", str(rounds),
         "--rate", str(rate)], cwd=ROOT, capture_output=True, text=True, check=True,
        timeout=WAIT_S * 2, preexec_fn=child_setup)
    return dict(json.loads(out.stdout))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sockets", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=100, help="sends per socket")
    p.add_argument("--rate", type=float, default=100.0, help="rounds per second")
    p.add_argument("--read", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.read:
        read(args.read, args.sockets, args.bytes)
        return
    raise_nofile()
    print(json.dumps(measure(args.sockets, args.rounds, args.rate)), flush=True)


if __name__ == "__main__":
    main()
