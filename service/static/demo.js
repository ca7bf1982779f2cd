// The demo page: a token from /demo/token (development only), then everything via herald.js.
import { Herald } from "/static/herald.js";

const ROOM = "room:lobby";
const $ = (id) => document.getElementById(id);
let herald = null;
let user = null;
let currentTask = null;

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

const short = (id) => (id ? id.slice(0, 8) : "–");
const time = (ts) =>
  new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
const hue = (s) => [...s].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 360, 7);

async function fetchToken() {
  const res = await fetch("/demo/token", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.message || `token request failed (${res.status})`);
  return body.token;
}

// --- status line -------------------------------------------------------------------------

function showState(state) {
  $("status").dataset.state = state;
  $("state").textContent = state;
  $("frontend").textContent = herald?.frontend || "–";
  $("connection").textContent = short(herald?.connectionId);
}

// --- task --------------------------------------------------------------------------------

function renderTask() {
  const t = currentTask;
  const pct = Math.round(t.progress * 100);
  $("progress-bar").style.width = `${pct}%`;
  $("progress").setAttribute("aria-valuenow", String(pct));
  $("progress-pct").textContent = `${pct}%`;
  document.querySelector(".task").dataset.state = t.state;
  const label = { queued: "Queued…", started: t.message || "Started…",
                  succeeded: "Done", failed: "Failed" }[t.state];
  $("task-state").textContent = `${label} · task ${short(t.id)}`;
  const result = $("task-result");
  result.hidden = t.state !== "succeeded" && t.state !== "failed";
  result.classList.toggle("failed", t.state === "failed");
  result.textContent = t.state === "failed" ? t.error : `Result: ${JSON.stringify(t.result)}`;
}

function onTaskEvent(frame) {
  if (!frame.event.startsWith("task.") || !frame.data?.task_id) return;
  currentTask = herald.task(frame.data.task_id); // whoever started it: this tab or another
  renderTask();
}

async function startTask() {
  $("start-task").disabled = true;
  try {
    currentTask = await herald.startTask("demo.sleep", { seconds: 4, steps: 8 });
    renderTask();
  } catch (err) {
    $("task-state").textContent = `Could not start: ${err.message}`;
  } finally {
    $("start-task").disabled = false;
  }
}

// --- room --------------------------------------------------------------------------------

function renderMembers(members) {
  const list = [...members.values()].sort((a, b) =>
    a.user_id.localeCompare(b.user_id) || a.connection_id.localeCompare(b.connection_id));
  $("member-count").textContent = String(list.length);
  $("members").replaceChildren(...list.map((m) => {
    const mine = m.connection_id === herald.connectionId;
    const avatar = el("span", { className: "avatar", textContent: m.user_id[0].toUpperCase() });
    avatar.style.background = `hsl(${hue(m.user_id)} 55% 52%)`;
    return el("li", { title: `connection ${m.connection_id}` }, avatar,
      el("span", { className: "who" },
        el("b", {}, m.user_id,
           mine ? el("span", { className: "you", textContent: " (you)" }) : null),
        el("small", { textContent: `on ${m.frontend}` })));
  }));
}

function addMessage({ who, text, ts = Date.now() / 1000, mine = false, notice = false }) {
  const list = $("messages");
  list.querySelector(".empty")?.remove();
  const li = notice
    ? el("li", { className: "notice", textContent: text })
    : el("li", { className: mine ? "mine" : "" },
         el("span", { className: "meta", textContent: `${who} · ${time(ts)}` }),
         el("span", { className: "text", textContent: text }));
  list.append(li);
  list.scrollTop = list.scrollHeight;
  return li;
}

async function say(event) {
  event.preventDefault();
  const text = $("say").value.trim();
  if (!text) return;
  $("say").value = "";
  const li = addMessage({ who: `${user} (you)`, text, mine: true }); // we never get our own
  try {
    await herald.publish({ group: ROOM }, "chat", { user, text }, { durable: true });
  } catch (err) {
    li.classList.add("failed");
    li.title = err.message;
  }
}

// --- connect -----------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  user = $("user").value.trim();
  $("connect").disabled = true;
  $("signin-error").hidden = true;
  try {
    localStorage.setItem("herald-demo-user", user);
    const token = await fetchToken(); // first one here, so a refusal shows on the form
    herald = new Herald({ token, getToken: fetchToken });
    herald.on("state", showState);
    let welcomed = false;
    herald.on("welcome", (w) => {
      showState(herald.state);
      if (w.resumed) addMessage({ notice: true, text: `Resumed on ${w.frontend}` });
      else if (welcomed) addMessage({ notice: true, text: `New session on ${w.frontend}` });
      welcomed = true;
    });
    herald.on("gap", () => addMessage({ notice: true, text: "Some messages were not replayed" }));
    herald.on("disconnected", ({ code, delay }) => console.info(
      "herald: socket closed", code, delay === null ? "(stopped)" : `retry in ${delay} ms`));
    herald.on("error", (err) => console.warn("herald:", err.code, err.message));
    herald.on("event:*", onTaskEvent);
    herald.on("event:chat", (data, frame) => addMessage({
      who: String(data?.user ?? "someone"), text: String(data?.text ?? JSON.stringify(data)),
      ts: frame.ts }));
    await new Promise((resolve, reject) => {
      const wait = (s) => {
        if (s === "open" || s === "closed") herald.off("state", wait);
        if (s === "open") resolve();
        else if (s === "closed") reject(herald.lastError || new Error("connection closed"));
      };
      herald.on("state", wait).connect();
    });
    await herald.join(ROOM);
    await herald.monitor(ROOM, {}, renderMembers);
    $("signin").hidden = true;
    $("app").hidden = false;
    $("say").focus();
  } catch (err) {
    herald?.close();
    $("signin-error").textContent = err.message || String(err);
    $("signin-error").hidden = false;
    $("connect").disabled = false;
  }
}

$("user").value = localStorage.getItem("herald-demo-user") || "";
$("signin-form").addEventListener("submit", signIn);
$("start-task").addEventListener("click", startTask);
$("say-form").addEventListener("submit", say);
