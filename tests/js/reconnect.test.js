// The reconnect table: every close code in RECONNECT, and what the client does after it.
import { afterEach, beforeEach, describe, it, mock } from "node:test";
import assert from "node:assert/strict";
import { Herald, RECONNECT, closeRule } from "@herald/client";
import { FakeClock, fakeSockets, jwt } from "./fakes.js";

const URL = "ws://herald.test/ws";
const HOUR_S = 3600;
let clock, ws, restore;

beforeEach(() => {
  clock = new FakeClock().install();
  ws = fakeSockets();
  restore = mock.method(Math, "random", () => 0.5);
});
afterEach(() => { clock.uninstall(); restore.mock.restore(); });

function client(opts = {}) {
  const exp = Math.floor(clock.now / 1000) + HOUR_S;
  let n = 0;
  const getToken = mock.fn(async () => jwt(exp, `fresh-${++n}`));
  const h = new Herald({ url: URL, WebSocket: ws.FakeWebSocket, getToken, ...opts });
  const seen = { disconnected: [], gap: [], error: [], state: [] };
  for (const name of Object.keys(seen)) h.on(name, (x) => seen[name].push(x));
  return { h, getToken, seen };
}

async function opened(opts) {
  const c = client(opts);
  c.h.connect();
  await clock.tick(0);
  ws.last.welcome();
  assert.equal(c.h.state, "open");
  return c;
}

// what the table says, spelled out per code (first ceiling 250 ms: 125 + 0.5 * 125 = 188 ms)
const EXPECT = {
  1000: { retry: true, min: 0, gap: "session_ended" },
  1001: { retry: true, min: 0 },
  1006: { retry: true, min: 0 },
  1007: { retry: false, error: "bad_frame" },
  1008: { retry: false, error: "policy" },
  1009: { retry: false, error: "too_large" },
  1011: { retry: true, min: 1000 },
  1012: { retry: true, min: 1500, reason: "draining; retry_ms=1500" },
  1013: { retry: true, min: 500, reason: "resume unavailable, retry" },
  4000: { retry: true, min: 0 },
  4401: { retry: true, min: 0, newToken: true, reason: "token expired" },
  4409: { retry: false, error: "replaced" },
  4999: { retry: true, min: 1000 },  // not in the table: DEFAULT
};

describe("close codes", () => {
  it("has a test row for every row of the table", () => {
    for (const code of Object.keys(RECONNECT)) assert.ok(code in EXPECT, `close ${code}`);
  });

  for (const [code, want] of Object.entries(EXPECT)) {
    it(`close ${code}: ${want.retry ? "retries" : `stops (${want.error})`}`, async () => {
      const { h, getToken, seen } = await opened();
      const first = ws.last;
      const tokensBefore = getToken.mock.callCount();
      first.serverClose(Number(code), want.reason || "");
      assert.equal(seen.disconnected.length, 1);
      const d = seen.disconnected[0];
      assert.equal(d.code, Number(code));
      assert.equal(d.reason, want.reason || "");
      assert.deepEqual(h.lastClose, d);
      if (!want.retry) {
        assert.equal(d.delay, null);
        assert.equal(h.state, "closed");
        assert.equal(h.lastError.code, want.error);
        assert.equal(seen.error.at(-1), h.lastError);
        await clock.tick(120_000);
        assert.equal(ws.sockets.length, 1, "no reconnect after a close that stops");
        return;
      }
      assert.equal(h.state, "reconnecting");
      // floor + hint + half the first ceiling (250 ms) + jitter (random 0.5) over its other half
      assert.equal(d.delay, want.min + 188);
      await clock.tick(d.delay - 1);
      assert.equal(ws.sockets.length, 1, "not before the delay");
      await clock.tick(1);
      assert.equal(ws.sockets.length, 2, "one new socket after the delay");
      assert.equal(getToken.mock.callCount() - tokensBefore, want.newToken ? 1 : 0);
      ws.last.open();
      const hello = ws.last.last("hello");
      assert.equal(hello.token.split(".")[1] !== first.last("hello").token.split(".")[1],
                   !!want.newToken, "a new token exactly when the table says");
      assert.equal("resume" in hello, !want.gap, "resume token unless the session ended");
      ws.last.recv({ op: "welcome", connection_id: "conn-2", frontend: "f2", resume: "r2",
                     heartbeat: 10, resumed: !want.gap, groups: [], replayed: 0, gap: false });
      assert.equal(h.state, "open");
      assert.deepEqual(seen.gap.map((g) => g.reason), want.gap ? [want.gap] : []);
    });
  }

  it("stops after 4401 when there is no getToken", async () => {
    const h = new Herald({ url: URL, WebSocket: ws.FakeWebSocket,
                           token: jwt(Math.floor(clock.now / 1000) + HOUR_S) });
    const closes = [];
    h.on("disconnected", (d) => closes.push(d)).on("error", () => {}).connect();
    await clock.tick(0);
    ws.last.welcome();
    ws.last.serverClose(4401, "token expired");
    assert.deepEqual(closes, [{ code: 4401, reason: "token expired", delay: null }]);
    assert.equal(h.lastError.code, "unauthorized");
    await clock.tick(60_000);
    assert.equal(ws.sockets.length, 1);
  });

  it("reads the delay hint of a 1012 reason", () => {
    assert.equal(closeRule(1012, "draining; retry_ms=2500").hintMs, 2500);
    assert.equal(closeRule(1012, "draining").hintMs, 0);
    assert.equal(closeRule(1013, "retry_ms=2500").hintMs, 0, "only 1012 takes a hint");
  });
});

describe("backoff", () => {
  for (const random of [0, 0.5, 0.999]) {
    it(`grows after 1013 while Postgres is out (closed before every welcome; random ${random})`,
       async () => {
         restore.mock.mockImplementation(() => random);
         const { seen } = await opened();
         const OUTAGE_MS = 30_000;
         const start = clock.now;
         ws.last.serverClose(1013, "resume unavailable, retry");
         while (clock.now - start < OUTAGE_MS) {
           const n = ws.sockets.length;
           await clock.tick(50);
           if (ws.sockets.length > n) {
             ws.last.open();
             ws.last.serverClose(1013, "resume unavailable, retry");
           }
         }
         const delays = seen.disconnected.map((d) => d.delay);
         for (let i = 1; i < delays.length; i++) assert.ok(delays[i] >= delays[i - 1], `${delays}`);
         assert.ok(delays.at(-1) >= 5_500, `near the 10 s cap: ${delays}`);
         // the review saw about 8 attempts a second (240 in 30 s)
         assert.ok(ws.sockets.length - 1 <= 12, `${ws.sockets.length - 1} attempts in 30 s`);
       });
  }

  it("grows after repeated 1012 with retry_ms=0 (a draining frontend behind a proxy)", async () => {
    const { seen } = await opened();
    for (let i = 0; i < 6; i++) {
      ws.last.serverClose(1012, "draining; retry_ms=0");
      await clock.tick(seen.disconnected.at(-1).delay);
      ws.last.open();
    }
    assert.deepEqual(seen.disconnected.map((d) => d.delay), [188, 375, 750, 1500, 3000, 6000]);
  });

  it("resets after a socket that stayed up, not after one that closed at once", async () => {
    const { seen } = await opened();
    ws.last.serverClose(1006);
    await clock.tick(seen.disconnected.at(-1).delay);
    ws.last.welcome({ resumed: true });
    await clock.tick(1_000);  // up for 1 s: not stable
    ws.last.serverClose(1006);
    assert.equal(seen.disconnected.at(-1).delay, 375);
    await clock.tick(375);
    ws.last.welcome({ resumed: true });
    await clock.tick(6_000);  // up for 6 s: stable, back to the first step
    ws.last.serverClose(1006);
    assert.equal(seen.disconnected.at(-1).delay, 188);
  });

  it("a getToken failure retries with backoff instead of stopping", async () => {
    const { h, getToken, seen } = await opened();
    getToken.mock.mockImplementation(async () => { throw new Error("backend down"); });
    ws.last.serverClose(4401, "token expired");
    await clock.tick(188);
    assert.equal(seen.error.at(-1).message, "backend down");
    assert.equal(h.state, "reconnecting");
    assert.equal(ws.sockets.length, 1);
    getToken.mock.mockImplementation(async () => jwt(Math.floor(clock.now / 1000) + 60));
    await clock.tick(1_374);
    assert.equal(ws.sockets.length, 1);
    await clock.tick(1);  // DEFAULT's floor 1 s + 250 + 0.5 * 250 ms (the second attempt)
    assert.equal(ws.sockets.length, 2);
  });
});
