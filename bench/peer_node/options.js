"use strict";
// What the Node peer's instances (server.js) and its publisher (publisher.js) share: the
// Redis client, the Redis Streams adapter on this run's stream, and the server options.

const { createClient } = require("redis");
const { createAdapter } = require("@socket.io/redis-streams-adapter");

/** The Socket.IO server options of every process: connection state recovery on (its
 * defaults: sessions kept 2 min after a disconnect, middlewares skipped on recovery). */
const SERVER_OPTIONS = { connectionStateRecovery: {}, serveClient: false };

/** A connected Redis client and the adapter factory on the per-run stream PEER_STREAM (also
 * the prefix of the adapter's PUB/SUB channels and of its session keys, so that the bench
 * can remove everything a run left: the stream and the `<stream>:session:*` keys). */
async function connectAdapter() {
  const stream = process.env.PEER_STREAM;
  if (!stream) {
    throw new Error("PEER_STREAM is not set (the per-run Redis stream name)");
  }
  const client = createClient({ url: process.env.PEER_REDIS_URL || "redis://127.0.0.1:6379" });
  client.on("error", (err) => console.error(`redis: ${err.message}`));
  await client.connect();
  const adapter = createAdapter(client, {
    streamName: stream,
    channelPrefix: stream,
    sessionKeyPrefix: `${stream}:session:`,
  });
  return { client, adapter };
}

module.exports = { SERVER_OPTIONS, connectAdapter };
