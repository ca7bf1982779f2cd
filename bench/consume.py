"""The consume path alone: what one AMQP message costs a frontend's consumer, against the
floor of being woken for one small TCP message at all.

    .venv/bin/python -m bench.consume               # 3 runs, 3,000 messages per phase
    .venv/bin/python -m bench.consume --runs 1 --messages 600

A child process patched with gevent, as a frontend is, runs one ``BusConsumer`` (the
frontend's consumer loop, ``service/bus/amqp_consumer.py``) whose ``on_batch`` only counts;
this process publishes to its exchange through RabbitMQ. Two phases:

- lone:  messages one at a time at 600/s, so each one wakes the consumer by itself
- burst: the same number published back to back (a backlog: the consumer takes batches)

The floor is a second gevent child doing the least a process can do for such a message: a
greenlet blocked in ``recv`` on a loopback TCP socket, to which this process writes
messages of the same size at the same rate (one per write, then back to back). Each child
reports its own CPU (getrusage, user + kernel) from its first message to its last, minus
its idle rate measured before; the table shows µs per message, the floor, the consumer's
cost over the floor and the ratio.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

# bench.common imports requests (and ssl): the child must patch with gevent before that
MESSAGES = 3000
RATE_PER_S = 600.0
IDLE_S = 2.0
WAIT_S = 60.0
#: A typical bus message: one event envelope of about this many bytes.
BODY = b'["fe-1","event",{"group":"room","scope":"default"},"job.progress",' \
       b'{"pct":42,"note":"' + b"x" * 120 + b'"},null,1764680000.0,"id-1"]'
PHASES = ("lone", "burst")


def _child(kind: str, where: str, count: int) -> None:
    """The measured process: reports idle CPU per second, then CPU per message per phase."""
    from gevent import monkey

    monkey.patch_all()
    import resource

    import gevent
    from gevent.event import Event

    from bench.common import BROKER_URL

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    got = 0
    marks: dict[int, float] = {}
    want = {1, 1 + count, 2 + count, 2 + 2 * count}  # first and last of each phase
    done = Event()

    def seen(n: int) -> None:
        nonlocal got
        for _ in range(n):
            got += 1
            if got in want:
                marks[got] = cpu()
        if got >= 2 + 2 * count:
            done.set()

    if kind == "herald":
        from service.bus import BusConsumer

        ready = Event()
        consumer = BusConsumer(BROKER_URL, where, on_batch=lambda b: seen(len(b)),
                               on_ready=lambda _q, _f: ready.set())
        gevent.spawn(consumer.run)
        ready.wait(WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while not consumer.connected and time.monotonic() < deadline:
            gevent.sleep(0.01)  # on_ready runs just before consuming starts
    else:
        sock = socket.create_connection(("127.0.0.1", int(where)))

        def read() -> None:
            pending = 0
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                pending += len(chunk)
                seen(pending // len(BODY))
                pending %= len(BODY)

        gevent.spawn(read)
    a = cpu()
    gevent.sleep(IDLE_S)
    idle = (cpu() - a) / IDLE_S
    print("ready", flush=True)
    done.wait(WAIT_S)
    print(json.dumps({"idle": idle, "marks": {str(k): v for k, v in marks.items()}}),
          flush=True)


def _phase_cost(marks: dict[str, float], idle: float, first: int, last: int,
                seconds: float, n: int) -> float:
    spent = marks[str(last)] - marks[str(first)] - idle * seconds
    return max(0.0, spent) / n * 1e6


def run_once(messages: int) -> dict[str, float]:
    from bench.common import BROKER_URL, ROOT, delete_exchange
    from service.bus import BusPublisher

    exchange = f"herald_bench_consume_{uuid.uuid4().hex[:8]}"
    server = socket.create_server(("127.0.0.1", 0))
    out: dict[str, float] = {}
    try:
        for kind in ("herald", "floor"):
            where = exchange if kind == "herald" else str(server.getsockname()[1])
            child = subprocess.Popen(
                [sys.executable, "-m", "bench.consume", "--child", kind, where, str(messages)],
                cwd=ROOT, stdout=subprocess.PIPE, text=True)
            publisher: BusPublisher | None = None
            peer: socket.socket | None = None
            try:
                if kind == "floor":
                    peer, _ = server.accept()
                assert child.stdout is not None
                assert child.stdout.readline().strip() == "ready"
                if peer is None:
                    publisher = BusPublisher(BROKER_URL, exchange)
                    send: Callable[[bytes], object] = publisher.publish
                else:
                    send = peer.sendall
                seconds: dict[str, float] = {}
                for phase in PHASES:
                    send(BODY)  # the phase's first: its CPU mark
                    time.sleep(0.3)
                    start = time.monotonic()
                    for i in range(messages):
                        if phase == "lone":
                            pause = start + (i + 1) / RATE_PER_S - time.monotonic()
                            if pause > 0:
                                time.sleep(pause)
                        send(BODY)
                    seconds[phase] = time.monotonic() - start
                    time.sleep(0.3)
                line = child.stdout.readline()
                if not line:
                    raise RuntimeError(f"the {kind} child exited without its report")
                report = json.loads(line)
            finally:
                if publisher is not None:
                    publisher.close()
                if peer is not None:
                    peer.close()
                child.kill()
                child.wait()
            marks, idle = report["marks"], report["idle"]
            if len(marks) < 4:
                raise RuntimeError(f"the {kind} child got {len(marks)} of its 4 marks in "
                                   f"{WAIT_S:.0f} s: messages lost or late")
            out[f"{kind}_lone"] = _phase_cost(marks, idle, 1, 1 + messages,
                                              seconds["lone"], messages)
            out[f"{kind}_burst"] = _phase_cost(marks, idle, 2 + messages, 2 + 2 * messages,
                                               seconds["burst"], messages)
    finally:
        server.close()
        delete_exchange(exchange)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=MESSAGES, help="per phase")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="300 messages, 1 run")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return
    from bench.common import fmt, print_table

    if args.smoke:
        args.messages, args.runs = 300, 1
    results = [run_once(args.messages) for _ in range(args.runs)]
    rows = []
    for phase in PHASES:
        herald = statistics.median(r[f"herald_{phase}"] for r in results)
        floor = statistics.median(r[f"floor_{phase}"] for r in results)
        rows.append([phase, fmt(herald), fmt(floor), fmt(herald - floor),
                     f"{herald / floor:.2f}" if floor else "-"])
    print_table(f"consume: µs of CPU per AMQP message ({len(BODY)} B bodies, {args.messages} "
                f"per phase, lone at {RATE_PER_S:.0f}/s), medians of {args.runs} runs",
                ["phase", "consumer µs", "floor µs", "over the floor µs", "ratio"], rows)


if __name__ == "__main__":
    main()
