/**
 * herald-receive.js: what herald.js does with the frames it receives. A reply settles its
 * request. A welcome starts the session on this socket: its resume token, the log's epoch
 * and head (`lastId`), the groups restored or joined again, then a `gap` event when what
 * was missed could not be replayed (the app should resynchronise from its backend). An
 * event whose durable id was seen is dropped; the others go to `event:<name>` handlers
 * (and the 0.1 API's bare names, with a warning), task.* events to their HeraldTask.
 * Presence frames go to herald-monitor.js.
 * @module herald-receive
 */
import { SSE_SILENT_HEARTBEATS } from "./herald-fallback.js";
import { HeraldError, key } from "./herald-util.js";

const SEEN_MAX = 10_000;      // durable ids remembered for de-duplication

/** The client's own events; application events are `event:<name>` (and `event:*`). */
export const CLIENT_EVENTS = Object.freeze(["state", "welcome", "presence", "error", "gap",
                                            "left", "disconnected", "transport"]);

/** Herald's methods for frames received (herald.js copies them onto Herald.prototype). */
export class ReceiveMethods {
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
}
