/**
 * herald-socket.js: one socket's life in herald.js: open it (one attempt at a time, a
 * fresh token first when needed) and say hello (the resume token, `last_id`, the epoch);
 * notice when it is dead (pings at the heartbeat, a quick one when the page is shown again
 * or the network returns); and when it closes, retry or stop as the close code's RECONNECT
 * row says (herald-reconnect.js).
 * @module herald-socket
 */
import { WS_FAILS_BEFORE_SSE } from "./herald-fallback.js";
import { CLIENT_AWAY, DEFAULT_RULE, STABLE_MS, closeRule, retryDelay } from "./herald-reconnect.js";
import { HeraldError } from "./herald-util.js";

const WAKE_PROBE_MS = 3_000;  // a ping's deadline when the page comes back or goes online

/** Herald's socket methods (herald.js copies them onto Herald.prototype). */
export class SocketMethods {
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
    const delay = retryDelay(rule, hintMs, this._attempt);
    if (rule.backoff) this._attempt++;
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
