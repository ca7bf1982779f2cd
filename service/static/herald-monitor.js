/**
 * herald-monitor.js: presence in herald.js: `monitor` and `presence` share one monitor per
 * group (a PresenceMap, herald-presence.js: by connection and by user), kept by the group's
 * `presence` frames and sent again after every reconnect, whose snapshot then replaces
 * the map. WebSocket only.
 * @module herald-monitor
 */
import { PresenceMap } from "./herald-presence.js";
import { key, unsupported } from "./herald-util.js";

/** Herald's presence methods (herald.js copies them onto Herald.prototype). */
export class MonitorMethods {
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
}
