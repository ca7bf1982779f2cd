/**
 * herald.js: a dependency-free browser client for Herald (README.md has the protocol).
 * It reconnects as the close code says (RECONNECT below: one row per code), resumes its
 * session (memberships come back server-side, missed durable events are replayed after
 * `last_id`) and says so with a `gap` event when it could not, drops repeated durable ids,
 * refreshes the token before it expires, pings at the server's `welcome.heartbeat`, comes
 * back at once when the page is shown again or the network returns, and tracks tasks.
 *
 *   const herald = await Herald.connect({ getToken: () => fetchTokenFromMyBackend() });
 *   herald.on("event:chat", (data) => console.log(data.text));   // application events
 *   herald.on("disconnected", ({ code, reason, delay }) => console.log(code, delay));
 *   await herald.join("room:lobby");
 * @module herald
 */

// backoff: half the ceiling min(CAP, BASE * 2^attempt), plus jitter over the other half, so
// the wait grows whatever Math.random says (full jitter can stay near 0 for many attempts)
const BASE_MS = 250;
const CAP_MS = 10_000;
const STABLE_MS = 5_000;      // a socket welcomed this long resets the backoff
const PING_MS = 25_000;       // until a welcome says `heartbeat`
const WAKE_PROBE_MS = 3_000;  // a ping's deadline when the page comes back or goes online
const EXPIRY_MARGIN_S = 5;    // a token this close to `exp` is treated as expired
const SEEN_MAX = 10_000;      // durable ids remembered for de-duplication
const TASKS_MAX = 200;        // task trackers kept
const CLIENT_AWAY = 4000;     // our close code for a dead socket: not a goodbye, so it resumes

/**
 * What to do after each close code, in one place. `retry`: reconnect (else stop, with
 * `error` as lastError.code); `hint`: wait the `retry_ms=` of the close reason first;
 * `floor`: ms always waited; `backoff`: add half a ceiling that doubles with each attempt
 * that did not stay up STABLE_MS, plus jitter over its other half; `newToken`: call
 * getToken before the next hello; `gap`: the server ended the session, so what is missed is not replayed (no resume
 * token is presented and a `gap` event follows the next welcome). Unlisted codes: DEFAULT.
 */
export const RECONNECT = Object.freeze({
  1000: { retry: true, backoff: true, gap: true },       // the server said goodbye
  1001: { retry: true, backoff: true },                  // going away (proxy, shutdown)
  1006: { retry: true, backoff: true },                  // no close frame: network, crash
  1007: { retry: false, error: "bad_frame" },            // invalid UTF-8: our bug, would repeat
  1008: { retry: false, error: "policy" },               // origin, rate abuse, too many sockets
  1009: { retry: false, error: "too_large" },            // a frame over HERALD_MAX_FRAME
  1011: { retry: true, floor: 1_000, backoff: true },    // server error
  1012: { retry: true, hint: true, backoff: true },      // draining: elsewhere, after retry_ms
  1013: { retry: true, floor: 500, backoff: true },      // behind, or no Postgres to resume
  [CLIENT_AWAY]: { retry: true, backoff: true },         // ours: a ping went unanswered
  4401: { retry: true, backoff: true, newToken: true },  // token expired (stop: no getToken)
  4409: { retry: false, error: "replaced" },             // the session went to another socket
});
const DEFAULT_RULE = Object.freeze({ retry: true, floor: 1_000, backoff: true });

/** The client's own events; application events are `event:<name>` (and `event:*`). */
export const CLIENT_EVENTS = Object.freeze(["state", "welcome", "presence", "error", "gap",
                                            "left", "disconnected"]);

const key = (scope, group) => `${scope}/${group}`;

/** The rule for a close code, and the delay (ms) its reason hints at (`retry_ms=`). */
export function closeRule(code, reason = "") {
  const rule = RECONNECT[code] || DEFAULT_RULE;
  const hint = rule.hint ? /retry_ms=(\d+)/.exec(reason || "") : null;
  return { rule, hintMs: hint ? Number(hint[1]) : 0 };
}

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
   * @param {number} [opts.pingInterval] ms between pings; default: the welcome's heartbeat
   * @param {EventTarget} [opts.window] where "online"/"offline" fire (default: window)
   * @param {Document} [opts.document] where "visibilitychange" fires (default: document)
   */
  constructor({ url, token, getToken, WebSocket: impl, timeout = 10_000, pingInterval,
                window: win, document: doc } = {}) {
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
    /** The last socket close: {code, reason, delay} (delay null when it stopped). */
    this.lastClose = null;
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
      _tasks: new Map(), _warned: new Set(),
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
   * (`fn(state)`), "welcome", "presence", "error", "gap", "left", "disconnected". A bare
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

  /** Start connecting (idempotent); it reconnects until close() or a close code that stops. */
  connect() {
    if (!this._stopped) return this;
    this._stopped = false;
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
    this._failAll(new HeraldError("closed", "client closed"));
    this._setState("closed");
  }

  _stop() {
    this._stopped = true;
    this._gen++;  // a getToken still pending must not open a socket any more
    this._opening = 0;
    this._drop();
    this._win?.removeEventListener("online", this._onOnline);
    this._win?.removeEventListener("offline", this._onOffline);
    this._doc?.removeEventListener("visibilitychange", this._onVisible);
  }

  _setState(state) { if (this.state !== state) this._emit("state", (this.state = state)); }

  _tokenExpired() {
    const exp = this._token && tokenExpiry(this._token);
    return !!exp && exp - EXPIRY_MARGIN_S <= Date.now() / 1000;
  }

  /** Open one socket: at most one attempt is in flight (also while getToken is pending). */
  async _open() {
    if (this._stopped || this._opening || this._ws) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._setState(this._everOpen ? "reconnecting" : "connecting");
    const gen = this._gen;
    this._opening = 1;
    let ws;
    try {
      if (this._getToken && (!this._token || this._needToken || this._tokenExpired())) {
        const fresh = await this._getToken();
        if (gen !== this._gen) return;
        this._token = fresh;
        this._needToken = false;
      }
      if (this._stopped || gen !== this._gen) return;
      ws = this._ws = new this._WS(this.url);
    } catch (err) {
      if (gen !== this._gen) return;
      this._opening = 0;
      this._emit("error", err);
      return this._retry(DEFAULT_RULE, 0);
    } finally {
      if (gen === this._gen) this._opening = 0;
    }
    ws.onopen = () => {
      const hello = { op: "hello", ref: ++this._ref, token: this._token };
      if (this._resume && !this._lostSession) hello.resume = this._resume;
      if (this.lastId > 0) hello.last_id = this.lastId;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = ({ data }) => {
      let frame;
      try { frame = JSON.parse(data); } catch {
        return this._emit("error", new HeraldError("bad_frame", "a frame that is not JSON"));
      }
      this._frame(frame);
    };
    ws.onclose = (ev) => this._closed(ev);
  }

  /** Forget the current socket: no more of its events, no timers. */
  _drop() {
    if (this._ws) this._ws.onopen = this._ws.onmessage = this._ws.onclose = null;
    Object.values(this._timers).forEach(clearTimeout);
    clearTimeout(this._retryTimer);
    Object.assign(this, { _ws: null, _live: false, _timers: {}, _retryTimer: null });
  }

  /** A socket closed: look its code up in RECONNECT and retry or stop as it says. */
  _closed({ code, reason = "" }) {
    if (this._welcomedAt && Date.now() - this._welcomedAt >= STABLE_MS) this._attempt = 0;
    this._welcomedAt = 0;
    this._drop();
    this._failAll(new HeraldError("disconnected", `socket closed (${code})`), true);
    if (this._stopped) return;
    const { rule, hintMs } = closeRule(code, reason);
    if (!rule.retry || (rule.newToken && !this._getToken)) {
      this.lastError = new HeraldError(rule.error || "unauthorized", reason || `closed (${code})`);
      this.lastClose = { code, reason, delay: null };
      this._stop();
      this._emit("disconnected", this.lastClose);
      this._emit("error", this.lastError);
      return this._setState("closed");
    }
    if (rule.newToken) this._needToken = true;
    if (rule.gap) this._lostSession = true;
    const delay = this._retry(rule, hintMs);
    this.lastClose = { code, reason, delay };
    this._emit("disconnected", this.lastClose);
  }

  /** Schedule the next attempt as `rule` says; returns the delay in ms. */
  _retry(rule, hintMs) {
    if (this._stopped) return null;
    this._setState(this._everOpen ? "reconnecting" : "connecting");
    const ceiling = Math.min(CAP_MS, BASE_MS * 2 ** this._attempt);
    if (rule.backoff) this._attempt++;
    const jitter = rule.backoff ? ceiling / 2 + (Math.random() * ceiling) / 2 : 0;
    const delay = Math.round(hintMs + (rule.floor || 0) + jitter);
    clearTimeout(this._retryTimer);
    // offline: wait for "online" (which reconnects at once) rather than spend attempts
    this._retryTimer = this._offline ? null : setTimeout(() => this._open(), delay);
    return delay;
  }

  /** The page is visible again or the network is back: check the socket, or reconnect now. */
  _wake() {
    if (this._stopped) return;
    if (this._tokenExpired()) {  // the server has closed it (4401) or is about to
      if (!this._getToken) return;
      this._needToken = true;
      if (this._ws) this._away("token expired");  // then at once, not after the backoff
    }
    if (this._ws) return this._live ? this._ping(WAKE_PROBE_MS) : undefined;
    if (!this._opening) this._open();  // skip the backoff wait
  }

  /** Give up on the current socket (dead or useless) and resume on a new one. */
  _away(reason) {
    const ws = this._ws;
    ws?.close(CLIENT_AWAY, reason);
    this._closed({ code: CLIENT_AWAY, reason });
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
    const lost = this._lostSession;
    Object.assign(this, { connectionId: w.connection_id, frontend: w.frontend, _resume: w.resume,
                          _everOpen: true, _live: true, _welcomedAt: Date.now(),
                          _lostSession: false });
    if (!this._pingOpt && w.heartbeat > 0) this._pingEvery = w.heartbeat * 1000;
    // what was missed is gone (retention, a new epoch) or was never asked for (no resume):
    // the app should resynchronise from its backend
    let gap = null;
    if (w.gap) gap = "retention";
    else if (w.recovered === false) gap = "not_recovered";
    else if (reconnect && !w.resumed) gap = lost ? "session_ended" : "not_resumed";
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
    if (gap) this._emit("gap", { reason: gap, lastId: this.lastId, welcome: w });
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
    this._emit(`event:${f.event}`, f.data, f);
    this._emit("event:*", f);
    // the 0.1 API: bare names, never one of the client's own events
    if (!CLIENT_EVENTS.includes(f.event)) this._legacy(f.event, f.data, f);
    this._legacy("*", f);
  }

  _legacy(name, ...args) {
    if (!this._handlers.get(name)?.size) return;
    if (!this._warned.has(name)) {
      this._warned.add(name);
      console.warn(`herald: on(${JSON.stringify(name)}) for application events is deprecated;` +
                   ` use on(${JSON.stringify(`event:${name}`)})`);
    }
    this._emit(name, ...args);
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
  request(op, fields = {}, { timeout = this._timeout } = {}) {
    const ref = ++this._ref;
    return new Promise((resolve, reject) => {
      const p = { resolve, reject, sent: false, raw: JSON.stringify({ op, ref, ...fields }) };
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
    if (ack.id !== undefined && ack.id !== null) this._remember(ack.id);
    return ack.id ?? undefined;
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

  /** Ping every heartbeat; no pong within `wait` ms means a dead socket: resume elsewhere. */
  _schedulePing() {
    clearTimeout(this._timers.ping);
    this._timers.ping = setTimeout(() => this._ping(), this._pingEvery);
  }

  _ping(wait = Math.min(this._timeout, this._pingEvery)) {
    clearTimeout(this._timers.ping);
    const ws = this._ws;
    this.request("ping", {}, { timeout: wait }).then(() => {
      if (ws === this._ws) this._schedulePing();
    }, (err) => {
      if (err.code === "timeout" && ws === this._ws && ws) this._away("no pong");
    });
  }
}

export default Herald;
