/**
 * herald-reconnect.js: what herald.js does after a socket closes, as data: one RECONNECT
 * row per close code (retry or stop, wait for the reason's hint, a floor, a backoff, a
 * fresh token, a session lost), and the backoff's delay. herald-socket.js applies them.
 * @module herald-reconnect
 */

// backoff: half the ceiling min(CAP, BASE * 2^attempt), plus jitter over the other half, so
// the wait grows whatever Math.random says (full jitter can stay near 0 for many attempts)
const BASE_MS = 250;
const CAP_MS = 10_000;
export const STABLE_MS = 5_000;   // a socket welcomed this long resets the backoff
export const CLIENT_AWAY = 4000;  // our close code for a dead socket: not a goodbye, so it resumes

/**
 * What to do after each close code, in one place. `retry`: reconnect (else stop, with
 * `error` as lastError.code); `hint`: wait the `retry_ms=` of the close reason first;
 * `floor`: ms always waited; `backoff`: add half a ceiling that doubles with each attempt
 * that did not stay up STABLE_MS, plus jitter over its other half; `newToken`: call
 * getToken before the next hello; `gap`: the server ended the session, so what is missed
 * is not replayed (no resume token is presented and a `gap` event follows the next
 * welcome). Unlisted codes: DEFAULT_RULE.
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
export const DEFAULT_RULE = Object.freeze({ retry: true, floor: 1_000, backoff: true });

/** The rule for a close code, and the delay (ms) its reason hints at (`retry_ms=`). */
export function closeRule(code, reason = "") {
  const rule = RECONNECT[code] || DEFAULT_RULE;
  const hint = rule.hint ? /retry_ms=(\d+)/.exec(reason || "") : null;
  return { rule, hintMs: hint ? Number(hint[1]) : 0 };
}

/**
 * The wait (ms) before the next attempt as `rule` says: the reason's hint, the rule's
 * floor and, with `backoff`, the jitter over the ceiling for `attempt` (attempts so far).
 */
export function retryDelay(rule, hintMs, attempt) {
  const ceiling = Math.min(CAP_MS, BASE_MS * 2 ** attempt);
  const jitter = rule.backoff ? ceiling / 2 + (Math.random() * ceiling) / 2 : 0;
  return Math.round(hintMs + (rule.floor || 0) + jitter);
}
