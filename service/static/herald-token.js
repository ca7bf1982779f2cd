/**
 * herald-token.js: herald.js's token: when a JWT expires (its payload's `exp`, read, not
 * verified: the server does that), whether the current one is (nearly) expired, and, with
 * getToken, its refresh shortly before it expires (a `refresh` op on a WebSocket; on SSE
 * the stream opens again with the new one).
 * @module herald-token
 */
import { key } from "./herald-util.js";

const EXPIRY_MARGIN_S = 5;    // a token this close to `exp` is treated as expired

/** Seconds since the epoch at which a JWT expires (its payload's `exp`), or null. */
export function tokenExpiry(token) {
  try {
    const b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const { exp } = JSON.parse(atob(b64 + "===".slice((b64.length + 3) % 4)));
    return typeof exp === "number" ? exp : null;
  } catch { return null; }
}

/** Herald's token methods (herald.js copies them onto Herald.prototype). */
export class TokenMethods {
  _tokenExpired() {
    const exp = this._token && tokenExpiry(this._token);
    return !!exp && exp - EXPIRY_MARGIN_S <= Date.now() / 1000;
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
}
