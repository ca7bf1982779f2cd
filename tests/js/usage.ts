// A typed use of @herald/client, checked by `tsc --noEmit` (tsconfig.json): the package's
// `exports`/`types` resolve, and the declarations say what herald.js does.
import Herald, { CLIENT_EVENTS, RECONNECT, closeRule, HeraldError, tokenExpiry } from "@herald/client";
import type { Disconnected, Gap, Welcome, EventFrame, Member, HeraldTask, PresenceUser,
              PresenceChange, Transport, HistoryPage } from "@herald/client";

interface Chat { user: string; text: string }

export async function main(): Promise<void> {
  const herald = await Herald.connect({
    url: "wss://example.test/ws",
    getToken: async () => "jwt",
    timeout: 5_000,
  });
  herald.on("event:chat", (data: Chat, frame: EventFrame<Chat>) => {
    const text: string = data.text;
    const id: number | undefined = frame.id;
    void text; void id;
  });
  herald.on("event:*", (frame) => { const name: string = frame.event; void name; });
  herald.on("disconnected", ({ code, reason, delay }: Disconnected) => {
    const wait: number | null = delay;
    void code; void reason; void wait;
  });
  herald.on("gap", (gap: Gap) => {
    const why: "retention" | "not_recovered" | "not_resumed" | "session_ended" = gap.reason;
    const logId: number | undefined = gap.welcome.log_id;
    void why; void logId;
  });
  herald.on("welcome", (w: Welcome) => { const hb: number = w.heartbeat; void hb; });
  herald.on("error", (err) => { if (err instanceof HeraldError) console.log(err.code); });
  herald.on("state", (s) => { const ok: boolean = s === "open" || s === "reconnecting"; void ok; });

  await herald.join("room:lobby");
  const mon = await herald.monitor("room:lobby", {}, (members: Map<string, Member>) => members.size);
  await mon.stop();
  const id = await herald.publish({ group: "room:lobby" }, "chat", { text: "hi" }, { durable: true });
  const n: number | undefined = id;
  void n;
  const task: HeraldTask<{ slept: number }> = await herald.startTask("demo.sleep", { seconds: 1 });
  const result = await task.done;
  const slept: number = result.slept;
  void slept;
  await herald.request("ping", {}, { timeout: 1_000 });

  const stops: string[] = Object.values(RECONNECT).filter((r) => !r.retry).map((r) => r.error ?? "");
  const hint: number = closeRule(1012, "draining; retry_ms=10").hintMs;
  const own: readonly string[] = CLIENT_EVENTS;
  const exp: number | null = tokenExpiry("a.b.c");
  void stops; void hint; void own; void exp;
  const last: Disconnected | null = herald.lastClose;
  void last;

  // presence with metadata, by user; update; join's meta and rewind; history
  const { rewound } = await herald.join("room:lobby", { meta: { device: "phone" }, rewind: 10 });
  const count: number = rewound;
  void count;
  const room = await herald.presence("room:lobby", {}, (users: Map<string, PresenceUser>,
                                                        change: PresenceChange) => {
    for (const u of users.values()) {
      const devices: unknown[] = u.metas.map((m) => m.meta["device"]);
      const where: string[] = u.metas.map((m) => `${m.connection_id}@${m.frontend}`);
      void devices; void where;
    }
    const updated: Member[] = change.updates;
    void updated;
  });
  const byConnection: Map<string, Member> = room.members;
  const alice: PresenceUser | undefined = room.users.get("alice");
  void byConnection; void alice;
  await herald.update("room:lobby", { device: "phone", away: true });
  const page: HistoryPage = await herald.history("room:lobby", { limit: 20, before: 100 });
  const firstId: number | undefined = page.events[0]?.id;
  void firstId;

  // the transport and the recovery result
  herald.on("transport", (t: Transport) => { if (t === "sse") console.log("receive-only"); });
  const now: Transport = herald.transport;
  const epoch: string | null = herald.epoch;
  const recovered: boolean | null = herald.recovered;
  void now; void epoch; void recovered;
  const viaSse = new Herald({ token: "jwt", transport: "sse", sseUrl: "https://example.test/sse",
                              fetch: globalThis.fetch });
  viaSse.connect();
  herald.close();
}

// @ts-expect-error: transport is "auto", "websocket" or "sse"
export const badTransport = new Herald({ token: "jwt", transport: "polling" });

// @ts-expect-error: a target needs exactly one of group, user, connection, all
export const bad: Parameters<Herald["publish"]>[0] = { everyone: true };
