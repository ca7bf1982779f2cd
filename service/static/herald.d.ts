// Types for herald.js, the browser client for Herald.

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";
/** WebSocket, or `GET /sse` (receive-only) where WebSockets do not pass. */
export type Transport = "websocket" | "sse";

/** An error frame from the server, or a client-side failure. */
export class HeraldError extends Error {
  constructor(code: string, message?: string);
  /**
   * Server codes: bad_request, unknown_op, unauthorized, forbidden, not_found,
   * rate_limited, internal, …; client codes: timeout, disconnected, closed, policy (1008),
   * too_large (1009), replaced (4409), task_failed, unsupported_transport (an op that
   * needs a WebSocket while the client is on SSE).
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
  /**
   * "auto" (default): WebSocket; after 3 WebSockets in a row that never opened (or when
   * the constructor throws), `GET /sse`, with a WebSocket tried again 5 s later, then at
   * doubling intervals up to 5 min; back on WebSocket as soon as one opens.
   * "websocket" or "sse": that one only.
   */
  transport?: "auto" | Transport;
  /** http(s)://host/sse; defaults to `url` with ws→http and /ws→/sse. */
  sseUrl?: string;
  /** The fetch that reads the SSE stream (defaults to globalThis.fetch). */
  fetch?: typeof fetch;
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
  "state" | "welcome" | "presence" | "error" | "gap" | "left" | "disconnected" | "transport";

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
  /** Members whose meta changed (replaced in the map). */
  updates: Member[];
  /** True for the snapshot that follows `monitor` (and every re-monitor after a reconnect). */
  snapshot: boolean;
}

/** One connection of a user in a group, with its meta (Phoenix's metas per device). */
export interface PresenceMeta<M = Record<string, unknown>> {
  connection_id: string;
  frontend: string;
  /** {} when the connection gave none. */
  meta: M;
}

/** A user present in a group: one meta per connection. */
export interface PresenceUser<M = Record<string, unknown>> {
  user_id: string;
  metas: PresenceMeta<M>[];
}

export interface Welcome {
  op: "welcome";
  connection_id: string;
  frontend: string;
  /** The resume token (none on an SSE stream: it resumes by Last-Event-ID). */
  resume?: string;
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
  /** "sse" on a stream's welcome. */
  transport?: "sse";
}

export interface Monitor {
  /** connection id → member, kept up to date. */
  readonly members: Map<string, Member>;
  /** user id → the user's connections with their metas, kept up to date. */
  readonly users: Map<string, PresenceUser>;
  /** Remove this listener; the last one to stop sends `demonitor`. */
  stop(): Promise<void>;
}

/** A page of history: event frames oldest first; `gap`: retention cut the range. */
export interface HistoryPage {
  events: EventFrame[];
  gap: boolean;
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
  /** The client moved to another transport (SSE when WebSockets fail, back when one opens). */
  transport: (transport: Transport) => void;
  /** Every application event. */
  "event:*": (frame: EventFrame) => void;
}

export class Herald {
  constructor(opts: HeraldOptions);
  /** Create a client and resolve once it is open; rejects if it stops first. */
  static connect(opts: HeraldOptions): Promise<Herald>;

  readonly url: string;
  /** Where the SSE fallback reads from. */
  readonly sseUrl: string;
  readonly state: ConnectionState;
  /** The transport in use (or being tried): on "sse" the client only receives. */
  readonly transport: Transport;
  /** The frontend the socket is on (from the last welcome). */
  readonly frontend: string | null;
  /** The session's connection id (the same across resumes). */
  readonly connectionId: string | null;
  /** The highest durable id seen; sent as `last_id` on reconnect. */
  readonly lastId: number;
  /** The log's epoch `lastId` belongs to (`welcome.epoch`); sent as `hello.epoch`. */
  readonly epoch: string | null;
  /**
   * After each welcome: false when a `gap` event followed it (resynchronise), true when
   * everything missed was replayed, null when there was nothing to recover (the first).
   */
  readonly recovered: boolean | null;
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
  /**
   * Join (kept across reconnects, with its meta). `meta`: this connection's presence meta;
   * `rewind`: the group's last N (≤ 100) durable events follow as ordinary events. On SSE
   * the stream reopens with the group; it carries no meta and rewinds nothing (`rewound` 0).
   */
  join(group: string, opts?: { scope?: string; meta?: Record<string, unknown>;
                               rewind?: number }): Promise<{ rewound: number }>;
  leave(group: string, opts?: { scope?: string }): Promise<void>;
  /** Replace this connection's meta in a group it has joined (WebSocket only). */
  update(group: string, meta: Record<string, unknown>, opts?: { scope?: string }): Promise<void>;
  /** A page of a group's durable events (WebSocket only). */
  history(group: string, opts?: { scope?: string; limit?: number; before?: number;
                                  after?: number }): Promise<HistoryPage>;
  members(group: string, opts?: { scope?: string; local?: boolean }): Promise<Member[]>;
  /** Watch a group by connection (WebSocket only). */
  monitor(group: string, opts?: { scope?: string },
          onPresence?: (members: Map<string, Member>, change: PresenceChange) => void
  ): Promise<Monitor>;
  /** Watch a group by user: one meta per connection (WebSocket only; same handle). */
  presence(group: string, opts?: { scope?: string },
           onChange?: (users: Map<string, PresenceUser>, change: PresenceChange) => void
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
