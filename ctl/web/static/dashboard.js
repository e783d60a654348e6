// The dashboard page: one EventSource gives snapshots (every second) and the
// supervisor's events; watchers, processes and sparklines are drawn from them.
"use strict";

const HISTORY = 60;
const ACTIONS = ["start", "stop", "restart", "reload", "incr", "decr"];
const history = new Map(); // pid -> {cpu: [], mem: []}
let readOnly = true;

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

function sparkline(values, kind) {
  const svgNs = "http://www.w3.org/2000/svg";
  const width = 90, height = 20;
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("class", `spark ${kind}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  // Scaled to its own peak: the shape shows the trend, the number beside it the value.
  const top = Math.max(...values) || 1;
  const step = width / (HISTORY - 1);
  const points = values.map((value, index) => {
    const x = width - (values.length - 1 - index) * step;
    const y = height - 1 - (value / top) * (height - 2);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  const line = document.createElementNS(svgNs, "polyline");
  line.setAttribute("points", points.join(" "));
  const back = document.createElementNS(svgNs, "rect");
  back.setAttribute("width", width);
  back.setAttribute("height", height);
  svg.append(back, line);
  return svg;
}

function age(seconds) {
  if (typeof seconds !== "number") return "–";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
}

function figure(value) {
  return typeof value === "number" ? value : 0;
}

async function act(name, action) {
  if (!window.confirm(`${action} ${name}?`)) return;
  const response = await fetch(`/api/watchers/${encodeURIComponent(name)}/${action}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: "{}",
  });
  const reply = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok || reply.status === "error") {
    note(`${action} ${name}: ${reply.error || reply.reason}`, true);
  }
}

function watcherCard(name) {
  let card = document.querySelector(`.watcher[data-watcher="${CSS.escape(name)}"]`);
  if (card) return card;
  const actions = element("span", { class: "actions" });
  if (!readOnly) {
    for (const action of ACTIONS) {
      const button = element("button", { type: "button", "data-action": action }, action);
      button.addEventListener("click", () => act(name, action));
      actions.append(button);
    }
  }
  card = element(
    "article",
    { class: "watcher", "data-watcher": name },
    actions,
    element("h2", {}, name),
    element("span", { class: "state" }),
    element("span", { class: "count" }),
    element(
      "table",
      {},
      element("thead", {}, element("tr", {}, ...["pid", "wid", "age", "cpu %", "mem %", "rss"].map((h) => element("th", {}, h)))),
      element("tbody"),
    ),
  );
  document.getElementById("watchers").append(card);
  return card;
}

function render(snapshot) {
  if (snapshot.error) {
    setConnection(`supervisor: ${snapshot.error}`, "down");
    return;
  }
  setConnection("live", "live");
  const seen = new Set();
  const names = new Set(snapshot.watchers.map((w) => w.name));
  for (const card of document.querySelectorAll(".watcher")) {
    if (!names.has(card.dataset.watcher)) card.remove();
  }
  for (const watcher of snapshot.watchers) {
    const card = watcherCard(watcher.name);
    const phase = (watcher.state && watcher.state.state) || watcher.status;
    const state = card.querySelector(".state");
    state.textContent = phase + (watcher.state && watcher.state.reason ? `: ${watcher.state.reason}` : "");
    state.className = `state ${phase}`;
    const count = card.querySelector(".count");
    count.textContent = `${watcher.processes.length} process${watcher.processes.length === 1 ? "" : "es"}`;
    count.dataset.count = watcher.processes.length;
    const rows = watcher.processes.map((process) => {
      seen.add(process.pid);
      const past = history.get(process.pid) || { cpu: [], mem: [] };
      past.cpu = [...past.cpu, figure(process.cpu)].slice(-HISTORY);
      past.mem = [...past.mem, figure(process.mem)].slice(-HISTORY);
      history.set(process.pid, past);
      return element(
        "tr",
        { "data-pid": process.pid },
        element("td", { class: "num pid" }, String(process.pid)),
        element("td", { class: "num" }, String(process.wid ?? "–")),
        element("td", { class: "num" }, age(process.age)),
        element("td", { class: "num" }, sparkline(past.cpu, "cpu"), String(process.cpu ?? "–")),
        element("td", { class: "num" }, sparkline(past.mem, "mem"), String(process.mem ?? "–")),
        element("td", { class: "num" }, String(process.rss ?? "–")),
      );
    });
    card.querySelector("tbody").replaceChildren(...rows);
  }
  for (const pid of history.keys()) if (!seen.has(pid)) history.delete(pid);
}

function note(text, isError = false) {
  const list = document.getElementById("events");
  const time = new Date().toISOString().slice(11, 19);
  list.prepend(element("li", isError ? { class: "error" } : {}, `${time} ${text}`));
  while (list.children.length > 200) list.lastChild.remove();
}

function describe(event) {
  const { topic, time, ...rest } = event;
  const details = Object.entries(rest).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ");
  return `${topic} ${details}`;
}

function setConnection(text, kind) {
  const node = document.getElementById("connection");
  node.textContent = text;
  node.className = `connection ${kind}`;
}

async function start() {
  const config = await (await fetch("/api/config")).json();
  readOnly = config.read_only;
  if (readOnly) document.getElementById("mode").textContent = "read-only";
  const stream = new EventSource("/api/stream");
  stream.addEventListener("snapshot", (message) => render(JSON.parse(message.data)));
  stream.addEventListener("event", (message) => note(describe(JSON.parse(message.data))));
  stream.addEventListener("error", () => setConnection("reconnecting…", "down"));
}

start();
