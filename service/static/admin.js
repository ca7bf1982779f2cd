// The admin console (GET /admin): the HTTP API with the operator's API key, and a
// herald.js socket (a token from POST /api/admin/token) to watch a group's presence.
// Everything is built with textContent: names, metas and data are never parsed as HTML.
import { Herald } from "./herald.js";

const KEY_STORAGE = "herald.admin.key";  // sessionStorage: this tab only, gone with it
const POLL_MS = 2000;
const LOG_PAGE = 20;
const FEED_MAX = 50;
const TABS = ["frontends", "groups", "users", "presence", "publish", "log"];

const $ = (id) => document.getElementById(id);
let apiKey = null;
let pollTimer = null;
let herald = null;
let watching = null;  // {scope, group, stop}
let logNext = null;  // `before` of the next, older page (null: none)

function el(tag, { dataset = {}, ...props } = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset);  // (dataset itself cannot be assigned)
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

const rate = (n) => (n === undefined || n === null ? "–" : n >= 100 ? n.toFixed(0) : n.toFixed(1));
const clock = (ts) => new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
const ago = (ts) => {
  const s = Math.max(0, Math.round(Date.now() / 1000 - ts));
  return s < 90 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
};
const targetText = (t) => (t.all ? "everyone" : t.group !== undefined ? `group ${t.scope}/${t.group}`
  : t.user !== undefined ? `user ${t.user}` : `connection ${t.connection}`);

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

/** One HTTP API call with the API key; a 401 signs the console out. */
async function call(method, path, body, key = apiKey) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, cache: "no-store",
                                  body: body === undefined ? undefined : JSON.stringify(body) });
  const reply = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new ApiError(res.status, reply?.error || "http",
                             reply?.message || `HTTP ${res.status}`);
    if (res.status === 401 && key === apiKey && apiKey) signOut(refusedText(err));
    throw err;
  }
  return reply;
}

const refusedText = (err) => `That API key was refused (${err.status} ${err.code}: ${err.message}). ` +
  "Use one of the keys in HERALD_API_KEYS.";

function showError(id, err) {
  const node = $(id);
  node.hidden = !err;
  node.textContent = err ? (err.message || String(err)) : "";
}

// --- sign in and out ---------------------------------------------------------------------

async function signIn(key) {
  showError("signin-error", null);
  $("sign-in").disabled = true;
  try {
    const frontends = await call("GET", "/api/frontends", undefined, key);
    apiKey = key;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("signin").hidden = true;
    $("console").hidden = false;
    $("session").hidden = false;
    $("api-key").value = "";
    renderFrontends(frontends);
    showTab(TABS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "frontends");
    pollTimer = setInterval(poll, POLL_MS);
  } catch (err) {
    sessionStorage.removeItem(KEY_STORAGE);
    $("signin-error").hidden = false;
    $("signin-error").textContent = err.status === 401 ? refusedText(err)
      : `Could not check the key: ${err.message}`;
  } finally {
    $("sign-in").disabled = false;
  }
}

function signOut(why = null) {
  clearInterval(pollTimer);
  pollTimer = null;
  apiKey = null;
  sessionStorage.removeItem(KEY_STORAGE);
  const h = herald;
  herald = null;
  // demonitor first (its ack is awaited, bounded by herald.js' timeout), then say goodbye
  stopWatching().catch(() => {}).finally(() => h?.close());
  showSocket("closed");
  for (const body of document.querySelectorAll("#console tbody")) body.replaceChildren();
  for (const id of ["user-result", "watching", "pub-result"]) $(id).hidden = true;
  $("console").hidden = true;
  $("session").hidden = true;
  $("signin").hidden = false;
  showError("signin-error", why ? new Error(why) : null);
  $("api-key").focus();
}

// --- tabs and polling --------------------------------------------------------------------

function showTab(name) {
  for (const tab of document.querySelectorAll(".tabs button")) {
    tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
  }
  for (const t of TABS) $(`panel-${t}`).hidden = t !== name;
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  showError("console-error", null);
  if (name === "groups") loadGroups();
  if (name === "log") loadLog(null);
}

const activeTab = () => TABS.find((t) => !$(`panel-${t}`).hidden);

async function poll() {
  try {
    renderFrontends(await call("GET", "/api/frontends"));
    if (activeTab() === "groups") await loadGroups();
    showError("console-error", null);
  } catch (err) {
    if (apiKey) showError("console-error", new Error(`Refresh failed: ${err.message}`));
  }
}

// --- frontends ---------------------------------------------------------------------------

function renderFrontends(list) {
  const sum = (f) => list.reduce((n, fe) => n + (f(fe) || 0), 0);
  const conns = sum((fe) => fe.connections);
  $("t-frontends").textContent = String(list.length);
  $("t-connections").textContent = String(conns);
  $("t-published").textContent = rate(sum((fe) => fe.stats?.published_per_s));
  $("t-delivered").textContent = rate(sum((fe) => fe.stats?.delivered_per_s));
  $("summary").textContent = `${list.length} frontend${list.length === 1 ? "" : "s"} · ` +
    `${conns} connection${conns === 1 ? "" : "s"}`;
  $("frontends").tBodies[0].replaceChildren(...list.map((fe) => {
    const s = fe.stats;
    const pair = (perS, total) => [el("span", { textContent: `${rate(perS)}/s` }),
                                   el("small", { textContent: s ? `${total} in all` : "no heartbeat yet" })];
    return el("tr", { dataset: { id: fe.id } },
      el("td", {}, el("b", { className: "mono", textContent: fe.id }),
         el("small", { textContent: fe.host })),
      el("td", { className: "num connections", textContent: String(fe.connections) }),
      el("td", { className: "num published" }, ...pair(s?.published_per_s, s?.published)),
      el("td", { className: "num delivered" }, ...pair(s?.delivered_per_s, s?.delivered)),
      el("td", { className: "num", textContent: s ? `${rate(s.frames_in_per_s)} / ${rate(s.frames_out_per_s)}` : "–" }),
      el("td", {}, el("span", { textContent: ago(fe.heartbeat_at) }),
         el("small", { textContent: `up since ${clock(fe.started_at)}` })),
      el("td", {}, el("span", { className: `badge${fe.draining ? " draining" : ""}`,
                                textContent: fe.draining ? "draining" : "live" })));
  }));
}

// --- groups ------------------------------------------------------------------------------

async function loadGroups() {
  const scope = $("groups-scope").value.trim();
  try {
    const groups = await call("GET", `/api/groups${scope ? `?scope=${encodeURIComponent(scope)}` : ""}`);
    $("groups-empty").hidden = groups.length > 0;
    $("groups").tBodies[0].replaceChildren(...groups.map((g) => {
      const watch = el("button", { type: "button", className: "link", textContent: "Watch" });
      watch.addEventListener("click", () => {
        $("watch-scope").value = g.scope;
        $("watch-group").value = g.group;
        showTab("presence");
        watch_(g.scope, g.group);
      });
      return el("tr", { dataset: { scope: g.scope, group: g.group } },
        el("td", { className: "mono", textContent: g.scope }),
        el("td", { className: "mono", textContent: g.group }),
        el("td", { className: "num members", textContent: String(g.members) }),
        el("td", { className: "num" }, watch));
    }));
  } catch (err) {
    showError("console-error", err);
  }
}

// --- users -------------------------------------------------------------------------------

async function findUser(user) {
  try {
    const conns = await call("GET", `/api/users/${encodeURIComponent(user)}/connections`);
    const frontends = new Set(conns.map((c) => c.frontend));
    $("user-summary").replaceChildren(el("b", { textContent: user }), conns.length
      ? `: ${conns.length} socket${conns.length === 1 ? "" : "s"} on ${frontends.size} frontend${frontends.size === 1 ? "" : "s"}`
      : ": no socket (offline, or awaiting a resume)");
    $("user-connections").tBodies[0].replaceChildren(...conns.map((c) => el("tr",
      { dataset: { connection: c.connection_id } },
      el("td", { className: "mono", textContent: c.connection_id }),
      el("td", { className: "mono frontend", textContent: c.frontend }),
      el("td", { textContent: clock(c.connected_at) }),
      el("td", {}, ...(c.groups.length
        ? c.groups.map((g) => `${g.scope}/${g.group}`).sort().map((name) => el("span",
          { className: "chip", textContent: name }))
        : [el("span", { className: "muted", textContent: "none" })])))));
    $("user-result").hidden = false;
    showError("console-error", null);
  } catch (err) {
    showError("console-error", err);
  }
}

// --- presence (herald.js) ----------------------------------------------------------------

function showSocket(state) {
  $("socket-state").dataset.state = state;
  $("socket-text").textContent = state === "open"
    ? `socket open on ${herald.frontend} as admin:console` : `socket ${state}`;
}

async function socket() {
  if (herald) return herald;
  const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const getToken = async () => (await call("POST", "/api/admin/token")).token;
  showSocket("connecting");
  const pending = Herald.connect({ url: wsUrl, getToken });
  try {
    herald = await pending;
  } catch (err) {
    showSocket("closed");
    throw err;
  }
  herald.on("state", showSocket);
  showSocket(herald.state);
  return herald;
}

async function stopWatching() {
  const current = watching;
  watching = null;
  $("unwatch").disabled = true;
  $("watching").hidden = true;
  if (current) await current.stop();
}

function feed(cls, member, verb) {
  const list = $("changes");
  list.querySelector(".empty")?.remove();
  list.prepend(el("li", { className: cls }, el("time", { textContent: clock(Date.now() / 1000) }),
    el("b", { textContent: member.user_id }), ` ${verb} `,
    el("span", { className: "mono", textContent: member.connection_id.slice(0, 8) }),
    ` on ${member.frontend}`));
  while (list.children.length > FEED_MAX) list.lastChild.remove();
}

function renderMembers(members, change) {
  const fresh = new Set(change.snapshot ? [] : change.joins.map((m) => m.connection_id));
  if (!change.snapshot) {
    for (const m of change.joins) feed("join", m, "joined");
    for (const m of change.leaves) feed("leave", m, "left");
  }
  $("watch-count").textContent = String(members.size);
  $("members").tBodies[0].replaceChildren(...[...members.values()].map((m) => el("tr",
    { dataset: { connection: m.connection_id, user: m.user_id },
      className: fresh.has(m.connection_id) ? "fresh" : "" },
    el("td", { className: "mono", textContent: m.connection_id }),
    el("td", { textContent: m.user_id }),
    el("td", { className: "mono", textContent: m.frontend }),
    el("td", { className: "mono", textContent: m.meta && Object.keys(m.meta).length
      ? JSON.stringify(m.meta) : "–" }))));
}

async function watch_(scope, group) {
  showError("watch-error", null);
  $("watch").disabled = true;
  try {
    await stopWatching();
    const h = await socket();
    $("changes").replaceChildren(el("li", { className: "empty muted",
                                            textContent: "Joins and leaves appear here." }));
    $("watch-name").textContent = `${scope}/${group}`;
    $("watching").hidden = false;
    const handle = await h.monitor(group, { scope }, renderMembers);
    watching = { scope, group, stop: handle.stop };
    renderMembers(handle.members, { joins: [], leaves: [], snapshot: true });
    $("unwatch").disabled = false;
  } catch (err) {
    $("watching").hidden = true;
    showError("watch-error", new Error(`Cannot watch ${scope}/${group}: ${err.message}`));
  } finally {
    $("watch").disabled = false;
  }
}

// --- publish -----------------------------------------------------------------------------

function publishTarget() {
  const kind = $("pub-kind").value;
  if (kind === "all") return { all: true };
  if (kind === "user") return { user: $("pub-user").value.trim() };
  return { group: $("pub-group").value.trim(), scope: $("pub-scope").value.trim() || "default" };
}

async function publish() {
  const result = $("pub-result");
  result.hidden = false;
  result.classList.remove("failed");
  const durable = $("pub-durable").checked;
  const text = $("pub-data").value.trim();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (err) {
    result.classList.add("failed");
    result.textContent = `Data is not valid JSON: ${err.message}`;
    return;
  }
  const target = publishTarget();
  try {
    const reply = await call("POST", "/api/publish",
                             { target, event: $("pub-event").value.trim(), data, durable });
    result.replaceChildren(`Published to ${targetText(target)} · `, reply.id === null
      ? "not durable: no id" : el("b", { id: "pub-id", textContent: `id ${reply.id}` }));
  } catch (err) {
    result.classList.add("failed");
    result.textContent = `Refused (${err.status} ${err.code}): ${err.message}`;
  }
}

function showTargetFields() {
  const kind = $("pub-kind").value;
  for (const label of document.querySelectorAll("#publish-form [data-for]")) {
    label.hidden = label.dataset.for !== kind;
  }
}

// --- the durable log ---------------------------------------------------------------------

async function loadLog(before) {
  try {
    const page = await call("GET", `/api/messages?limit=${LOG_PAGE}${before ? `&before=${before}` : ""}`);
    logNext = page.next;
    const rows = page.messages;
    $("log-empty").hidden = rows.length > 0;
    $("log-older").disabled = page.next === null;
    $("log-range").textContent = rows.length
      ? `Ids ${rows[0].id} to ${rows[rows.length - 1].id}, newest first${before ? "" : " (the newest)"}.`
      : "No durable message within retention (HERALD_HISTORY_TTL).";
    $("log").tBodies[0].replaceChildren(...rows.map((m) => {
      const data = JSON.stringify(m.data);
      return el("tr", { dataset: { id: String(m.id) } },
        el("td", { className: "num mono", textContent: String(m.id) }),
        el("td", { textContent: clock(m.ts) }),
        el("td", { textContent: targetText(m.target) }),
        el("td", { className: "mono", textContent: m.event }),
        el("td", { className: "mono data", textContent: data, title: data }),
        el("td", { className: "mono", textContent: m.origin }));
    }));
  } catch (err) {
    showError("console-error", err);
  }
}

// --- wiring ------------------------------------------------------------------------------

function on(id, event, fn) {
  $(id).addEventListener(event, (e) => {
    if (event === "submit") e.preventDefault();
    fn(e);
  });
}

on("signin-form", "submit", () => signIn($("api-key").value.trim()));
on("sign-out", "click", () => signOut());
on("groups-form", "submit", () => loadGroups());
on("user-form", "submit", () => findUser($("user-id").value.trim()));
on("watch-form", "submit", () => watch_($("watch-scope").value.trim(), $("watch-group").value.trim()));
on("unwatch", "click", () => stopWatching().catch((err) => showError("watch-error", err)));
on("publish-form", "submit", () => publish());
on("pub-kind", "change", showTargetFields);
on("log-newest", "click", () => loadLog(null));
on("log-older", "click", () => loadLog(logNext));
for (const tab of document.querySelectorAll(".tabs button")) {
  tab.addEventListener("click", () => showTab(tab.dataset.tab));
}
window.addEventListener("hashchange", () => {
  const name = location.hash.slice(1);
  if (apiKey && TABS.includes(name) && name !== activeTab()) showTab(name);
});

showTargetFields();
const saved = sessionStorage.getItem(KEY_STORAGE);
if (saved) signIn(saved);
else $("api-key").focus();
