/**
 * herald-util.js: what every part of herald.js shares: HeraldError (its one error class:
 * `.code` says what went wrong), a group's key, and the refusal of an op that needs a
 * WebSocket while the client is on SSE.
 * @module herald-util
 */

/** An error from the server (an `error` frame) or from the client; `.code` says which. */
export class HeraldError extends Error {
  constructor(code, message) { super(message || code); this.name = "HeraldError"; this.code = code; }
}

/** A group's key in the client's maps and in the stream's `groups=`: `scope/group`. */
export const key = (scope, group) => `${scope}/${group}`;

/** Ops that need a WebSocket: on SSE they reject with code "unsupported_transport". */
export const unsupported = (op) => new HeraldError("unsupported_transport",
  `${op} needs a WebSocket, and this client is on SSE, which only receives ` +
  "(herald.transport; it tries WebSocket again by itself)");
