/**
 * herald-sse.js: herald.js's second transport, `GET /sse` read with fetch() (EventSource
 * can neither send `Authorization` nor listen to event names it was not told), behind the
 * few parts of the WebSocket interface herald.js uses: `onopen`, `onmessage({data})`,
 * `onclose({code, reason})`, `close()`. It only receives: `send` throws.
 *
 * The stream's `event: close` (code, reason) becomes `onclose` with the same code, so the
 * RECONNECT table decides what follows; a refusal before the stream is an HTTP status,
 * mapped to the close code a socket would have got (HTTP_CLOSE); a stream that breaks or
 * ends without a close event is 1006, and one silent past `watch(ms)` is 4000 (as a ping
 * without a pong).
 * @module herald-sse
 */

/** The close code for an HTTP refusal of the stream; other statuses: 1011. */
export const HTTP_CLOSE = Object.freeze({
  400: 1008,  // a bad group name, Last-Event-ID or too many groups: would repeat
  401: 4401,  // no or bad token: a fresh one (getToken), else stop
  403: 1008,  // a group the token does not grant, or the origin
  429: 1008,  // too many connections for this user (HERALD_MAX_USER_CONNECTIONS)
  503: 1013,  // draining, or Postgres away: try again
});
const OTHER_STATUS = 1011;
const NO_CLOSE_EVENT = 1006;
const SILENT = 4000;  // herald.js's CLIENT_AWAY: resume elsewhere
const BREAK = /\r\n|\r|\n/;

/** The SSE endpoint beside a WebSocket URL: ws(s)://host/…/ws → http(s)://host/…/sse. */
export function sseUrlFor(wsUrl) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === "wss:" || u.protocol === "https:" ? "https:" : "http:";
  u.pathname = /\/ws\/?$/.test(u.pathname) ? u.pathname.replace(/\/ws\/?$/, "/sse") : "/sse";
  u.search = u.hash = "";
  return u.toString();
}

/**
 * text/event-stream to events, as the HTML standard parses it: `event:`, `data:` (lines
 * joined with "\n"), `id:`, comments (`:`) and `retry:` skipped, a blank line dispatches.
 */
export class SseParser {
  constructor() { Object.assign(this, { _buf: "", _event: "", _data: [], _id: null }); }

  /** The events completed by this chunk of text, in order. */
  push(text) {
    this._buf += text;
    const out = [];
    for (;;) {
      const m = BREAK.exec(this._buf);
      // a "\r" at the end may be the first half of "\r\n": wait for the next chunk
      if (!m || (m[0] === "\r" && m.index === this._buf.length - 1)) break;
      const line = this._buf.slice(0, m.index);
      this._buf = this._buf.slice(m.index + m[0].length);
      const ev = this._line(line);
      if (ev) out.push(ev);
    }
    return out;
  }

  _line(line) {
    if (line === "") {
      const ev = this._data.length ? { event: this._event || "message",
                                       data: this._data.join("\n"), id: this._id } : null;
      Object.assign(this, { _event: "", _data: [], _id: null });
      return ev;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this._event = value;
    else if (field === "data") this._data.push(value);
    else if (field === "id" && !value.includes("\0")) this._id = value;
    return null;
  }
}

/** One `GET /sse` stream, shaped like the WebSocket herald.js would otherwise hold. */
export class SseSocket {
  /**
   * @param {string} url the full stream URL (groups, epoch in its query)
   * @param {object} opts
   * @param {string} opts.token sent as `Authorization: Bearer`
   * @param {number|null} [opts.lastId] sent as `Last-Event-ID` (resume point), if not null
   * @param {typeof fetch} [opts.fetch] a fetch implementation (tests)
   */
  constructor(url, { token, lastId = null, fetch: impl } = {}) {
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${token}` };
    if (lastId !== null && lastId !== undefined) headers["Last-Event-ID"] = String(lastId);
    Object.assign(this, { url, onopen: null, onmessage: null, onclose: null, _done: false,
                          _watchMs: 0, _watchTimer: null, _abort: new AbortController() });
    const f = impl || globalThis.fetch;
    // never synchronously: the caller sets its handlers first, as with a WebSocket
    Promise.resolve().then(() => this._run(f, headers));
  }

  /** Receive-only: herald.js never sends on a stream. */
  send() { throw new Error("an SSE stream only receives"); }

  /** Stop reading (no `onclose` follows, as herald.js has dropped the stream already). */
  close() {
    if (this._done) return;
    this._done = true;
    clearTimeout(this._watchTimer);
    this._abort.abort();
  }

  /** Close with 4000 when nothing (not even a keep-alive comment) came for `ms`. */
  watch(ms) { this._watchMs = ms; this._touch(); }

  _touch() {
    clearTimeout(this._watchTimer);
    if (this._watchMs > 0 && !this._done) {
      this._watchTimer = setTimeout(() => this._end(SILENT, "no data on the stream"),
                                    this._watchMs);
    }
  }

  async _run(f, headers) {
    let res;
    try {
      res = await f(this.url, { headers, signal: this._abort.signal, cache: "no-store",
                                credentials: "same-origin" });
    } catch (err) {
      return this._end(NO_CLOSE_EVENT, `the stream did not open: ${err?.message || err}`);
    }
    if (this._done) return;
    if (!res.ok) {
      let body = {};
      try { body = await res.json(); } catch { /* not JSON: the status says enough */ }
      return this._end(HTTP_CLOSE[res.status] || OTHER_STATUS,
                       `HTTP ${res.status}: ${body.message || res.statusText || "refused"}`,
                       { status: res.status, error: body.error });
    }
    this.onopen?.({});
    const parser = new SseParser();
    const decoder = new TextDecoder();
    try {
      const reader = res.body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (this._done) return;
        if (done) break;
        this._touch();
        for (const ev of parser.push(decoder.decode(value, { stream: true }))) {
          if (this._dispatch(ev)) return;
        }
      }
    } catch (err) {
      return this._end(NO_CLOSE_EVENT, `the stream broke: ${err?.message || err}`);
    }
    this._end(NO_CLOSE_EVENT, "the stream ended without a close event");
  }

  /** Hand an event's frame on; true when it was the stream's close. */
  _dispatch(ev) {
    if (ev.event !== "close") {
      this.onmessage?.({ data: ev.data, lastEventId: ev.id });
      return this._done;
    }
    let f = {};
    try { f = JSON.parse(ev.data); } catch { /* a close all the same */ }
    this._abort.abort();
    this._end(typeof f.code === "number" ? f.code : NO_CLOSE_EVENT, f.reason || "");
    return true;
  }

  _end(code, reason, extra = {}) {
    if (this._done) return;
    this._done = true;
    clearTimeout(this._watchTimer);
    this._abort.abort();
    this.onclose?.({ code, reason, ...extra });
  }
}
