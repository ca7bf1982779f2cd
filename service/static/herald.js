/**
 * herald.js: a dependency-free browser client for Herald (README.md has the protocol).
 * It reconnects with full-jitter backoff, resumes its session (memberships come back
 * server-side, missed durable events are replayed after `last_id`), drops repeated
 * durable ids, refreshes the token before it expires, and tracks tasks by id.
 *
 *   const herald = await Herald.connect({ getToken: () => fetchTokenFromMyBackend() });
 *   herald.on("chat", (data) => console.log(data.text));
 *   await herald.join("room:lobby");
 * @module herald
 */

const BASE_MS = 250;          // backoff: full jitter over min(CAP, BASE * 2^attempt)
const CAP_MS = 10_000;
const SEEN_MAX = 10_000;      // durable ids remembered for de-duplication
const TASKS_MAX = 200;        // task trackers kept
/** Close codes after which reconnecting cannot help, and the error code they surface. */
const FATAL = { 1008: "policy", 1009: "too_large", 4409: "replaced" };
const CLIENT_AWAY = 4000;     // our close code for a dead socket: not a goodbye, so it resumes

const key = (scope, group) => `${scope}/${group}`;

/** An error from the server (an `error` frame) or from the client; `.code` says which. */
export class HeraldError extends Error {
  constructor(code, message) { super(message || code); this.name = "HeraldError"; this.code = code; }
}

/** Seconds since the epoch at which a JWT expires (its payload's `exp`), or null. */
export function tokenExpiry(token) {
  try {
    const b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const { exp } = JSON.parse(atob(b64 + "===".slice((b64.length + 3) % 4)));
    return typeof exp === "number" ? exp : null;
  } catch { return null; }
}

/** A task's life as its task.* events tell it. */
export class HeraldTask {
  constructor(id) {
    /** @type {"queued"|"started"|"succeeded"|"failed"} */
    this.state = "queued";
    Object.assign(this, { id, name: null, progress: 0, message: null, result: undefined,
                          error: null, _fns: [] });
    /** Resolves with the result on task.succeeded; rejects (code "task_failed") on task.failed. */
    this.done = new Promise((res, rej) => Object.assign(this, { _resolve: res, _reject: rej }));
    this.done.catch(() => {}); // not an unhandled rejection when nobody awaits it
  }

  /** Call `fn(progress, message, task)` on every report, and now if some came already. */
  onProgress(fn) {
    this._fns.push(fn);
    if (this.progress > 0) fn(this.progress, this.message, this);
    return this;
  }

  _report(progress) {
    this.progress = progress;
    this._fns.forEach((fn) => fn(progress, this.message, this));
  }

  _apply(event, data) {
    if (data.name) this.name = data.name;
    if (this.state === "succeeded" || this.state === "failed") return; // final
    const kind = event.slice("task.".length);
    if (kind === "started" || kind === "progress") this.state = "started";
    if (kind === "progress") {
      this.message = data.message ?? null;
      this._report(data.progress);
    } else if (kind === "succeeded") {
      Object.assign(this, { state: kind, result: data.result });
      this._report(1);
      this._resolve(data.result);
    } else if (kind === "failed") {
      Object.assign(this, { state: kind, error: data.error });
      this._reject(new HeraldError("task_failed", data.error));
    }
  }
}

/** One logical connection to Herald that outlives sockets, frontends and tokens. */
export class Herald {
  /**
   * @param {object} opts
   * @param {string} [opts.url] ws(s)://host/ws; defaults to this page's origin
   * @param {string} [opts.token] a client JWT
   * @param {() => Promise<string>} [opts.getToken] a fresh token (before expiry, after 4401)
   * @param {typeof WebSocket} [opts.WebSocket] a WebSocket implementation
   * @param {number} [opts.timeout] ms before a request is rejected with code "timeout"
   * @param {number} [opts.pingInterval] ms between pings that detect a dead socket
   */
  constructor({ url, token, getToken, WebSocket: impl, timeout = 10_000,
                pingInterval = 25_000 } = {}) {
    if (!token && !getToken) throw new TypeError("Herald needs a token or getToken");
    this.url = url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
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
    Object.assign(this, {
      _token: token || null, _getToken: getToken, _WS: impl || globalThis.WebSocket,
      _timeout: timeout, _pingEvery: pingInterval, _needToken: false,
      _ws: null, _live: false, _stopped: true, _everOpen: false, _attempt: 0, _resume: null,
      _ref: 0, _pending: new Map(), _queue: [], _timers: {},
      _handlers: new Map(), _seen: new Set(), _groups: new Map(), _monitors: new Map(),
      _tasks: new Map(),
    });
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
   * Listen to an event name (`fn(data, frame)`), to "*" (`fn(frame)` for every event), or
   * to the client's own: "state" (`fn(state)`), "welcome", "presence", "error", "gap".
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

  /** Start connecting (idempotent); it reconnects until close() or a fatal close code. */
  connect() { if (this._stopped) { this._stopped = false; this._open(); } return this; }

  /** Say goodbye (close code 1000: the server ends the session) and stop reconnecting. */
  close() {
    this._stopped = true;
    const ws = this._ws;
    this._drop();
    ws?.close(1000);
    this._failAll(new HeraldError("closed", "client closed"));
    this._setState("closed");
  }

  _setState(state) { if (this.state !== state) this._emit("state", (this.state = state)); }

  async _open() {
    this._setState(this._everOpen ? "reconnecting" : "connecting");
    let ws;
    try {
      if (this._getToken && (!this._token || this._needToken)) {
        this._token = await this._getToken();
        this._needToken = false;
      }
      if (this._stopped) return;
      ws = this._ws = new this._WS(this.url);
    } catch (err) {
      this._emit("error", err);
      return this._retry();
    }
    ws.onopen = () => {
      const hello = { op: "hello", ref: ++this._ref, token: this._token };
      if (this._resume) hello.resume = this._resume;
      if (this.lastId > 0) hello.last_id = this.lastId;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = ({ data }) => this._frame(JSON.parse(data));
    ws.onclose = (ev) => this._closed(ev);
  }

  /** Forget the current socket: no more of its events, no timers. */
  _drop() {
    if (this._ws) this._ws.onopen = this._ws.onmessage = this._ws.onclose = null;
    Object.values(this._timers).forEach(clearTimeout);
    Object.assign(this, { _ws: null, _live: false, _timers: {} });
  }

  _closed({ code, reason }) {
    this._drop();
    this._failAll(new HeraldError("disconnected", `socket closed (${code})`), true);
    if (this._stopped) return;
    if (code in FATAL || (code === 4401 && !this._getToken)) {
      this.lastError = new HeraldError(FATAL[code] || "unauthorized", reason || `closed (${code})`);
      this._stopped = true;
      this._emit("error", this.lastError);
      return this._setState("closed");
    }
    if (code === 4401) this._needToken = true;
    if (code === 1012) {  // draining: come back after its hint (to another frontend)
      const hint = /retry_ms=(\d+)/.exec(reason || "");
      return this._retry(hint ? Number(hint[1]) : 0, true);
    }
    this._retry(0, code === 1013);  // 1013: we fell behind; resume straight away
  }

  /** Reconnect after `extra` ms plus full jitter (the first step only, when `first`). */
  _retry(extra = 0, first = false) {
    if (this._stopped) return;
    this._setState(this._everOpen ? "reconnecting" : "connecting");
    const ceiling = Math.min(CAP_MS, BASE_MS * 2 ** (first ? 0 : this._attempt++));
    this._timers.retry = setTimeout(() => this._open(), extra + Math.random() * ceiling);
  }

  _frame(f) {
    if (f.op === "welcome") return this._welcome(f);
    if (f.op === "event") return this._event(f);
    if (f.op === "presence") return this._presence(f);
    const p = f.ref !== undefined && this._pending.get(f.ref);
    if (p) {
      this._pending.delete(f.ref);
      clearTimeout(p.timer);
      if (f.op === "error") p.reject(new HeraldError(f.code, f.message));
      else p.resolve(f);
    } else if (f.op === "error") {
      this._emit("error", new HeraldError(f.code, f.message));
    }
  }

  _welcome(w) {
    const reconnect = this._everOpen;
    Object.assign(this, { connectionId: w.connection_id, frontend: w.frontend, _resume: w.resume,
                          _attempt: 0, _everOpen: true, _live: true });
    if (w.gap) this._emit("gap", w);  // some missed events are gone: resync from the backend
    // no durable id seen yet: resume from the log's head as of this welcome, so what is
    // published while we are away is replayed even before our first durable event
    if (this.lastId === 0 && typeof w.log_id === "number") this.lastId = w.log_id;
    const report = (err) => this._emit("error", err);
    if (w.resumed) {  // the server restored the memberships the (new) token still allows
      this._groups = new Map(w.groups.map((g) => [key(g.scope, g.group), g]));
    } else if (reconnect) {
      for (const g of this._groups.values()) this.join(g.group, { scope: g.scope }).catch(report);
    }
    for (const m of this._monitors.values()) this._sendMonitor(m).catch(report);
    this._setState("open");
    this._emit("welcome", w);
    for (const p of this._queue.splice(0)) this._send(p);
    this._scheduleRefresh();
    this._schedulePing();
  }

  _event(f) {
    if (f.id !== undefined) {
      if (this._seen.has(f.id)) return;  // a replay of something we have
      this._remember(f.id);
    }
    if (f.event.startsWith("task.") && f.data?.task_id) {
      this.task(f.data.task_id)._apply(f.event, f.data);
    }
    this._emit(f.event, f.data, f);
    this._emit("*", f);
  }

  _remember(id) {
    this._seen.add(id);
    this.lastId = Math.max(this.lastId, id);
    if (this._seen.size > SEEN_MAX) this._seen.delete(this._seen.values().next().value);
  }

  _presence(f) {
    const m = this._monitors.get(key(f.scope, f.group));
    if (!m) return;
    const snapshot = m.awaiting;  // the first presence after `monitor` is the snapshot
    m.awaiting = false;
    if (snapshot) m.members.clear();
    for (const x of f.joins) m.members.set(x.connection_id, x);
    for (const x of f.leaves) m.members.delete(x.connection_id);
    for (const fn of m.fns) fn(m.members, { joins: f.joins, leaves: f.leaves, snapshot });
    this._emit("presence", f);
  }

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

  /** Send a frame and resolve with its reply (queued while reconnecting). */
  request(op, fields = {}) {
    const ref = ++this._ref;
    return new Promise((resolve, reject) => {
      const p = { resolve, reject, sent: false, raw: JSON.stringify({ op, ref, ...fields }) };
      p.timer = setTimeout(() => {
        this._pending.delete(ref);
        this._queue = this._queue.filter((q) => q !== p);
        reject(new HeraldError("timeout", `no reply to ${op}`));
      }, this._timeout);
      this._pending.set(ref, p);
      if (this._live) this._send(p);
      else this._queue.push(p);
    });
  }

  _send(p) { p.sent = true; this._ws.send(p.raw); }

  /** Join a group (kept across reconnects). */
  async join(group, { scope = "default" } = {}) {
    await this.request("join", { group, scope });
    this._groups.set(key(scope, group), { group, scope });
  }

  /** Leave a group. */
  async leave(group, { scope = "default" } = {}) {
    this._groups.delete(key(scope, group));
    await this.request("leave", { group, scope });
  }

  /** The members of a group across the cluster (or on this frontend only, with `local`). */
  async members(group, { scope = "default", local = false } = {}) {
    return (await this.request("members", { group, scope, local })).members;
  }

  /**
   * Watch a group: `onPresence(members, change)` gets the live Map of connection id →
   * {connection_id, user_id, frontend} after the snapshot and after every change.
   * Re-monitored after every reconnect (the snapshot then replaces the map).
   */
  async monitor(group, { scope = "default" } = {}, onPresence = undefined) {
    const k = key(scope, group);
    let m = this._monitors.get(k);
    const fresh = !m;
    if (fresh) this._monitors.set(k, (m = { group, scope, members: new Map(), fns: new Set() }));
    if (onPresence) m.fns.add(onPresence);  // before the request: the snapshot follows its ack
    if (fresh && this._live) {
      await this._sendMonitor(m).catch((err) => { this._monitors.delete(k); throw err; });
    }
    const stop = async () => {
      if (onPresence) m.fns.delete(onPresence);
      if (m.fns.size || this._monitors.get(k) !== m) return;
      this._monitors.delete(k);
      await this.request("demonitor", { group, scope });
    };
    return { members: m.members, stop };
  }

  _sendMonitor(m) {
    m.awaiting = true;
    return this.request("monitor", { group: m.group, scope: m.scope });
  }

  /**
   * Publish to one target: {group, scope?} | {user} | {connection} | {all: true}. The
   * publishing socket does not get its own copy. Resolves with the durable id, if durable.
   */
  async publish(target, event, data = null, { durable = false } = {}) {
    const ack = await this.request("publish", { ...target, event, data, durable });
    if (ack.id !== undefined) this._remember(ack.id);
    return ack.id;
  }

  /** Start a task; resolves with its HeraldTask (events that beat the ack are kept). */
  async startTask(name, args = {}, { notify = "user" } = {}) {
    const ack = await this.request("task", { name, args, notify });
    const task = this.task(ack.task_id);
    task.name = task.name || name;
    return task;
  }

  /** The tracker of a task id: created on first use or first task.* event for it. */
  task(id) {
    let task = this._tasks.get(id);
    if (!task) {
      this._tasks.set(id, (task = new HeraldTask(id)));
      if (this._tasks.size > TASKS_MAX) this._tasks.delete(this._tasks.keys().next().value);
    }
    return task;
  }

  /** With getToken: swap in a fresh token shortly before this one expires. */
  _scheduleRefresh() {
    const exp = this._getToken && tokenExpiry(this._token);
    if (!exp) return;
    const left = exp * 1000 - Date.now();
    this._timers.refresh = setTimeout(async () => {
      try {
        const token = await this._getToken();
        const ack = await this.request("refresh", { token });
        this._token = token;
        // groups the new token no longer grants were left by the server: forget them too
        for (const g of ack.left || []) {
          this._groups.delete(key(g.scope, g.group));
          this._emit("left", g);
        }
        this._scheduleRefresh();
      } catch (err) {
        this._emit("error", err);
        if (this._live) this._timers.refresh = setTimeout(() => this._scheduleRefresh(), 5_000);
      }
    }, Math.min(2 ** 31 - 1, Math.max(1_000, left - Math.min(60_000, left / 5))));
  }

  /** A ping without a pong in time means a dead socket: drop it and resume elsewhere. */
  _schedulePing() {
    this._timers.ping = setTimeout(() => {
      const ws = this._ws;
      this.request("ping").then(() => this._schedulePing(), (err) => {
        if (err.code !== "timeout" || ws !== this._ws) return;
        ws.close(CLIENT_AWAY, "no pong");
        this._closed({ code: CLIENT_AWAY, reason: "no pong" });
      });
    }, this._pingEvery);
  }
}

export default Herald;
