"""The peer's write-only emitter (runs in bench/.venv-peer): one JSON command per stdin line.

    {"messages": 200, "rate": 50, "room": null}  →  emits `messages` ticks, then `end` to all,
                                                     prints {"published": n, "elapsed": s}

Each tick carries its emit time in ``ts`` (what Herald's envelope carries), for latency.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import socketio


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672//")
    p.add_argument("--channel", required=True)
    args = p.parse_args()
    mgr = socketio.KombuManager(args.url, channel=args.channel, write_only=True)
    mgr.emit("warmup", {}, to="bench-nobody", namespace="/")  # connect and declare first
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        messages, rate, room = int(cmd["messages"]), cmd.get("rate"), cmd.get("room")
        t0 = time.monotonic()
        for i in range(messages):
            mgr.emit("tick", {"i": i, "pad": "x" * 64, "ts": time.time()}, to=room,
                     namespace="/")
            if rate:
                time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
        mgr.emit("end", {"ts": time.time()}, namespace="/")
        print(json.dumps({"published": messages, "elapsed": time.monotonic() - t0}),
              flush=True)


if __name__ == "__main__":
    main()
