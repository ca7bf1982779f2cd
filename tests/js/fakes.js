// Test doubles for herald.js: a scriptable WebSocket and a fake clock (setTimeout,
// clearTimeout, Date.now) that runs timers in order and settles promises in between.

/** Sockets the client opened, newest last; each records what it sent. */
export function fakeSockets() {
  const sockets = [];
  const options = { autoPong: false };  // answer every ping (a live server)
  class FakeWebSocket {
    constructor(url) {
      Object.assign(this, { url, sent: [], closedWith: null });
      sockets.push(this);
    }
    send(raw) {
      const frame = JSON.parse(raw);
      this.sent.push(frame);
      if (options.autoPong && frame.op === "ping") {
        queueMicrotask(() => this.recv({ op: "pong", ref: frame.ref }));
      }
    }
    close(code, reason) { this.closedWith = { code, reason }; }
    // the server's side
    open() { this.onopen?.({}); }
    recv(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
    serverClose(code, reason = "") { this.onclose?.({ code, reason }); }
    last(op) { return [...this.sent].reverse().find((f) => f.op === op); }
    all(op) { return this.sent.filter((f) => f.op === op); }
    /** Answer the latest frame of `op` with an ack (or `reply`). */
    reply(op, fields = {}) {
      const f = this.last(op);
      if (!f) throw new Error(`no ${op} was sent`);
      this.recv({ op: "ack", ref: f.ref, ...fields });
    }
    /** Open and answer the hello with a welcome. */
    welcome(fields = {}) {
      this.open();
      if (!this.last("hello")) throw new Error("no hello was sent");
      this.recv({ op: "welcome", connection_id: "conn-1", frontend: "f1",
                  resume: `resume-${sockets.indexOf(this)}`, heartbeat: 10, resumed: false,
                  groups: [], replayed: 0, gap: false, log_id: 0, ...fields });
    }
  }
  return { FakeWebSocket, sockets, options, get last() { return sockets[sockets.length - 1]; } };
}

const realSetImmediate = setImmediate;
export const settle = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => realSetImmediate(r));
};

/** A clock of our own: nothing runs until tick(). */
export class FakeClock {
  constructor(start = 1_800_000_000_000) {
    Object.assign(this, { now: start, timers: new Map(), seq: 0, saved: null });
  }

  install() {
    const g = globalThis;
    this.saved = { setTimeout: g.setTimeout, clearTimeout: g.clearTimeout, now: Date.now };
    g.setTimeout = (fn, ms = 0, ...args) => {
      const id = ++this.seq;
      this.timers.set(id, { at: this.now + Math.max(0, Number(ms) || 0), fn, args, id });
      return id;
    };
    g.clearTimeout = (id) => { this.timers.delete(id); };
    Date.now = () => this.now;
    return this;
  }

  uninstall() {
    if (!this.saved) return;
    Object.assign(globalThis, { setTimeout: this.saved.setTimeout,
                                clearTimeout: this.saved.clearTimeout });
    Date.now = this.saved.now;
    this.saved = null;
  }

  /** Advance `ms`, running every timer due on the way (in order), settling promises. */
  async tick(ms) {
    const end = this.now + ms;
    for (;;) {
      await settle();
      let next = null;
      for (const t of this.timers.values()) {
        if (t.at <= end && (!next || t.at < next.at || (t.at === next.at && t.id < next.id))) {
          next = t;
        }
      }
      if (!next) break;
      this.timers.delete(next.id);
      this.now = next.at;
      next.fn(...next.args);
    }
    this.now = end;
    await settle();
  }
}

/** An unsigned JWT-shaped token whose payload has `exp` (seconds) and a label. */
export function jwt(exp, label = "t") {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256" })}.${b64({ sub: "alice", exp, label })}.sig`;
}

/** A promise with its resolve and reject outside. */
export function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
  return { promise, resolve, reject };
}

/**
 * A scriptable fetch for SSE: every call is a stream the test answers (`open`, `refuse`,
 * `fail`) and then feeds (`welcome`, `event`, `send`, `end`); `aborted` once the client
 * dropped it.
 */
export function fakeFetch() {
  const streams = [];
  const encoder = new TextEncoder();
  function fetch(url, init = {}) {
    const s = { url: new URL(url), headers: init.headers || {}, aborted: false, controller: null };
    streams.push(s);
    return new Promise((resolve, reject) => {
      init.signal?.addEventListener("abort", () => {
        s.aborted = true;
        const err = Object.assign(new Error("aborted"), { name: "AbortError" });
        reject(err);
        try { s.controller?.error(err); } catch { /* closed already */ }
      });
      Object.assign(s, {
        open() {
          const body = new ReadableStream({ start: (c) => { s.controller = c; } });
          resolve({ ok: true, status: 200, statusText: "OK", body, json: async () => ({}) });
          return s;
        },
        refuse(status, error = "forbidden", message = "no") {
          resolve({ ok: false, status, statusText: "refused", body: null,
                    json: async () => ({ error, message }) });
        },
        fail(message = "network") { reject(new TypeError(message)); },
        send(text) { s.controller.enqueue(encoder.encode(text)); return s; },
        event(name, frame, id) {
          const idLine = id === undefined ? "" : `id: ${id}\n`;
          return s.send(`event: ${name}\n${idLine}data: ${JSON.stringify(frame)}\n\n`);
        },
        welcome(fields = {}) {
          const groups = (s.url.searchParams.get("groups") || "").split(",").filter(Boolean)
            .map((k) => { const [scope, group] = k.split("/"); return { scope, group }; });
          return s.event("welcome", { op: "welcome", connection_id: `sse-${streams.indexOf(s)}`,
                                      frontend: "f1", heartbeat: 10, resumed: false, groups,
                                      replayed: 0, gap: false, log_id: 0, transport: "sse",
                                      ...fields });
        },
        end() { s.controller.close(); return s; },
        groups() { return s.url.searchParams.get("groups"); },
      });
    });
  }
  return { fetch, streams, get last() { return streams[streams.length - 1]; } };
}
