/**
 * herald.js: a dependency-free browser client for Herald (README.md has the protocol).
 * It reconnects as the close code says (RECONNECT, herald-reconnect.js: one row per code),
 * resumes its session (memberships come back server-side, missed durable events are
 * replayed after `last_id`) and says so with a `gap` event when it could not, drops
 * repeated durable ids, refreshes the token before it expires, pings at the server's
 * `welcome.heartbeat`, comes back at once when the page is shown again or the network
 * returns, and tracks tasks.
 * Presence is kept per connection and per user (herald-presence.js); where WebSockets
 * cannot pass (a proxy that refuses upgrades), it receives over `GET /sse` instead
 * (herald-sse.js) and tries WebSocket again now and then.
 *
 *   const herald = await Herald.connect({ getToken: () => fetchTokenFromMyBackend() });
 *   herald.on("event:chat", (data) => console.log(data.text));   // application events
 *   herald.on("disconnected", ({ code, reason, delay }) => console.log(code, delay));
 *   await herald.join("room:lobby");
 *
 * This module is the Herald class (its state, listeners, requests, groups and publish)
 * and the package's exports. Its other methods live in modules by job, copied onto
 * Herald.prototype below: herald-socket.js (a socket's life: open, pings, close, retry),
 * herald-receive.js (welcome, gap, events), herald-fallback.js (the switch to SSE and
 * back, groups on a stream), herald-monitor.js (presence), herald-task.js (tasks),
 * herald-token.js (expiry, refresh); herald-util.js has what they share.
 * @module herald
 */
import { FallbackMethods, WS_PROBE_MS } from "./herald-fallback.js";
import { MonitorMethods } from "./herald-monitor.js";
import { ReceiveMethods } from "./herald-receive.js";
import { SocketMethods } from "./herald-socket.js";
import { sseUrlFor } from "./herald-sse.js";
import { TaskMethods } from "./herald-task.js";
import { TokenMethods } from "./herald-token.js";
import { HeraldError, key, unsupported } from "./herald-util.js";

export { CLIENT_EVENTS } from "./herald-receive.js";
export { RECONNECT, closeRule } from "./herald-reconnect.js";
export { HeraldTask } from "./herald-task.js";
export { tokenExpiry } from "./herald-token.js";
export { HeraldError };

const PING_MS = 25_000;       // until a welcome says `heartbeat`

/** One logical connection to Herald that outlives sockets, frontends and tokens. */
export class Herald {
  /**
   * @param {object} opts
   * @param {string} [opts.url] ws(s)://host/ws; defaults to this page's origin
   * @param {string} [opts.token] a client JWT
   * @param {() => Promise<string>} [opts.getToken] a fresh token (before expiry, after 4401)
   * @param {typeof WebSocket} [opts.WebSocket] a WebSocket implementation
   * @param {number} [opts.timeout] ms before a request is rejected with code "timeout"
   * @param {number} [opts.pingInterval] ms between pings; default: the welcome's heartbeat
   * @param {EventTarget} [opts.window] where "online"/"offline" fire (default: window)
   * @param {Document} [opts.document] where "visibilitychange" fires (default: document)
   * @param {"auto"|"websocket"|"sse"} [opts.transport] auto: WebSocket, SSE when it fails
   * @param {string} [opts.sseUrl] http(s)://host/sse; defaults to `url`'s /ws → /sse
   * @param {typeof fetch} [opts.fetch] the fetch that reads SSE (default: globalThis.fetch)
   */
  constructor({ url, token, getToken, WebSocket: impl, timeout = 10_000, pingInterval,
                window: win, document: doc, transport = "auto", sseUrl, fetch: fetchImpl } = {}) {
    if (!token && !getToken) throw new TypeError("Herald needs a token or getToken");
    if (!["auto", "websocket", "sse"].includes(transport)) {
      throw new TypeError(`transport must be "auto", "websocket" or "sse", not ${transport}`);
    }
    this.url = url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    this.sseUrl = sseUrl || sseUrlFor(this.url);
    /** @type {"websocket"|"sse"} The transport in use (or being tried). */
    this.transport = transport === "sse" ? "sse" : "websocket";
    /** @type {"connecting"|"open"|"reconnecting"|"closed"} */
    this.state = "closed";
    /** The id of the frontend the socket is on. */
    this.frontend = null;
    /** The session's connection id (the same across resumes). */
    this.connectionId = null;
    /** The highest durable id seen (sent as `last_id` on reconnect). */
    this.lastId = 0;
    /** Why the client stopped, when it stopped by itself. */
    this.lastError = null;
    /** The last socket close: {code, reason, delay} (delay null when it stopped). */
    this.lastClose = null;
    /** The log's epoch (`welcome.epoch`) that `lastId` belongs to; sent as `hello.epoch`. */
    this.epoch = null;
    /** After a welcome: false when a `gap` followed it, true when all missed was replayed,
     * null when there was nothing to recover (the first welcome). */
    this.recovered = null;
    const g = globalThis;
    Object.assign(this, {
      _token: token || null, _getToken: getToken, _WS: impl || g.WebSocket,
      _timeout: timeout, _pingOpt: pingInterval, _pingEvery: pingInterval || PING_MS,
      _needToken: false, _win: win || (g.window?.addEventListener ? g.window : null),
      _doc: doc || (g.document?.addEventListener ? g.document : null),
      _ws: null, _live: false, _stopped: true, _everOpen: false, _attempt: 0, _resume: null,
      _opening: 0, _gen: 0, _welcomedAt: 0, _lostSession: false, _offline: false,
      _ref: 0, _pending: new Map(), _queue: [], _timers: {}, _retryTimer: null,
      _handlers: new Map(), _seen: new Set(), _groups: new Map(), _monitors: new Map(),
      _tasks: new Map(), _warned: new Set(), _hasLastId: false, _askedLastId: false,
      _heartbeatMs: PING_MS,
      // transports: WebSockets that never opened in a row, the probe back from SSE, the
      // stream's groups and the joins/leaves waiting for a stream that has them
      _auto: transport === "auto", _wsFails: 0, _probeMs: WS_PROBE_MS, _probeTimer: null,
      _probeWs: null, _fetch: fetchImpl, _streamGroups: new Set(), _sseWaits: [],
      _reopenQueued: false, _groupsDirty: false,
    });
    this._onOnline = () => { this._offline = false; this._wake(); };
    this._onOffline = () => {  // no attempts until "online"; a live socket is left to the pings
      this._offline = true;
      if (this._retryTimer) { clearTimeout(this._retryTimer); this._retryTimer = null; }
    };
    this._onVisible = () => { if (this._doc.visibilityState === "visible") this._wake(); };
  }

  /** Create a client and resolve with it once open; rejects if it stops first. */
  static connect(opts) {
    const h = new Herald(opts);
    return new Promise((resolve, reject) => {
      const onState = (state) => {
        if (state !== "open" && state !== "closed") return;
        h.off("state", onState);
        if (state === "open") resolve(h);
        else reject(h.lastError || new HeraldError("closed"));
      };
      h.on("state", onState).connect();
    });
  }

  /**
   * Listen to an application event: "event:<name>" (`fn(data, frame)`) or "event:*"
   * (`fn(frame)` for every event); or to the client's own (CLIENT_EVENTS): "state"
   * (`fn(state)`), "welcome", "presence", "error", "gap", "left", "disconnected",
   * "transport" (`fn(transport)`: "websocket" or "sse", when it changes). A bare
   * name that is not the client's still gets application events, with a warning (0.1 API).
   */
  on(name, fn) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(fn);
    return this;
  }

  /** Stop listening. */
  off(name, fn) { this._handlers.get(name)?.delete(fn); return this; }

  _emit(name, ...args) {
    const fns = [...(this._handlers.get(name) || [])];
    if (name === "error" && !fns.length) console.warn("herald:", ...args);
    for (const fn of fns) {
      try { fn(...args); } catch (err) { console.error("herald: a handler threw", err); }
    }
  }

  /**
   * Start connecting (idempotent); it reconnects until close() or a close code that stops.
   * With transport "auto" it starts on WebSocket again.
   */
  connect() {
    if (!this._stopped) return this;
    this._stopped = false;
    if (this._auto) { this._wsFails = 0; this._switch("websocket"); }
    this._win?.addEventListener("online", this._onOnline);
    this._win?.addEventListener("offline", this._onOffline);
    this._doc?.addEventListener("visibilitychange", this._onVisible);
    this._open();
    return this;
  }

  /** Say goodbye (close code 1000: the server ends the session) and stop reconnecting. */
  close() {
    const ws = this._ws;
    this._stop();
    ws?.close(1000);
    const err = new HeraldError("closed", "client closed");
    this._failAll(err);
    this._failSse(err);
    this._setState("closed");
  }

  _stop() {
    this._stopped = true;
    this._gen++;  // a getToken still pending must not open a socket any more
    this._opening = 0;
    this._drop();
    this._stopProbe();
    this._win?.removeEventListener("online", this._onOnline);
    this._win?.removeEventListener("offline", this._onOffline);
    this._doc?.removeEventListener("visibilitychange", this._onVisible);
  }

  _setState(state) { if (this.state !== state) this._emit("state", (this.state = state)); }

  /** Reject requests: those already sent (the socket died), or all of them. */
  _failAll(err, sentOnly = false) {
    for (const [ref, p] of this._pending) {
      if (sentOnly && !p.sent) continue;
      this._pending.delete(ref);
      clearTimeout(p.timer);
      p.reject(err);
    }
    if (!sentOnly) this._queue = [];
  }

  /**
   * Send a frame and resolve with its reply (queued while reconnecting). On SSE it rejects
   * at once with code "unsupported_transport" (join and leave have their own way there).
   */
  request(op, fields = {}, { timeout = this._timeout } = {}) {
    if (this.transport === "sse") return Promise.reject(unsupported(op));
    const ref = ++this._ref;
    return new Promise((resolve, reject) => {
      const p = { resolve, reject, sent: false, op, fields, ref,
                  raw: JSON.stringify({ op, ref, ...fields }) };
      p.timer = setTimeout(() => {
        this._pending.delete(ref);
        this._queue = this._queue.filter((q) => q !== p);
        reject(new HeraldError("timeout", `no reply to ${op}`));
      }, timeout);
      this._pending.set(ref, p);
      if (this._live) this._send(p);
      else this._queue.push(p);
    });
  }

  _send(p) { p.sent = true; this._ws.send(p.raw); }

  /**
   * Join a group (kept across reconnects, with its meta). `meta`: this connection's
   * presence meta there; `rewind`: the group's last N durable events follow (as events).
   * Resolves with {rewound}. On SSE the stream is opened again with the group; a stream
   * carries no meta and rewinds nothing (the meta is kept for a later WebSocket).
   */
  async join(group, { scope = "default", meta, rewind } = {}) {
    if (this.transport === "sse") {
      await this._sseGroups("join", { group, scope, meta });
      return { rewound: 0 };
    }
    const fields = { group, scope };
    if (meta !== undefined) fields.meta = meta;
    if (rewind) fields.rewind = rewind;
    const ack = await this.request("join", fields);
    const k = key(scope, group), kept = meta ?? this._groups.get(k)?.meta;
    this._groups.set(k, { group, scope, ...(kept ? { meta: kept } : {}) });
    return { rewound: ack.rewound ?? 0 };
  }

  /** Leave a group. */
  async leave(group, { scope = "default" } = {}) {
    if (this.transport === "sse") return this._sseGroups("leave", { group, scope });
    this._groups.delete(key(scope, group));
    await this.request("leave", { group, scope });
  }

  /** Replace this connection's presence meta in a group it has joined (WebSocket only). */
  async update(group, meta, { scope = "default" } = {}) {
    await this.request("update", { group, scope, meta });
    const g = this._groups.get(key(scope, group));
    if (g) g.meta = meta;  // a join again (after a session that was not resumed) takes it
  }

  /**
   * A page of a group's durable events, oldest first: {events, gap} (WebSocket only).
   * `after` an id (page forward), else the newest before `before` (page back).
   */
  async history(group, { scope = "default", limit, before, after } = {}) {
    const fields = { group, scope };
    for (const [k, v] of Object.entries({ limit, before, after })) {
      if (v !== undefined) fields[k] = v;
    }
    const reply = await this.request("history", fields);
    return { events: reply.events, gap: reply.gap };
  }

  /** The members of a group across the cluster (or on this frontend only, with `local`). */
  async members(group, { scope = "default", local = false } = {}) {
    return (await this.request("members", { group, scope, local })).members;
  }

  /**
   * Publish to one target: {group, scope?} | {user} | {connection} | {all: true}. The
   * publishing socket does not get its own copy. Resolves with the durable id, if durable.
   */
  async publish(target, event, data = null, { durable = false } = {}) {
    const ack = await this.request("publish", { ...target, event, data, durable });
    if (ack.id !== undefined && ack.id !== null) this._remember(ack.id);
    return ack.id ?? undefined;
  }
}

// the modules' methods become Herald's own, as if written in the class (non-enumerable):
// one class outside, one job per module inside; a name defined twice is a mistake
for (const part of [SocketMethods, ReceiveMethods, FallbackMethods, MonitorMethods,
                    TaskMethods, TokenMethods]) {
  for (const [name, d] of Object.entries(Object.getOwnPropertyDescriptors(part.prototype))) {
    if (name === "constructor") continue;
    if (Object.hasOwn(Herald.prototype, name)) throw new Error(`herald: ${name} twice`);
    Object.defineProperty(Herald.prototype, name, d);
  }
}

export default Herald;
