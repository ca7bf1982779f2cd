/**
 * herald-fallback.js: herald.js where WebSockets cannot pass (a proxy that refuses
 * upgrades). With transport "auto", after WS_FAILS_BEFORE_SSE WebSockets in a row that
 * never opened, it receives over `GET /sse` (herald-sse.js) and tries a WebSocket now and
 * then (the wait doubling) to move back. On a stream, a join or leave opens the stream
 * again with the new groups and resolves once a stream has them; the ops that need a
 * WebSocket are refused (unsupported_transport).
 * @module herald-fallback
 */
import { SseSocket } from "./herald-sse.js";
import { HeraldError, key, unsupported } from "./herald-util.js";

export const WS_FAILS_BEFORE_SSE = 3;      // consecutive WebSockets that never opened: try SSE
export const WS_PROBE_MS = 5_000;          // on SSE: try a WebSocket this long after the switch,
const WS_PROBE_MAX_MS = 300_000;           // doubling after every probe that fails, up to this
export const SSE_SILENT_HEARTBEATS = 2;    // a stream silent this many heartbeats is dead

/** Herald's transport methods (herald.js copies them onto Herald.prototype). */
export class FallbackMethods {
  /** A stream for the groups joined, resuming after `lastId` of `epoch`. */
  _openStream() {
    const groups = [...this._groups.values()].map((g) => encodeURIComponent(key(g.scope, g.group)));
    let url = `${this.sseUrl}${this.sseUrl.includes("?") ? "&" : "?"}groups=${groups.join(",")}`;
    if (this._askedLastId && this.epoch) url += `&epoch=${encodeURIComponent(this.epoch)}`;
    this._streamGroups = new Set();
    return new SseSocket(url, { token: this._token, fetch: this._fetch,
                                lastId: this._askedLastId ? this.lastId : null });
  }

  /**
   * Use another transport from the next attempt on. To SSE: what waits for a socket is
   * either a join/leave (the stream's groups then) or cannot be sent; a probe will try
   * WebSocket again. To WebSocket: a probe got one open.
   */
  _switch(to) {
    if (this.transport === to) return;
    this.transport = to;
    if (to === "sse") {
      for (const p of this._queue.splice(0)) {
        this._pending.delete(p.ref);
        clearTimeout(p.timer);
        if (p.op === "join" || p.op === "leave") {
          const ack = { op: "ack", rewound: 0 };
          this._sseGroups(p.op, p.fields).then(() => p.resolve(ack), p.reject);
        } else {
          p.reject(unsupported(p.op));
        }
      }
      if (this._auto) { this._probeMs = WS_PROBE_MS; this._scheduleProbe(); }
    } else {
      this._stopProbe();
      this._wsFails = 0;
    }
    this._emit("transport", to);
  }

  /** On SSE: open a WebSocket after a while; if it opens, move back to WebSocket. */
  _scheduleProbe() {
    clearTimeout(this._probeTimer);
    const delay = this._probeMs;
    this._probeMs = Math.min(WS_PROBE_MAX_MS, delay * 2);
    this._probeTimer = setTimeout(() => {
      this._probeTimer = null;
      if (this._stopped || this.transport !== "sse") return;
      let ws;
      try { ws = this._probeWs = new this._WS(this.url); } catch { return this._scheduleProbe(); }
      ws.onopen = () => {  // the upgrade passed: close it, resume the session on a new one
        this._probeWs = null;
        ws.onclose = null;
        ws.close(1000);
        const stream = this._ws;
        this._switch("websocket");
        this._drop();
        stream?.close();
        this._open();
      };
      ws.onclose = () => { this._probeWs = null; this._scheduleProbe(); };
    }, delay);
  }

  _stopProbe() {
    clearTimeout(this._probeTimer);
    this._probeTimer = null;
    if (this._probeWs) {
      this._probeWs.onopen = this._probeWs.onclose = null;
      this._probeWs.close(1000);
      this._probeWs = null;
    }
  }

  /** On SSE, join or leave: the stream is opened again with the new groups (joins and
   * leaves made together share one reopen); resolves once a stream has them. */
  _sseGroups(op, { group, scope = "default", meta }) {
    const k = key(scope, group);
    if (op === "join") this._groups.set(k, { group, scope, ...(meta ? { meta } : {}) });
    else this._groups.delete(k);
    this._groupsDirty = true;
    if (this._live && this._streamGroups.has(k) === (op === "join")) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = { op, k, resolve, reject };
      w.timer = setTimeout(() => {
        this._sseWaits = this._sseWaits.filter((x) => x !== w);
        reject(new HeraldError("timeout", `no stream with ${op === "join" ? "" : "out "}${k}`));
      }, this._timeout);
      this._sseWaits.push(w);
      if (!this._reopenQueued) {
        this._reopenQueued = true;
        queueMicrotask(() => { this._reopenQueued = false; this._reopen(); });
      }
    });
  }

  /** Open the stream again now (new groups or token), resuming after `lastId`. */
  _reopen() {
    if (this._stopped || this.transport !== "sse" || !this._live) return;  // the next one will
    const stream = this._ws;
    this._drop();
    stream.close();
    this._open(true);
  }

  /** After a welcome: the joins and leaves it has done are done; the rest reopen. */
  _settleSse(sse) {
    const waits = this._sseWaits;
    this._sseWaits = [];
    for (const w of waits) {
      if (!sse || this._streamGroups.has(w.k) === (w.op === "join")) {
        clearTimeout(w.timer);
        w.resolve();
      } else {
        this._sseWaits.push(w);
      }
    }
    if (this._sseWaits.length) this._reopen();
  }

  /** A stream was refused: if joins were waiting for it, they fail (and are dropped). */
  _refuseJoins(err) {
    const joins = this._sseWaits.filter((w) => w.op === "join");
    if (!joins.length) return false;
    this._sseWaits = this._sseWaits.filter((w) => w.op !== "join");
    for (const w of joins) {
      this._groups.delete(w.k);
      clearTimeout(w.timer);
      w.reject(err);
    }
    return true;
  }

  _failSse(err) {
    for (const w of this._sseWaits.splice(0)) { clearTimeout(w.timer); w.reject(err); }
  }
}
