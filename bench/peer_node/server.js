"use strict";
// One instance of the bench's Node peer: socket.io 4.8 on Node's http server, rooms across
// instances through the Redis Streams adapter, connection state recovery on.
//
//     PEER_STREAM=name node bench/peer_node/server.js PORT
//
// Listens on 127.0.0.1:PORT; GET /healthz answers once Redis is connected. A client may pass
// ?group=NAME to be put in that room on connect: the equivalent of the Flask-SocketIO peer's
// connect handler (bench/peer/app.py) and of Herald's hello + join.

const http = require("node:http");
const { Server } = require("socket.io");
const { SERVER_OPTIONS, connectAdapter } = require("./options");

async function main() {
  const port = Number(process.argv[2]);
  if (!Number.isInteger(port) || port <= 0) {
    throw new Error(`usage: node server.js PORT (got ${process.argv[2]})`);
  }
  const { adapter } = await connectAdapter();
  const httpServer = http.createServer((req, res) => {
    const ok = req.url === "/healthz";
    res.writeHead(ok ? 200 : 404, { "content-type": "application/json" });
    res.end(ok ? '{"ok":true}' : '{"error":"not found"}');
  });
  const io = new Server(httpServer, { ...SERVER_OPTIONS, adapter });
  io.on("connection", (socket) => {
    const group = socket.handshake.query.group;
    if (typeof group === "string" && group) {
      socket.join(group);
    }
  });
  httpServer.listen({ port, host: "127.0.0.1", backlog: 4096 });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
