// herald.js's SSE transport: the parser, the fallback when WebSockets never open, resume
// with Last-Event-ID, joins and leaves that reopen the stream, ops that need a socket, the
// probe back to WebSocket, and the close codes of a stream.
import { afterEach, beforeEach, describe, it, mock } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "@herald/client";
import { SseParser, sseUrlFor } from "../../service/static/herald-sse.js";
import { FakeClock, fakeFetch, fakeSockets, jwt } from "./fakes.js";

let clock, ws, net, restore;

beforeEach(() => {
  clock = new FakeClock().install();
  ws = fakeSockets();
  net = fakeFetch();
  restore = [mock.method(Math, "random", () => 0.5), mock.method(console, "warn", () => {})];
});
afterEach(() => { clock.uninstall(); restore.forEach((m) => m.mock.restore()); });

const nowS = () => Math.floor(clock.now / 1000);

function client(opts = {}) {
  let n = 0;
  const getToken = mock.fn(async () => jwt(nowS() + 3600, `t${++n}`));
  const h = new Herald({ url: "wss://herald.test/ws", WebSocket: ws.FakeWebSocket,
                         fetch: net.fetch, getToken, ...opts });
  const seen = { transports: [], gaps: [], errors: [] };
  h.on("transport", (t) => seen.transports.push(t));
  h.on("gap", (g) => seen.gaps.push(g.reason));
  h.on("error", (e) => seen.errors.push(e.code || e.message));
  return { h, getToken, seen };
}

/** WebSockets refused (closed 1006 before opening) until the client is on SSE. */
async function fallBack(h) {
  h.connect();
  await clock.tick(0);
  for (const delay of [188, 375]) {
    ws.last.serverClose(1006);
    await clock.tick(delay);
  }
  ws.last.serverClose(1006);
  assert.equal(h.transport, "sse");
  await clock.tick(750);
}

const event = (id, n = id) => ({ op: "event", event: "n", data: { n }, target: {}, ts: 1, id });

describe("the SSE parser", () => {
  it("parses events, multi-line data, comments, ids and breaks split across chunks", () => {
    const p = new SseParser();
    const out = [...p.push("retry: 1000\r\n\r\nevent: welcome\r"), ...p.push("\nid: 4"),
                 ...p.push("1\ndata: {\"a\":\ndata: 1}\n\n: ping\n\ndata: x\r\r"),
                 ...p.push("event:said\ndata:y\n")];
    assert.deepEqual(out, [{ event: "welcome", data: "{\"a\":\n1}", id: "41" },
                           { event: "message", data: "x", id: null }]);
    assert.deepEqual(p.push("\n"), [{ event: "said", data: "y", id: null }]);
  });

  it("derives the stream's URL from the WebSocket URL", () => {
    assert.equal(sseUrlFor("wss://h.test/ws"), "https://h.test/sse");
    assert.equal(sseUrlFor("ws://h.test:8001/herald/ws?x=1"), "http://h.test:8001/herald/sse");
  });
});

describe("falling back to SSE", () => {
  it("after three WebSockets that never opened, with the queued join and the resume point",
     async () => {
    const { h, seen } = client();
    h.connect();
    await clock.tick(0);
    ws.last.welcome({ log_id: 40, epoch: "e1" });
    ws.last.recv(event(41));
    const got = [];
    h.on("event:n", (d, f) => got.push(f.id));
    ws.last.serverClose(1006);  // then the proxy starts refusing upgrades
    const joined = h.join("room:a", { scope: "chat", meta: { dev: "phone" } });
    for (const delay of [188, 375]) {
      await clock.tick(delay);
      ws.last.serverClose(1006);
    }
    await clock.tick(750);
    ws.last.serverClose(1006);
    assert.deepEqual(seen.transports, ["sse"]);
    assert.equal(net.streams.length, 0);
    await clock.tick(1500);
    const s = net.last;
    assert.equal(`${s.url.origin}${s.url.pathname}`, "https://herald.test/sse");
    assert.equal(s.groups(), "chat/room:a");
    assert.equal(s.url.searchParams.get("epoch"), "e1");
    assert.equal(s.headers["Last-Event-ID"], "41");
    assert.match(s.headers.Authorization, /^Bearer /);
    s.open().welcome({ groups: [{ scope: "chat", group: "room:a" }], epoch: "e1",
                       recovered: true, log_id: 41 });
    await clock.tick(0);
    assert.deepEqual(await joined, { rewound: 0 });
    assert.equal(h.state, "open");
    assert.equal(h.transport, "sse");
    assert.equal(h.recovered, true);
    s.event("n", event(42), 42).event("n", event(41), 41).event("n", event(43), 43);
    await clock.tick(0);
    assert.deepEqual(got, [42, 43]);  // 41 was had already
    assert.deepEqual(seen.gaps, []);
  });

  it("goes to SSE at once when there is no WebSocket to construct", async () => {
    const { h, seen } = client({ WebSocket: undefined });
    h.connect();
    await clock.tick(0);
    assert.deepEqual(seen.transports, ["sse"]);
    net.last.open().welcome();
    await clock.tick(0);
    assert.equal(h.state, "open");
  });

  it("transport: websocket never falls back; transport: sse never opens a WebSocket", async () => {
    const { h } = client({ transport: "websocket" });
    h.connect();
    await clock.tick(0);
    for (let i = 0; i < 6; i++) {
      ws.last.serverClose(1006);
      await clock.tick(20_000);
    }
    assert.equal(h.transport, "websocket");
    assert.equal(net.streams.length, 0);
    h.close();
    const sockets = ws.sockets.length;
    const only = client({ transport: "sse" }).h;
    only.connect();
    await clock.tick(0);
    net.last.open().welcome();
    await clock.tick(600_000);
    assert.equal(ws.sockets.length, sockets);
    assert.equal(only.transport, "sse");
  });
});

describe("on SSE", () => {
  it("resumes a broken stream with Last-Event-ID after the close code's delay", async () => {
    const { h } = client();
    await fallBack(h);
    const got = [];
    h.on("event:n", (d, f) => got.push(f.id));
    net.last.open().welcome({ log_id: 10 }).event("n", event(11), 11);
    await clock.tick(0);
    net.last.end();  // the frontend died: no close event
    await clock.tick(0);
    assert.equal(h.state, "reconnecting");
    assert.equal(h.lastClose.code, 1006);
    await clock.tick(h.lastClose.delay);
    assert.equal(net.last.headers["Last-Event-ID"], "11");
    net.last.open().welcome({ log_id: 12, recovered: true, frontend: "f2" })
      .event("n", event(11), 11).event("n", event(12), 12);
    await clock.tick(0);
    assert.deepEqual(got, [11, 12]);
    assert.equal(h.frontend, "f2");
    // a draining frontend's close event: its retry_ms first, then the table's backoff
    net.last.event("close", { op: "close", code: 1012, reason: "draining; retry_ms=2000" });
    await clock.tick(0);
    assert.equal(h.lastClose.code, 1012);
    assert.ok(h.lastClose.delay >= 2000);
    const streams = net.streams.length;
    await clock.tick(h.lastClose.delay);
    assert.equal(net.streams.length, streams + 1);
  });

  it("rejects what needs a socket with unsupported_transport", async () => {
    const { h } = client();
    await fallBack(h);
    net.last.open().welcome();
    await clock.tick(0);
    const calls = [h.publish({ group: "g" }, "x", {}), h.members("g"), h.monitor("g"),
                   h.presence("g"), h.update("g", { a: 1 }), h.history("g"),
                   h.startTask("demo.sleep"), h.request("ping")];
    const codes = await Promise.all(calls.map((p) => p.then(() => "ok", (e) => e.code)));
    assert.deepEqual(codes, Array(calls.length).fill("unsupported_transport"));
  });

  it("joins and leaves reopen the stream once with the new groups", async () => {
    const { h } = client();
    await fallBack(h);
    net.last.open().welcome({ log_id: 5 });
    await clock.tick(0);
    const first = net.last;
    const done = Promise.all([h.join("a"), h.join("b", { scope: "s" })]);
    await clock.tick(0);
    assert.ok(first.aborted);
    assert.equal(net.streams.length, 2);
    assert.equal(net.last.groups(), "default/a,s/b");
    assert.equal(net.last.headers["Last-Event-ID"], "5");
    assert.equal(h.state, "open");  // a reopen on purpose is no reconnect
    net.last.open().welcome();
    await done;
    await h.join("a");  // had already: no reopen
    assert.equal(net.streams.length, 2);
    const left = h.leave("a");
    await clock.tick(0);
    assert.equal(net.last.groups(), "s/b");
    net.last.open().welcome();
    await left;
  });

  it("a join the stream is refused for fails, and the stream opens without it", async () => {
    const { h } = client();
    await fallBack(h);
    net.last.open().welcome();
    await clock.tick(0);
    await Promise.all([h.join("ok"), Promise.resolve().then(async () => {
      await clock.tick(0);
      net.last.open().welcome();
    })]);
    const denied = h.join("secret");
    await clock.tick(0);
    net.last.refuse(403, "forbidden", "not allowed to join default/secret");
    await assert.rejects(denied, { code: "forbidden" });
    await clock.tick(0);
    assert.equal(net.last.groups(), "default/ok");
    net.last.open().welcome();
    await clock.tick(0);
    assert.equal(h.state, "open");
  });

  it("a refusal with no join waiting stops as the close code says (403 → stop)", async () => {
    const { h } = client({ transport: "sse" });
    h.connect();
    await clock.tick(0);
    net.last.refuse(403, "forbidden", "origin not allowed (HERALD_ALLOWED_ORIGINS)");
    await clock.tick(0);
    assert.equal(h.state, "closed");
    assert.equal(h.lastError.code, "forbidden");
  });

  it("401 gets a new token; a silent stream is dropped (4000) and resumed", async () => {
    const { h, getToken } = client({ transport: "sse" });
    h.connect();
    await clock.tick(0);
    net.last.refuse(401, "unauthorized", "token expired");
    await clock.tick(10_000);
    assert.equal(getToken.mock.callCount(), 2);
    net.last.open().welcome({ heartbeat: 10 });
    await clock.tick(15_000);
    net.last.send(": ping\n\n");
    await clock.tick(15_000);  // 30 s since the welcome, 15 since the comment: alive
    assert.equal(net.streams.length, 2);
    await clock.tick(6_000);
    assert.equal(h.lastClose.code, 4000);
    await clock.tick(h.lastClose.delay);
    assert.equal(net.streams.length, 3);
  });

  it("refreshes the token by opening the stream again with it", async () => {
    let n = 0;
    const { h } = client({ transport: "sse", getToken: async () => jwt(nowS() + 60, `s${++n}`) });
    h.connect();
    await clock.tick(0);
    net.last.open().welcome();
    const before = net.last.headers.Authorization;
    for (let i = 0; i < 4; i++) {  // 40 s, kept alive by comments; refreshed at 48 s
      await clock.tick(10_000);
      net.last.send(": ping\n\n");
    }
    assert.equal(net.streams.length, 1);
    await clock.tick(10_000);
    assert.equal(net.streams.length, 2);
    assert.ok(net.streams[0].aborted);
    assert.notEqual(net.last.headers.Authorization, before);
    assert.equal(h.state, "open");
  });

  it("probes WebSocket and moves back to it, resuming the old session", async () => {
    const { h, seen } = client();
    h.connect();
    await clock.tick(0);
    ws.last.welcome({ log_id: 7, epoch: "e1" });  // a session before the proxy refused
    ws.last.serverClose(1006);
    await clock.tick(188);
    for (const delay of [375, 750]) {
      ws.last.serverClose(1006);
      await clock.tick(delay);
    }
    ws.last.serverClose(1006);
    await clock.tick(1500);
    net.last.open().welcome({ log_id: 7 }).event("n", event(8), 8);
    await clock.tick(0);
    const sockets = ws.sockets.length;
    await clock.tick(5_000);  // the first probe: refused too
    assert.equal(ws.sockets.length, sockets + 1);
    ws.last.serverClose(1006);
    await clock.tick(9_999);
    assert.equal(ws.sockets.length, sockets + 1);
    await clock.tick(1);  // the next one 10 s later: it opens
    const probe = ws.last;
    probe.open();
    assert.equal(probe.closedWith.code, 1000);
    assert.equal(probe.sent.length, 0, "a probe sends nothing");
    assert.deepEqual(seen.transports, ["sse", "websocket"]);
    assert.ok(net.last.aborted);
    await clock.tick(0);
    assert.notEqual(ws.last, probe);
    ws.last.open();
    const hello = ws.last.last("hello");
    assert.equal(hello.resume, "resume-0");
    assert.deepEqual([hello.last_id, hello.epoch], [8, "e1"]);
    ws.last.recv({ op: "welcome", connection_id: "conn-1", frontend: "f1", resume: "r2",
                   heartbeat: 10, resumed: true, groups: [], replayed: 0, gap: false,
                   log_id: 8, epoch: "e1", recovered: true });
    assert.equal(h.state, "open");
    assert.deepEqual(seen.gaps, []);
  });
});
