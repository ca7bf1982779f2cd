/**
 * herald.js: a dependency-free browser client for Herald (README.md has the protocol).
 * It reconnects as the close code says (RECONNECT below: one row per code), resumes its
 * session (memberships come back server-side, missed durable events are replayed after
 * `last_id`) and says so with a `gap` event when it could not, drops repeated durable ids,
 * refreshes the token before it expires, pings at the server's `welcome.heartbeat`, comes
 * back at once when the page is shown again or the network returns, and tracks tasks.
 * Presence is kept per connection and per user (herald-presence.js); where WebSockets
 * cannot pass (a proxy that refuses upgrades), it receives over `GET /sse` instead
 * (herald-sse.js) and tries WebSocket again now and then.
 *
 *   const herald = await Herald.connect({ getToken: () => fetchTokenFromMyBackend() });
 *   herald.on("event:chat", (data) => console.log(data.text));   // application events
 *   herald.on("disconnected", ({ code, reason, delay }) => console.log(code, delay));
 *   await herald.join("room:lobby");
 * @module herald
 */
import { PresenceMap } from "./herald-presence.js";
import { SseSocket, sseUrlFor } from "./herald-sse.js";

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
const WS_FAILS_BEFORE_SSE = 3;      // consecutive WebSockets that never opened: try SSE
const WS_PROBE_MS = 5_000;          // on SSE: try a WebSocket this long after the switch,
const WS_PROBE_MAX_MS = 300_000;    // doubling after every probe that fails, up to this
const SSE_SILENT_HEARTBEATS = 2;    // a stream silent this many heartbeats is dead

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
                                            "left", "disconnected", "transport"]);
/** Ops that need a WebSocket: on SSE they reject with code "unsupported_transport". */
const unsupported = (op) => new HeraldError("unsupported_transport",
  `${op} needs a WebSocket, and this client is on SSE, which only receives ` +
  "(herald.transport; it tries WebSocket again by itself)");

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

  _tokenExpired() {
    const exp = this._token && tokenExpiry(this._token);
    return !!exp && exp - EXPIRY_MARGIN_S <= Date.now() / 1000;
  }

  /**
   * Open one socket (or SSE stream): at most one attempt is in flight (also while getToken
   * is pending). `quiet`: a stream reopened on purpose (groups, token), not a reconnect.
   */
  async _open(quiet = false) {
    if (this._stopped || this._opening || this._ws) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    if (!quiet) this._setState(this._everOpen ? "reconnecting" : "connecting");
    const gen = this._gen;
    this._opening = 1;
    let ws, constructing = false;
    try {
      if (this._getToken && (!this._token || this._needToken || this._tokenExpired())) {
        const fresh = await this._getToken();
        if (gen !== this._gen) return;
        this._token = fresh;
        this._needToken = false;
      }
      if (this._stopped || gen !== this._gen) return;
      constructing = true;
      this._askedLastId = this._hasLastId;
      ws = this._ws = this.transport === "sse" ? this._openStream() : new this._WS(this.url);
    } catch (err) {
      if (gen !== this._gen) return;
      this._opening = 0;
      this._emit("error", err);
      // no WebSocket here at all (or a URL it refuses): SSE at once, when allowed to
      if (constructing && this._auto && this.transport === "websocket") {
        this._wsFails = WS_FAILS_BEFORE_SSE;
        this._switch("sse");
        return this._retry({ retry: true }, 0);
      }
      return this._retry(DEFAULT_RULE, 0);
    } finally {
      if (gen === this._gen) this._opening = 0;
    }
    let opened = false;
    ws.onopen = () => {
      opened = true;
      if (this.transport === "sse") return;  // the token went with the request
      this._wsFails = 0;
      const hello = { op: "hello", ref: ++this._ref, token: this._token };
      if (this._resume && !this._lostSession) hello.resume = this._resume;
      if (this._askedLastId) hello.last_id = this.lastId;
      if (this._askedLastId && this.epoch) hello.epoch = this.epoch;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = ({ data }) => {
      let frame;
      try { frame = JSON.parse(data); } catch {
        return this._emit("error", new HeraldError("bad_frame", "a frame that is not JSON"));
      }
      this._frame(frame);
    };
    ws.onclose = (ev) => {
      if (!opened && this.transport === "websocket") this._wsFails++;
      this._closed(ev);
    };
  }

  /** A stream for the groups joined, resuming after `lastId` of `epoch`. */
  _openStream() {
    const groups = [...this._groups.values()].map((g) => encodeURIComponent(key(g.scope, g.group)));
    let url = `${this.sseUrl}${this.sseUrl.includes("?") ? "&" : "?"}groups=${groups.join(",")}`;
    if (this._askedLastId && this.epoch) url += `&epoch=${encodeURIComponent(this.epoch)}`;
    this._streamGroups = new Set();
    return new SseSocket(url, { token: this._token, fetch: this._fetch,
                                lastId: this._askedLastId ? this.lastId : null });
  }

  /** Forget the current socket: no more of its events, no timers. */
  _drop() {
    if (this._ws) this._ws.onopen = this._ws.onmessage = this._ws.onclose = null;
    Object.values(this._timers).forEach(clearTimeout);
    clearTimeout(this._retryTimer);
    Object.assign(this, { _ws: null, _live: false, _timers: {}, _retryTimer: null });
  }

  /** A socket closed: look its code up in RECONNECT and retry or stop as it says. */
  _closed({ code, reason = "", error }) {
    if (this._welcomedAt && Date.now() - this._welcomedAt >= STABLE_MS) this._attempt = 0;
    this._welcomedAt = 0;
    this._drop();
    this._failAll(new HeraldError("disconnected", `socket closed (${code})`), true);
    if (this._stopped) return;
    // a stream refused for a group just joined (403 forbidden, 400 bad name): that join
    // fails, the stream opens again without it
    if (error && this.transport === "sse" && this._refuseJoins(new HeraldError(error, reason))) {
      return this._retry({ retry: true }, 0);
    }
    const { rule, hintMs } = closeRule(code, reason);
    if (!rule.retry || (rule.newToken && !this._getToken)) {
      this.lastError = new HeraldError(error || rule.error || "unauthorized",
                                       reason || `closed (${code})`);
      this.lastClose = { code, reason, delay: null };
      this._stop();
      this._emit("disconnected", this.lastClose);
      this._emit("error", this.lastError);
      this._failSse(this.lastError);
      return this._setState("closed");
    }
    if (rule.newToken) this._needToken = true;
    if (rule.gap && this.transport === "websocket") this._lostSession = true;
    if (this._auto && this.transport === "websocket" && this._wsFails >= WS_FAILS_BEFORE_SSE) {
      this._switch("sse");
    }
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
    // a stream cannot be pinged: its watch (SSE_SILENT_HEARTBEATS) notices a dead one
    if (this._ws) {
      return this._live && this.transport === "websocket" ? this._ping(WAKE_PROBE_MS) : undefined;
    }
    if (!this._opening) this._open();  // skip the backoff wait
  }

  /** Give up on the current socket (dead or useless) and resume on a new one. */
  _away(reason) {
    const ws = this._ws;
    ws?.close(CLIENT_AWAY, reason);
    this._closed({ code: CLIENT_AWAY, reason });
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
    const reconnect = this._everOpen, lost = this._lostSession, asked = this._askedLastId;
    const sse = this.transport === "sse";
    const lastId = this.lastId;
    Object.assign(this, { connectionId: w.connection_id, frontend: w.frontend,
                          _everOpen: true, _live: true, _welcomedAt: Date.now(),
                          _lostSession: false });
    if (!sse) this._resume = w.resume;  // a stream has none: it resumes by Last-Event-ID
    if (w.heartbeat > 0) this._heartbeatMs = w.heartbeat * 1000;
    if (!this._pingOpt && w.heartbeat > 0) this._pingEvery = w.heartbeat * 1000;
    // a new epoch: the log lost continuity, so our ids mean nothing in it any more
    if (w.epoch && this.epoch && w.epoch !== this.epoch) {
      this._seen.clear();
      this.lastId = 0;
    }
    if (w.epoch) this.epoch = w.epoch;
    // no durable id seen yet: resume from the log's head as of this welcome, so what is
    // published while we are away is replayed even before our first durable event
    if (this.lastId === 0 && typeof w.log_id === "number") this.lastId = w.log_id;
    if (typeof w.log_id === "number") this._hasLastId = true;
    const report = (err) => this._emit("error", err);
    let rejoined = false;
    if (sse) {
      this._streamGroups = new Set(w.groups.map((g) => key(g.scope, g.group)));
    } else if (w.resumed) {  // the server restored the memberships the (new) token allows
      rejoined = this._adoptGroups(w.groups);
    } else if (reconnect) {
      for (const g of this._groups.values()) this._rejoin(g).catch(report);
    }
    if (!sse) this._groupsDirty = false;
    // what was missed is gone (retention, a new epoch) or was never asked for (no resume):
    // the app should resynchronise from its backend
    let gap = null;
    if (w.gap) gap = "retention";
    else if (!sse && reconnect && (!w.resumed || rejoined)) gap = lost ? "session_ended"
                                                                      : "not_resumed";
    else if (asked && w.recovered === false) gap = "not_recovered";
    this.recovered = gap ? false : asked ? true : null;
    if (!sse) for (const m of this._monitors.values()) this._sendMonitor(m).catch(report);
    this._setState("open");
    this._emit("welcome", w);
    if (gap) this._emit("gap", { reason: gap, lastId, welcome: w });
    for (const p of this._queue.splice(0)) this._send(p);
    this._scheduleRefresh();
    if (sse) this._ws.watch(SSE_SILENT_HEARTBEATS * this._heartbeatMs);
    else this._schedulePing();
    this._settleSse(sse);  // last: it may open the stream again
  }

  /**
   * A resume's memberships (w.groups): the client's own list when it is the same, else the
   * server's, unless the client joined or left while on SSE: then its list wins (join the
   * rest, leave the extra). Returns whether some group had to be joined again.
   */
  _adoptGroups(groups) {
    const restored = new Map(groups.map((g) => [key(g.scope, g.group), g]));
    const report = (err) => this._emit("error", err);
    if (!this._groupsDirty) {
      const known = this._groups;  // the server does not echo the meta: keep ours
      this._groups = new Map([...restored].map(([k, g]) => [k, { ...known.get(k), ...g }]));
      return false;
    }
    this._groupsDirty = false;
    let rejoined = false;
    for (const [k, g] of this._groups) {
      if (!restored.has(k)) { rejoined = true; this._rejoin(g).catch(report); }
    }
    for (const [k, g] of restored) {
      if (!this._groups.has(k)) {
        this.request("leave", { group: g.group, scope: g.scope }).catch(report);
      }
    }
    return rejoined;
  }

  _rejoin(g) {
    return this.join(g.group, { scope: g.scope, ...(g.meta ? { meta: g.meta } : {}) });
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
    this._hasLastId = true;
    if (this._seen.size > SEEN_MAX) this._seen.delete(this._seen.values().next().value);
  }

  _presence(f) {
    const m = this._monitors.get(key(f.scope, f.group));
    if (!m) return;
    const snapshot = m.awaiting;  // the first presence after `monitor` is the snapshot
    m.awaiting = false;
    const change = m.map.apply(f, snapshot);
    for (const fn of m.fns) {
      try { fn(m.map, change); } catch (err) { console.error("herald: a handler threw", err); }
    }
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
   * Watch a group: `onPresence(members, change)` gets the live Map of connection id →
   * {connection_id, user_id, frontend, meta} after the snapshot and after every change
   * ({joins, leaves, updates, snapshot}). Re-monitored after every reconnect (the snapshot
   * then replaces the map). The handle has `members`, `users` (as `presence`) and `stop`.
   */
  monitor(group, { scope = "default" } = {}, onPresence = undefined) {
    return this._watch(group, scope, onPresence && ((map, c) => onPresence(map.members, c)));
  }

  /**
   * The presence of a group by user: `onChange(users, change)` gets the live Map of user
   * id → {user_id, metas: [{connection_id, frontend, meta}]} (one meta per connection),
   * after the snapshot and every change. The same monitor as `monitor`, the same handle.
   */
  presence(group, { scope = "default" } = {}, onChange = undefined) {
    return this._watch(group, scope, onChange && ((map, c) => onChange(map.users, c)));
  }

  async _watch(group, scope, fn) {
    if (this.transport === "sse") throw unsupported("monitor");
    const k = key(scope, group);
    let m = this._monitors.get(k);
    const fresh = !m;
    if (fresh) {
      this._monitors.set(k, (m = { group, scope, map: new PresenceMap(), fns: new Set() }));
    }
    if (fn) m.fns.add(fn);  // before the request: the snapshot follows its ack
    if (fresh && this._live) {
      await this._sendMonitor(m).catch((err) => { this._monitors.delete(k); throw err; });
    }
    const stop = async () => {
      if (fn) m.fns.delete(fn);
      if (m.fns.size || this._monitors.get(k) !== m) return;
      this._monitors.delete(k);
      if (this.transport === "websocket") await this.request("demonitor", { group, scope });
    };
    return { members: m.map.members, users: m.map.users, stop };
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
        if (this.transport === "sse") {  // no refresh op: the stream opens again with it
          this._token = token;
          return this._reopen();
        }
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
