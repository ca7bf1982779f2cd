// Types for herald.js, the browser client for Herald.

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** An error frame from the server, or a client-side failure. */
export class HeraldError extends Error {
  constructor(code: string, message?: string);
  /**
   * Server codes: bad_request, unknown_op, unauthorized, forbidden, not_found,
   * rate_limited, internal, …; client codes: timeout, disconnected, closed, policy (1008),
   * too_large (1009), replaced (4409), task_failed.
   */
  readonly code: string;
}

export interface HeraldOptions {
  /** ws(s)://host/ws; defaults to this page's origin + /ws. */
  url?: string;
  /** A client JWT. With only this, an expired token (4401) stops the client. */
  token?: string;
  /** Returns a fresh token: before the current one expires, and after a 4401 close. */
  getToken?: () => Promise<string>;
  /** A WebSocket implementation (defaults to globalThis.WebSocket). */
  WebSocket?: { new (url: string): WebSocket };
  /** Milliseconds before a request is rejected with code "timeout" (10 000). */
  timeout?: number;
  /**
   * Milliseconds between pings that detect a dead socket; default: the welcome's
   * `heartbeat` (25 000 until a welcome says). No pong within min(timeout, this) drops it.
   */
  pingInterval?: number;
  /** Where "online"/"offline" fire (defaults to globalThis.window when there is one). */
  window?: Pick<EventTarget, "addEventListener" | "removeEventListener">;
  /** Where "visibilitychange" fires (defaults to globalThis.document when there is one). */
  document?: Pick<EventTarget, "addEventListener" | "removeEventListener"> &
    { readonly visibilityState: string };
}

/** One row of the reconnect table: what the client does after a close code. */
export interface CloseRule {
  /** Reconnect; false: stop with `error` as lastError.code. */
  readonly retry: boolean;
  readonly error?: string;
  /** Wait the `retry_ms=` of the close reason first (1012). */
  readonly hint?: boolean;
  /** Milliseconds always waited. */
  readonly floor?: number;
  /** Add half a ceiling that doubles per attempt (250 ms … 10 s), plus jitter over its other half. */
  readonly backoff?: boolean;
  /** Get a new token (getToken) before the next hello; without getToken: stop. */
  readonly newToken?: boolean;
  /** The server ended the session: no resume, a `gap` follows the next welcome. */
  readonly gap?: boolean;
}

/** The reconnect table, keyed by close code (codes not in it: retry with backoff). */
export const RECONNECT: Readonly<Record<number, CloseRule>>;
/** The rule for a close code and the delay its reason hints at (`retry_ms=`). */
export function closeRule(code: number, reason?: string): { rule: CloseRule; hintMs: number };
/** The client's own event names; application events are `event:<name>`. */
export const CLIENT_EVENTS: readonly ClientEventName[];
export type ClientEventName =
  "state" | "welcome" | "presence" | "error" | "gap" | "left" | "disconnected";

/** What the `disconnected` event says about a socket that closed. */
export interface Disconnected {
  code: number;
  reason: string;
  /** Milliseconds until the next attempt; null when the client stopped (see lastError). */
  delay: number | null;
}

/** Missed durable events were not replayed: resynchronise from your backend. */
export interface Gap {
  /**
   * retention: past the log's retention; not_recovered: the log lost continuity (epoch);
   * not_resumed: the session could not be resumed (groups were joined again, nothing
   * replayed); session_ended: the server had ended the session (close 1000).
   */
  reason: "retention" | "not_recovered" | "not_resumed" | "session_ended";
  /** The last durable id seen before the gap. */
  lastId: number;
  welcome: Welcome;
}

/** Exactly one target: a group (scope defaults to "default"), a user, a connection, or all. */
export type Target =
  | { group: string; scope?: string }
  | { user: string }
  | { connection: string }
  | { all: true };

export interface EventFrame<T = unknown> {
  op: "event";
  event: string;
  data: T;
  target: Record<string, unknown>;
  ts: number;
  /** Present on durable events: the log id (used for de-duplication and resume). */
  id?: number;
}

export interface Member {
  connection_id: string;
  user_id: string;
  frontend: string;
  /** The member's presence meta in this group (`join.meta`, `update`); {} when none. */
  meta?: Record<string, unknown>;
}

export interface PresenceFrame {
  op: "presence";
  group: string;
  scope: string;
  joins: Member[];
  leaves: Member[];
  /** Members whose meta changed (each connection at most once per frame). */
  updates?: Member[];
}

export interface PresenceChange {
  joins: Member[];
  leaves: Member[];
  /** True for the snapshot that follows `monitor` (and every re-monitor after a reconnect). */
  snapshot: boolean;
}

export interface Welcome {
  op: "welcome";
  connection_id: string;
  frontend: string;
  resume: string;
  heartbeat: number;
  resumed: boolean;
  groups: { scope: string; group: string }[];
  replayed: number;
  gap: boolean;
  /** The log's newest id (a client that has seen no durable id resumes from it). */
  log_id?: number;
  /** The log's epoch: keep it with the last durable id and send it as `hello.epoch`. */
  epoch?: string;
  /** Every durable message missed since `hello.last_id` was replayed; false: reload state. */
  recovered?: boolean;
}

export interface Monitor {
  /** connection id → member, kept up to date. */
  readonly members: Map<string, Member>;
  /** Remove this listener; the last one to stop sends `demonitor`. */
  stop(): Promise<void>;
}

export type TaskState = "queued" | "started" | "succeeded" | "failed";

export class HeraldTask<R = unknown> {
  readonly id: string;
  readonly name: string | null;
  readonly state: TaskState;
  /** 0..1 */
  readonly progress: number;
  readonly message: string | null;
  readonly result: R | undefined;
  readonly error: string | null;
  /** Resolves with the result on task.succeeded; rejects (code "task_failed") on task.failed. */
  readonly done: Promise<R>;
  /** Called on every progress report, and at once if some came already. */
  onProgress(fn: (progress: number, message: string | null, task: HeraldTask<R>) => void): this;
}

export interface HeraldEvents {
  state: (state: ConnectionState) => void;
  welcome: (welcome: Welcome) => void;
  presence: (frame: PresenceFrame) => void;
  error: (error: Error) => void;
  /** Some missed durable events could not be replayed: resynchronise from the backend. */
  gap: (gap: Gap) => void;
  /** A token refresh dropped a group the new token no longer grants. */
  left: (group: { scope: string; group: string }) => void;
  /** A socket closed: its code, reason and the delay before the next attempt. */
  disconnected: (info: Disconnected) => void;
  /** Every application event. */
  "event:*": (frame: EventFrame) => void;
}

export class Herald {
  constructor(opts: HeraldOptions);
  /** Create a client and resolve once it is open; rejects if it stops first. */
  static connect(opts: HeraldOptions): Promise<Herald>;

  readonly url: string;
  readonly state: ConnectionState;
  /** The frontend the socket is on (from the last welcome). */
  readonly frontend: string | null;
  /** The session's connection id (the same across resumes). */
  readonly connectionId: string | null;
  /** The highest durable id seen; sent as `last_id` on reconnect. */
  readonly lastId: number;
  /** Why the client stopped by itself (fatal close code, 4401 without getToken). */
  readonly lastError: HeraldError | null;
  /** The last socket close (null before the first). */
  readonly lastClose: Disconnected | null;

  /** The client's own events, or every application event ("event:*"). */
  on<K extends keyof HeraldEvents>(name: K, fn: HeraldEvents[K]): this;
  /** An application event by name: `on("event:chat", (data, frame) => …)`. */
  on<T = unknown>(event: `event:${string}`, fn: (data: T, frame: EventFrame<T>) => void): this;
  /** @deprecated a bare application event name (never one of CLIENT_EVENTS): use "event:<name>". */
  on<T = unknown>(event: string, fn: (data: T, frame: EventFrame<T>) => void): this;
  off(name: string, fn: (...args: any[]) => void): this;

  /** Start connecting (idempotent). */
  connect(): this;
  /** Close with 1000 (the server ends the session) and stop reconnecting. */
  close(): void;

  /** Send any frame; resolves with the reply frame, rejects on an error frame or timeout. */
  request(op: string, fields?: Record<string, unknown>,
          opts?: { timeout?: number }): Promise<Record<string, any>>;
  join(group: string, opts?: { scope?: string }): Promise<void>;
  leave(group: string, opts?: { scope?: string }): Promise<void>;
  members(group: string, opts?: { scope?: string; local?: boolean }): Promise<Member[]>;
  monitor(group: string, opts?: { scope?: string },
          onPresence?: (members: Map<string, Member>, change: PresenceChange) => void
  ): Promise<Monitor>;
  /** Resolves with the durable id when `durable`, else undefined. */
  publish(target: Target, event: string, data?: unknown,
          opts?: { durable?: boolean }): Promise<number | undefined>;
  startTask<R = unknown>(name: string, args?: Record<string, unknown>,
                         opts?: { notify?: "user" | "connection" }): Promise<HeraldTask<R>>;
  /** The tracker for a task id (task.* events for it update it, whoever started it). */
  task<R = unknown>(id: string): HeraldTask<R>;
}

/** The `exp` (seconds since the epoch) of a JWT, or null. */
export function tokenExpiry(token: string): number | null;

export default Herald;
