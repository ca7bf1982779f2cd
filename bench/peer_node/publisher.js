"use strict";
// The Node peer's emitter: a socket.io Server with no HTTP server and no clients, on the same
// Redis Streams adapter as the instances, so that its `io.emit` is an XADD the instances read
// (@socket.io/redis-emitter speaks the PUB/SUB adapter's protocol, which a streams-adapter
// server does not read). One JSON command per stdin line, as bench/peer/publisher.py takes:
//
//     {"messages": 200, "rate": 50, "room": null}  ->  `messages` ticks, then `end` to all;
//                                                      prints {"published": n, "elapsed": s}
//
// Each tick carries its emit time in `ts` (wall clock, sub-millisecond), for latency.

const readline = require("node:readline");
const { Server } = require("socket.io");
const { SERVER_OPTIONS, connectAdapter } = require("./options");

const PAD = "x".repeat(64);
const nowS = () => (performance.timeOrigin + performance.now()) / 1000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

async function publish(io, cmd) {
  const messages = Number(cmd.messages);
  const rate = cmd.rate ? Number(cmd.rate) : null;
  const t0 = performance.now();
  for (let i = 0; i < messages; i++) {
    (cmd.room ? io.to(cmd.room) : io).emit("tick", { i, pad: PAD, ts: nowS() });
    if (rate) {
      await sleep(Math.max(0, t0 + ((i + 1) * 1000) / rate - performance.now()));
    } else {
      // flat out, but each XADD leaves before the next tick is stamped (as a synchronous
      // publisher's would), so that `ts` is the time the message left
      await nextTurn();
    }
  }
  io.emit("end", { ts: nowS() });
  return { published: messages, elapsed: (performance.now() - t0) / 1000 };
}

async function main() {
  const { client, adapter } = await connectAdapter();
  const io = new Server({ ...SERVER_OPTIONS, adapter });
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (line.trim()) {
      process.stdout.write(`${JSON.stringify(await publish(io, JSON.parse(line)))}\n`);
    }
  }
  await sleep(100); // let the last XADD leave
  await client.quit();
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
