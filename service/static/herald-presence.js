/**
 * herald-presence.js: what herald.js knows of a monitored group, kept from its `presence`
 * frames two ways: `members` (connection id → member, as `monitor` always gave) and
 * `users` (user id → {user_id, metas: [{connection_id, frontend, meta}]}: one meta per
 * connection, as Phoenix Presence's metas per device).
 *
 * A session that resumes on another frontend is joined there and left on the old one, and
 * the two frontends' frames can arrive in either order: a leave (or an update) counts only
 * when its frontend is the one the entry has, so the late leave of the old frontend does
 * not remove the connection that is back elsewhere.
 * @module herald-presence
 */

const sameFrontend = (entry, x) => x.frontend === undefined || entry.frontend === x.frontend;

export class PresenceMap {
  constructor() {
    /** @type {Map<string, object>} connection id → {connection_id, user_id, frontend, meta} */
    this.members = new Map();
    /** @type {Map<string, {user_id: string, metas: object[]}>} user id → its connections */
    this.users = new Map();
    this._byUser = new Map();  // user id → Map(connection id → member)
  }

  /**
   * Apply one presence frame (`snapshot`: the first after `monitor`, which replaces what
   * was known); returns the change {joins, leaves, updates, snapshot}.
   */
  apply(frame, snapshot = false) {
    const touched = new Set();
    if (snapshot) {
      for (const uid of this._byUser.keys()) touched.add(uid);
      this.members.clear();
      this._byUser.clear();
    }
    const joins = frame.joins || [], leaves = frame.leaves || [], updates = frame.updates || [];
    for (const x of joins) this._set(x, touched);
    for (const x of updates) {
      const cur = this.members.get(x.connection_id);
      if (!cur || sameFrontend(cur, x)) this._set(x, touched);  // updates replace the meta
    }
    for (const x of leaves) {
      const cur = this.members.get(x.connection_id);
      if (cur && sameFrontend(cur, x)) this._delete(cur, touched);
    }
    for (const uid of touched) this._regroup(uid);
    return { joins, leaves, updates, snapshot };
  }

  _set(x, touched) {
    const old = this.members.get(x.connection_id);
    if (old && old.user_id !== x.user_id) this._delete(old, touched);
    const entry = { ...x, meta: x.meta ?? {} };
    this.members.set(x.connection_id, entry);
    if (!this._byUser.has(x.user_id)) this._byUser.set(x.user_id, new Map());
    this._byUser.get(x.user_id).set(x.connection_id, entry);
    touched.add(x.user_id);
  }

  _delete(entry, touched) {
    this.members.delete(entry.connection_id);
    this._byUser.get(entry.user_id)?.delete(entry.connection_id);
    touched.add(entry.user_id);
  }

  /** A new entry object for a user whose connections changed (or none: it is gone). */
  _regroup(uid) {
    const conns = this._byUser.get(uid);
    if (!conns?.size) {
      this._byUser.delete(uid);
      this.users.delete(uid);
      return;
    }
    this.users.set(uid, { user_id: uid, metas: [...conns.values()].map(
      (m) => ({ connection_id: m.connection_id, frontend: m.frontend, meta: m.meta })) });
  }
}
