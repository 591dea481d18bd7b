// The workq dashboard: polls /api/queues every second, keeps one card per
// queue (updated in place, so focus and buttons stay put), charts the
// enqueue and complete rates of the last minute, and posts actions. Every
// value from the server is set as text, never as HTML.
"use strict";

const TOKEN_KEY = "workq-token";
const POLL_MS = 1000;
const HISTORY = 60;
const COUNTERS = ["pending", "delayed", "leased", "completed", "dead", "enqueued"];
const SVG = "http://www.w3.org/2000/svg";

/** Per queue: its card's elements, the last sample and the rates seen. */
const cards = new Map();

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(method, path, body) {
  const headers = {};
  if (token()) headers["Authorization"] = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch("/api" + path, {
    method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) {
    const err = new Error((data && data.error) || (res.status + " " + res.statusText));
    err.status = res.status;
    throw err;
  }
  return data;
}

function say(text) { $("status").textContent = text; }
function problem(text) { $("problem").textContent = text; }

function stateOf(q) { return q.drained ? "drained" : q.sealed ? "sealed" : "active"; }

function path(name) { return "/queues/" + encodeURIComponent(name); }

async function act(what, name, method, url, body, done) {
  problem("");
  say(what + "…");
  try {
    const out = await api(method, url, body);
    say(done(out));
    await refresh();
  } catch (e) {
    say("Refused: " + what + ": " + e.message);
    problem(e.message);
  }
}

function card(name) {
  const id = "q-" + cards.size;
  const title = el("h2", { id: id + "-title" }, el("span", { text: name }));
  const state = el("span", { class: "state", "data-field": "state" });
  title.append(state);
  const dl = el("dl");
  const values = {};
  for (const c of COUNTERS) {
    values[c] = el("dd", { "data-counter": c, text: "0" });
    dl.append(el("div", {}, el("dt", { text: c }), values[c]));
  }
  const enq = el("span", { class: "enq", "data-rate": "enqueue", text: "0.0" });
  const done = el("span", { class: "done", "data-rate": "complete", text: "0.0" });
  const rates = el("p", { class: "rates" }, "enqueued ", enq, "/s · completed ", done, "/s");
  const chart = document.createElementNS(SVG, "svg");
  chart.setAttribute("class", "chart");
  chart.setAttribute("viewBox", "0 0 14 100");
  chart.setAttribute("preserveAspectRatio", "none");
  chart.setAttribute("role", "img");
  chart.setAttribute("aria-label", "Enqueue (solid) and complete (dashed) rates of queue " + name + ", last minute");
  const lines = {};
  for (const k of ["enq", "done"]) {
    lines[k] = document.createElementNS(SVG, "polyline");
    lines[k].setAttribute("class", k);
    chart.append(lines[k]);
  }
  const deadId = id + "-dead";
  const seal = el("button", { type: "button", "aria-label": "Seal queue " + name, text: "Seal" });
  const purge = el("button", { type: "button", class: "danger", "aria-label": "Purge queue " + name, text: "Purge" });
  const showDead = el("button", {
    type: "button", "aria-expanded": "false", "aria-controls": deadId,
    "aria-label": "Dead items of queue " + name, text: "Dead items",
  });
  const deadBox = el("div", { class: "dead", id: deadId, hidden: "" });
  const actions = el("div", { class: "actions" }, seal, purge, showDead);
  const section = el("section", { class: "queue", "data-queue": name, "aria-labelledby": id + "-title" },
    title, dl, rates, chart, actions, deadBox);

  seal.addEventListener("click", () => act("seal " + name, name, "POST", path(name) + "/seal", {},
    () => "Sealed " + name + "."));
  purge.addEventListener("click", () => {
    if (!window.confirm("Purge every pending and delayed item of " + name + "?")) return;
    act("purge " + name, name, "POST", path(name) + "/purge", {}, (o) => "Purged " + o.purged + " items of " + name + ".");
  });
  showDead.addEventListener("click", () => {
    const open = deadBox.hidden;
    deadBox.hidden = !open;
    showDead.setAttribute("aria-expanded", String(open));
    if (open) loadDead(c);
  });
  const c = { name, section, state, values, enq, done, chart, lines, deadBox, deadIds: "", last: null, points: [] };
  return c;
}

async function loadDead(c) {
  if (c.deadBox.hidden) return;
  let page;
  try {
    page = await api("GET", path(c.name) + "/dead?limit=100");
  } catch (e) {
    c.deadBox.replaceChildren(el("p", { class: "hint", text: "Dead items: " + e.message }));
    c.deadIds = "";
    return;
  }
  const ids = page.items.map((d) => d.id).join(",");
  if (ids === c.deadIds && c.deadBox.firstChild) return;
  c.deadIds = ids;
  if (page.items.length === 0) {
    c.deadBox.replaceChildren(el("p", { class: "hint", text: "No dead items." }));
    return;
  }
  const list = el("ul", { class: "dead-list" });
  for (const d of page.items) {
    const requeue = el("button", {
      type: "button", "data-requeue": d.id,
      "aria-label": "Requeue dead item " + d.id + " of queue " + c.name, text: "Requeue",
    });
    requeue.addEventListener("click", () => act("requeue item " + d.id + " of " + c.name, c.name, "POST",
      path(c.name) + "/requeue-dead", { ids: [d.id] }, (o) => "Requeued " + o.requeued + " item of " + c.name + "."));
    const preview = d.payload_preview === null ? "(" + d.payload_bytes + " bytes)" : d.payload_preview;
    const attempts = d.attempts === 1 ? "1 attempt" : d.attempts + " attempts";
    list.append(el("li", { "data-dead": d.id },
      el("p", { class: "dead-head" },
        el("strong", { text: "Item " + d.id }),
        " · " + attempts + " · died " + new Date(d.died_at_ms).toLocaleTimeString()),
      el("p", { class: "reason", text: d.reason || "(no reason given)" }),
      el("p", { class: "payload hint", text: "payload: " + preview }),
      requeue));
  }
  const title = el("p", { class: "hint", text: page.more ? "The oldest 100 dead items:" : "Dead items:" });
  const requeueAll = el("button", { type: "button", "aria-label": "Requeue all dead items of queue " + c.name, text: "Requeue all" });
  requeueAll.addEventListener("click", () => act("requeue the dead items of " + c.name, c.name, "POST",
    path(c.name) + "/requeue-dead", { all: true }, (o) => "Requeued " + o.requeued + " dead items of " + c.name + "."));
  c.deadBox.replaceChildren(title, list, requeueAll);
}

function plot(c) {
  const max = Math.max(1, ...c.points.map((p) => Math.max(p.enq, p.done)));
  // The x axis spans the samples so far (at least 15 s, at most a minute).
  const span = Math.max(c.points.length, 15);
  c.chart.setAttribute("viewBox", "0 0 " + (span - 1) + " 100");
  const offset = span - c.points.length;
  for (const k of ["enq", "done"]) {
    c.lines[k].setAttribute("points", c.points
      .map((p, i) => (offset + i) + "," + (100 - (p[k] / max) * 96 - 2).toFixed(1)).join(" "));
  }
}

function update(c, q, time) {
  const state = stateOf(q);
  c.state.textContent = state;
  c.state.dataset.state = state;
  for (const k of COUNTERS) c.values[k].textContent = String(q[k]);
  if (c.last && time > c.last.time) {
    const dt = (time - c.last.time) / 1000;
    const enq = Math.max(0, q.enqueued - c.last.enqueued) / dt;
    const done = Math.max(0, q.completed - c.last.completed) / dt;
    c.points.push({ enq, done });
    if (c.points.length > HISTORY) c.points.shift();
    c.enq.textContent = enq.toFixed(1);
    c.done.textContent = done.toFixed(1);
    plot(c);
  }
  c.last = { time, enqueued: q.enqueued, completed: q.completed };
}

let refreshing = null;

async function refresh() {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      const view = await api("GET", "/queues");
      const seen = new Set();
      const box = $("queues");
      for (const q of view.queues) {
        seen.add(q.name);
        let c = cards.get(q.name);
        if (!c) {
          c = card(q.name);
          cards.set(q.name, c);
          box.append(c.section);
        }
        update(c, q, view.time_ms);
        loadDead(c);
      }
      for (const [name, c] of cards) {
        if (!seen.has(name)) { c.section.remove(); cards.delete(name); }
      }
      $("empty").hidden = view.queues.length !== 0;
      $("updated").textContent = "Updated " + new Date(view.time_ms).toLocaleTimeString();
      if ($("problem").dataset.from === "poll") { problem(""); delete $("problem").dataset.from; }
    } catch (e) {
      const text = e.status === 401 ? "This server needs a token: " + e.message : "Cannot load the queues: " + e.message;
      problem(text);
      $("problem").dataset.from = "poll";
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = token();
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    say("Token set for this tab.");
    refresh();
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    say("Token forgotten.");
    refresh();
  });
  refresh();
  setInterval(refresh, POLL_MS);
});
