// herald.js presence with metadata (the map by connection and by user, resume ordering,
// snapshots), join's meta and rewind, update, and the recovery result (epoch, recovered).
import { afterEach, beforeEach, describe, it, mock } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "@herald/client";
import { FakeClock, fakeSockets, jwt } from "./fakes.js";

let clock, ws, restore;

beforeEach(() => {
  clock = new FakeClock().install();
  ws = fakeSockets();
  restore = [mock.method(Math, "random", () => 0.5), mock.method(console, "warn", () => {})];
});
afterEach(() => { clock.uninstall(); restore.forEach((m) => m.mock.restore()); });

async function opened(welcome = {}) {
  const getToken = async () => jwt(Math.floor(clock.now / 1000) + 3600);
  const h = new Herald({ url: "ws://herald.test/ws", WebSocket: ws.FakeWebSocket, getToken });
  h.connect();
  await clock.tick(0);
  ws.last.welcome(welcome);
  return h;
}

async function reconnect(welcome = {}) {
  ws.last.serverClose(1006);
  await clock.tick(60_000);
  ws.last.welcome(welcome);
}

const m = (cid, user, frontend = "f1", meta) => ({ connection_id: cid, user_id: user, frontend,
                                                  ...(meta ? { meta } : {}) });
const presence = (fields) => ws.last.recv({ op: "presence", group: "room", scope: "default",
                                            joins: [], leaves: [], ...fields });
const users = (map) => Object.fromEntries([...map.values()].map(
  (u) => [u.user_id, u.metas.map((x) => [x.connection_id, x.frontend, x.meta])]));

async function watching(h) {
  const seen = [];
  const mon = h.presence("room", {}, (map, change) => seen.push([users(map), change]));
  ws.last.reply("monitor");
  return { mon: await mon, seen };
}

describe("presence by user", () => {
  it("keeps one meta per connection, from the snapshot, joins, updates and leaves", async () => {
    const h = await opened();
    const { mon, seen } = await watching(h);
    presence({ joins: [m("a1", "alice", "f1", { dev: "phone" }), m("b1", "bob")] });
    presence({ joins: [m("a2", "alice", "f2", { dev: "laptop" })] });
    assert.deepEqual(users(mon.users), {
      alice: [["a1", "f1", { dev: "phone" }], ["a2", "f2", { dev: "laptop" }]],
      bob: [["b1", "f1", {}]] });
    presence({ updates: [m("a1", "alice", "f1", { dev: "phone", away: true })] });
    assert.deepEqual(users(mon.users).alice[0], ["a1", "f1", { dev: "phone", away: true }]);
    presence({ leaves: [m("a2", "alice", "f2")], updates: [m("b1", "bob", "f1", { n: 2 })] });
    assert.deepEqual(users(mon.users), { alice: [["a1", "f1", { dev: "phone", away: true }]],
                                         bob: [["b1", "f1", { n: 2 }]] });
    presence({ leaves: [m("b1", "bob")] });
    assert.deepEqual([...mon.users.keys()], ["alice"]);
    assert.deepEqual(seen.map(([, c]) => c.snapshot), [true, false, false, false, false]);
    assert.deepEqual(seen[2][1].updates.map((x) => x.connection_id), ["a1"]);
    assert.deepEqual([...mon.members.keys()], ["a1"]);  // the same monitor, by connection
  });

  it("a session resumed on another frontend stays, whichever frame comes first", async () => {
    const h = await opened();
    const { mon } = await watching(h);
    presence({ joins: [m("c1", "alice", "fA", { v: 1 }), m("c2", "bob", "fA")] });
    // c1: joined on fB, then fA's late leave; c2: fA's leave first, then the join on fB
    presence({ joins: [m("c1", "alice", "fB", { v: 1 })] });
    presence({ leaves: [m("c1", "alice", "fA")] });
    presence({ leaves: [m("c2", "bob", "fA")] });
    presence({ joins: [m("c2", "bob", "fB")] });
    // a late update from the old frontend does not move it back there either
    presence({ updates: [m("c1", "alice", "fA", { v: 0 })] });
    assert.deepEqual(users(mon.users), { alice: [["c1", "fB", { v: 1 }]], bob: [["c2", "fB", {}]] });
    assert.deepEqual([...mon.members.values()].map((x) => x.frontend), ["fB", "fB"]);
    presence({ leaves: [m("c1", "alice", "fB")] });  // its own frontend's leave does remove it
    assert.deepEqual([...mon.users.keys()], ["bob"]);
  });

  it("the snapshot after a reconnect replaces users and members", async () => {
    const h = await opened();
    const { mon, seen } = await watching(h);
    presence({ joins: [m("a1", "alice"), m("a2", "alice"), m("b1", "bob")] });
    await reconnect({ resumed: true });
    ws.last.reply("monitor");
    presence({ joins: [m("a2", "alice", "f2"), m("c1", "carol")] });
    assert.deepEqual(users(mon.users), { alice: [["a2", "f2", {}]], carol: [["c1", "f1", {}]] });
    assert.deepEqual([...mon.members.keys()], ["a2", "c1"]);
    assert.deepEqual(seen.map(([, c]) => c.snapshot), [true, true]);
  });

  it("monitor keeps its members map and callback, and its change gains updates", async () => {
    const h = await opened();
    const changes = [];
    const mon = h.monitor("room", {}, (members, change) =>
      changes.push([[...members.values()].map((x) => [x.connection_id, x.meta]), change.updates]));
    ws.last.reply("monitor");
    const handle = await mon;
    presence({ joins: [m("c1", "u", "f1", { a: 1 })] });
    presence({ updates: [m("c1", "u", "f1", { a: 2 })] });
    assert.deepEqual(changes, [[[["c1", { a: 1 }]], []],
                               [[["c1", { a: 2 }]], [m("c1", "u", "f1", { a: 2 })]]]);
    assert.equal(handle.members.get("c1").meta.a, 2);
    assert.deepEqual(users(handle.users), { u: [["c1", "f1", { a: 2 }]] });
    // both kinds of listener share one monitor: the last stop sends demonitor
    const byUser = h.presence("room");
    await (await byUser).stop();
    assert.equal(ws.last.all("demonitor").length, 0);
    await Promise.all([handle.stop(), Promise.resolve().then(() => ws.last.reply("demonitor"))]);
    assert.equal(ws.last.all("demonitor").length, 1);
  });
});

describe("join's meta and rewind, update", () => {
  it("sends meta and rewind, resolves with rewound, and rejoins with the latest meta", async () => {
    const h = await opened();
    const events = [];
    h.on("event:tick", (d, f) => events.push(f.id));
    const joined = h.join("room", { meta: { dev: "phone" }, rewind: 2 });
    assert.deepEqual(ws.last.last("join"), { op: "join", ref: ws.last.last("join").ref,
                                             group: "room", scope: "default",
                                             meta: { dev: "phone" }, rewind: 2 });
    ws.last.reply("join", { rewound: 2 });
    assert.deepEqual(await joined, { rewound: 2 });
    for (const id of [7, 8]) {  // the rewound events are ordinary events
      ws.last.recv({ op: "event", event: "tick", data: {}, target: {}, ts: 1, id });
    }
    assert.deepEqual(events, [7, 8]);
    const updated = h.update("room", { dev: "phone", away: true });
    assert.deepEqual(ws.last.last("update").meta, { dev: "phone", away: true });
    ws.last.reply("update");
    await updated;
    await reconnect({ resumed: true, groups: [{ scope: "default", group: "room" }] });
    await reconnect({ resumed: false });  // a fresh session: joined again, with that meta
    assert.deepEqual(ws.last.last("join").meta, { dev: "phone", away: true });
    assert.equal(ws.last.last("join").rewind, undefined);
  });
});

describe("the recovery result", () => {
  it("sends welcome.epoch as hello.epoch with last_id, and says recovered", async () => {
    const h = await opened({ epoch: "e1", log_id: 40, recovered: false });
    const gaps = [];
    h.on("gap", (g) => gaps.push(g.reason));
    assert.equal(h.epoch, "e1");
    assert.equal(h.recovered, null);  // the first welcome: nothing to recover, no gap
    ws.last.recv({ op: "event", event: "x", data: {}, target: {}, ts: 1, id: 41 });
    await reconnect({ resumed: true, epoch: "e1", recovered: true });
    const hello = ws.sockets[1].last("hello");
    assert.deepEqual([hello.last_id, hello.epoch], [41, "e1"]);
    assert.equal(h.recovered, true);
    await reconnect({ resumed: true, epoch: "e1", recovered: false });
    assert.equal(h.recovered, false);
    assert.deepEqual(gaps, ["not_recovered"]);
  });

  it("a new epoch: gap, and the ids of the old log are forgotten", async () => {
    const h = await opened({ epoch: "e1", log_id: 500 });
    const gaps = [], ids = [];
    h.on("gap", (g) => gaps.push([g.reason, g.lastId]));
    h.on("event:x", (_d, f) => ids.push(f.id));
    ws.last.recv({ op: "event", event: "x", data: {}, target: {}, ts: 1, id: 501 });
    await reconnect({ resumed: true, epoch: "e2", log_id: 3, recovered: false });
    assert.deepEqual(gaps, [["not_recovered", 501]]);
    assert.equal(h.lastId, 3);  // the new log's head, not 501 of the old one
    ws.last.recv({ op: "event", event: "x", data: {}, target: {}, ts: 1, id: 4 });
    await reconnect({ resumed: true, epoch: "e2", recovered: true });
    assert.deepEqual([ws.last.last("hello").last_id, ws.last.last("hello").epoch], [4, "e2"]);
    assert.deepEqual(ids, [501, 4]);
  });

  it("a reconnect that was not resumed is not_resumed, even with recovered false", async () => {
    const h = await opened({ epoch: "e1" });
    const gaps = [];
    h.on("gap", (g) => gaps.push(g.reason));
    await reconnect({ resumed: false, epoch: "e1", recovered: false });
    assert.deepEqual(gaps, ["not_resumed"]);
    assert.equal(h.recovered, false);
  });
});
