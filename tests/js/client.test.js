// herald.js beyond the close codes: event separation, gaps, heartbeat, wake-ups, one socket
// per attempt, token refresh, presence ordering, de-duplication.
import { afterEach, beforeEach, describe, it, mock } from "node:test";
import assert from "node:assert/strict";
import { Herald, CLIENT_EVENTS } from "@herald/client";
import { FakeClock, deferred, fakeSockets, jwt } from "./fakes.js";

const URL = "ws://herald.test/ws";
let clock, ws, restore;

beforeEach(() => {
  clock = new FakeClock().install();
  ws = fakeSockets();
  restore = [mock.method(Math, "random", () => 0.5), mock.method(console, "warn", () => {})];
});
afterEach(() => { clock.uninstall(); restore.forEach((m) => m.mock.restore()); });

const nowS = () => Math.floor(clock.now / 1000);

function client(opts = {}) {
  let n = 0;
  const getToken = mock.fn(async () => jwt(nowS() + 3600, `fresh-${++n}`));
  const h = new Herald({ url: URL, WebSocket: ws.FakeWebSocket, getToken, ...opts });
  return { h, getToken };
}

async function opened(opts, welcome = {}) {
  const c = client(opts);
  c.h.connect();
  await clock.tick(0);
  ws.last.welcome(welcome);
  return c;
}

const label = (token) => JSON.parse(Buffer.from(token.split(".")[1], "base64url")).label;

describe("application events and the client's own", () => {
  it("never hands an event named like a client event to the client's handlers", async () => {
    const { h } = await opened();
    const got = { own: [], app: [], all: [] };
    for (const name of CLIENT_EVENTS) h.on(name, (x) => got.own.push([name, x]));
    for (const name of CLIENT_EVENTS) h.on(`event:${name}`, (data) => got.app.push([name, data]));
    h.on("event:*", (f) => got.all.push(f.event));
    for (const name of CLIENT_EVENTS) {
      ws.last.recv({ op: "event", event: name, data: { n: name }, target: { all: true }, ts: 1 });
    }
    assert.deepEqual(got.own, []);
    assert.deepEqual(got.app, CLIENT_EVENTS.map((n) => [n, { n }]));
    assert.deepEqual(got.all, [...CLIENT_EVENTS]);
  });

  it("still serves a bare application name (0.1 API), with one deprecation warning", async () => {
    const { h } = await opened();
    const chats = [];
    h.on("chat", (data, frame) => chats.push([data.text, frame.event]));
    for (const text of ["a", "b"]) {
      ws.last.recv({ op: "event", event: "chat", data: { text }, target: { all: true }, ts: 1 });
    }
    assert.deepEqual(chats, [["a", "chat"], ["b", "chat"]]);
    const warnings = console.warn.mock.calls.filter((c) => String(c.arguments[0]).includes("deprecated"));
    assert.equal(warnings.length, 1);
  });

  it("server error frames without a ref reach error handlers as HeraldError", async () => {
    const { h } = await opened();
    const errors = [];
    h.on("error", (e) => errors.push(e.code));
    ws.last.recv({ op: "error", code: "rate_limited", message: "slow down" });
    ws.last.onmessage({ data: "not json" });
    assert.deepEqual(errors, ["rate_limited", "bad_frame"]);
  });
});

describe("gaps", () => {
  it("a reconnect that could not resume re-joins and says gap (not_resumed)", async () => {
    const { h } = await opened();
    const gaps = [];
    h.on("gap", (g) => gaps.push(g));
    const joined = h.join("room:a");
    ws.last.reply("join");
    await joined;
    ws.last.recv({ op: "event", event: "chat", data: {}, target: {}, ts: 1, id: 41 });
    ws.last.serverClose(1006);
    await clock.tick(188);
    ws.last.welcome({ resumed: false });
    assert.deepEqual(gaps.map((g) => [g.reason, g.lastId]), [["not_resumed", 41]]);
    assert.deepEqual(ws.last.all("join").map((f) => f.group), ["room:a"]);
    assert.equal(ws.last.last("hello").last_id, 41);
  });

  it("welcome.gap and welcome.recovered=false surface as gap; a clean resume does not", async () => {
    const { h } = await opened();
    const gaps = [];
    h.on("gap", (g) => gaps.push(g.reason));
    for (const w of [{ resumed: true, gap: true }, { resumed: true, recovered: false },
                     { resumed: true, recovered: true }]) {
      ws.last.serverClose(1006);
      await clock.tick(60_000);
      ws.last.welcome(w);
    }
    assert.deepEqual(gaps, ["retention", "not_recovered"]);
  });

  it("the first welcome is no gap, and its log_id is where a resume starts", async () => {
    const { h } = await opened({}, { log_id: 900 });
    const gaps = [];
    h.on("gap", (g) => gaps.push(g));
    assert.equal(h.lastId, 900);
    ws.last.serverClose(1006);
    await clock.tick(188);
    ws.last.open();
    assert.equal(ws.last.last("hello").last_id, 900);
    assert.deepEqual(gaps, []);
  });

  it("drops a replayed durable id", async () => {
    const { h } = await opened();
    const ids = [];
    h.on("event:chat", (_d, f) => ids.push(f.id));
    for (const id of [5, 6, 5, 7, 6]) {
      ws.last.recv({ op: "event", event: "chat", data: {}, target: {}, ts: 1, id });
    }
    assert.deepEqual(ids, [5, 6, 7]);
  });
});

describe("heartbeat", () => {
  it("pings at welcome.heartbeat and drops a socket whose pong does not come", async () => {
    const { h } = await opened({}, { heartbeat: 2 });
    const closes = [];
    h.on("disconnected", (d) => closes.push(d));
    await clock.tick(2_000);
    assert.equal(ws.last.all("ping").length, 1, "the first ping after one heartbeat");
    ws.last.reply("ping", { op: "pong" });
    await clock.tick(2_000);
    assert.equal(ws.last.all("ping").length, 2);
    await clock.tick(2_000);  // no pong within a heartbeat
    assert.deepEqual(ws.sockets[0].closedWith, { code: 4000, reason: "no pong" });
    assert.equal(closes[0].code, 4000);
    assert.equal(h.state, "reconnecting");
  });

  it("pingInterval overrides the heartbeat", async () => {
    await opened({ pingInterval: 500 }, { heartbeat: 10 });
    await clock.tick(500);
    assert.equal(ws.last.all("ping").length, 1);
  });
});

function environment() {
  const win = new EventTarget();
  const doc = new EventTarget();
  doc.visibilityState = "visible";
  const show = (state) => { doc.visibilityState = state; doc.dispatchEvent(new Event("visibilitychange")); };
  return { win, doc, show };
}

describe("page visibility and the network", () => {
  it("reconnects at once when the page comes back, without waiting out the backoff", async () => {
    const env = environment();
    const { h } = await opened({ window: env.win, document: env.doc });
    for (let i = 0; i < 5; i++) {  // pile up backoff
      ws.last.serverClose(1006);
      await clock.tick(h.lastClose.delay);
      ws.last.open();
    }
    env.show("hidden");
    ws.last.serverClose(1006);
    assert.ok(h.lastClose.delay >= 4_000);
    const n = ws.sockets.length;
    env.show("visible");
    await clock.tick(0);
    assert.equal(ws.sockets.length, n + 1);
  });

  it("waits while offline and connects at once when the network returns", async () => {
    const env = environment();
    const { h } = await opened({ window: env.win, document: env.doc });
    env.win.dispatchEvent(new Event("offline"));
    ws.last.serverClose(1006);
    await clock.tick(120_000);
    assert.equal(ws.sockets.length, 1, "no attempt while offline");
    assert.equal(h.state, "reconnecting");
    env.win.dispatchEvent(new Event("online"));
    await clock.tick(0);
    assert.equal(ws.sockets.length, 2);
  });

  it("probes an open socket when the page comes back, and drops it without a pong", async () => {
    const env = environment();
    const { h } = await opened({ window: env.win, document: env.doc });
    env.show("visible");
    assert.equal(ws.last.all("ping").length, 1);
    await clock.tick(3_000);
    assert.equal(ws.sockets[0].closedWith.code, 4000);
    await clock.tick(h.lastClose.delay);
    assert.equal(ws.sockets.length, 2);
  });

  it("a laptop waking with an expired token gets a new one before its hello (no 4401)", async () => {
    const env = environment();
    const c = client({ window: env.win, document: env.doc });
    c.getToken.mock.mockImplementation(async () => jwt(nowS() + 60, "short"));
    c.h.connect();
    await clock.tick(0);
    ws.last.welcome();
    c.getToken.mock.mockImplementation(async () => jwt(nowS() + 3600, "after-sleep"));
    clock.now += 8 * 3600_000;  // asleep: no timer ran
    env.show("visible");
    await clock.tick(0);
    assert.equal(ws.sockets[0].closedWith.code, 4000);
    assert.equal(ws.sockets.length, 2, "at once, not after the backoff");
    assert.equal(c.getToken.mock.callCount(), 2);
    ws.last.open();
    assert.equal(label(ws.last.last("hello").token), "after-sleep");
    await clock.tick(60_000);
    assert.equal(ws.sockets.length, 2, "and only that one");
  });

  it("close() removes its listeners", async () => {
    const env = environment();
    const { h } = await opened({ window: env.win, document: env.doc });
    h.close();
    env.win.dispatchEvent(new Event("online"));
    env.show("visible");
    await clock.tick(60_000);
    assert.equal(ws.sockets.length, 1);
    assert.equal(h.state, "closed");
  });
});

describe("one socket at a time", () => {
  it("connect(), online and visibility during a pending getToken open one socket", async () => {
    const env = environment();
    const pending = deferred();
    const { h, getToken } = client({ window: env.win, document: env.doc });
    getToken.mock.mockImplementation(() => pending.promise);
    h.connect();
    h.connect();
    env.win.dispatchEvent(new Event("online"));
    env.show("visible");
    await clock.tick(0);
    pending.resolve(jwt(nowS() + 3600));
    await clock.tick(10_000);
    assert.equal(ws.sockets.length, 1);
    assert.equal(getToken.mock.callCount(), 1);
  });

  it("close() then connect() during a pending getToken opens one socket with the new token",
     async () => {
       const first = deferred();
       const { h, getToken } = client();
       getToken.mock.mockImplementationOnce(() => first.promise);
       h.connect();
       await clock.tick(0);
       h.close();
       h.connect();
       await clock.tick(0);
       first.resolve(jwt(nowS() + 3600, "stale"));
       await clock.tick(1_000);
       assert.equal(ws.sockets.length, 1);
       ws.last.open();
       assert.equal(label(ws.last.last("hello").token), "fresh-1");
       assert.equal(getToken.mock.callCount(), 2);
     });

  it("Herald.connect resolves once open", async () => {
    const promise = Herald.connect({ url: URL, WebSocket: ws.FakeWebSocket, token: jwt(nowS() + 60) });
    await clock.tick(0);
    ws.last.welcome();
    const h = await promise;
    assert.equal(h.state, "open");
  });
});

describe("token refresh", () => {
  it("refreshes before expiry and forgets the groups the new token dropped", async () => {
    ws.options.autoPong = true;
    const c = client();
    c.getToken.mock.mockImplementation(async () => jwt(nowS() + 600, "ten-minutes"));
    c.h.connect();
    await clock.tick(0);
    ws.last.welcome();
    const left = [];
    c.h.on("left", (g) => left.push(g));
    c.getToken.mock.mockImplementation(async () => jwt(nowS() + 3600, "next"));
    await clock.tick(539_000);
    assert.equal(ws.last.all("refresh").length, 0, "not before 10 min - 60 s");
    await clock.tick(1_000);
    const refresh = ws.last.last("refresh");
    assert.equal(label(refresh.token), "next");
    ws.last.reply("refresh", { left: [{ scope: "default", group: "room:b" }] });
    await clock.tick(0);
    assert.deepEqual(left, [{ scope: "default", group: "room:b" }]);
    assert.equal(ws.sockets.length, 1, "the same socket all along (pongs came)");
    ws.last.serverClose(1006);  // the next hello carries the refreshed token
    await clock.tick(c.h.lastClose.delay);
    ws.last.open();
    assert.equal(label(ws.last.last("hello").token), "next");
  });
});

describe("presence", () => {
  const m = (id, user = "u") => ({ connection_id: id, user_id: user, frontend: "f1" });

  it("snapshot first, then joins before leaves, and a re-monitor's snapshot replaces", async () => {
    const { h } = await opened();
    const changes = [];
    const mon = h.monitor("room:a", {}, (members, change) =>
      changes.push([[...members.keys()], change.snapshot]));
    ws.last.reply("monitor");
    await mon;
    const presence = (joins, leaves = []) =>
      ws.last.recv({ op: "presence", group: "room:a", scope: "default", joins, leaves });
    presence([m("c1"), m("c2")]);                 // the snapshot
    presence([m("c3")], [m("c1")]);
    presence([m("c4")], [m("c4")]);               // joined and gone in one batch
    ws.last.recv({ op: "presence", group: "room:z", scope: "default", joins: [m("x")],
                   leaves: [] });                 // not monitored: ignored
    ws.last.serverClose(1006);
    await clock.tick(188);
    ws.last.welcome({ resumed: true });
    assert.equal(ws.last.all("monitor").length, 1, "monitors again after a resume");
    ws.last.reply("monitor");
    presence([m("c2"), m("c9")]);                 // snapshot on the new socket: c3 left meanwhile
    assert.deepEqual(changes, [
      [["c1", "c2"], true], [["c2", "c3"], false], [["c2", "c3"], false], [["c2", "c9"], true]]);
  });
});
