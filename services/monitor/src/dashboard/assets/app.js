// The dashboard page: reads the node's JSON endpoints and draws the map and charts; feed.js
// holds the session, follows /api/events and starts the page. Plain JavaScript, nothing loaded
// from elsewhere; every value from the node is set as text, never parsed as HTML.
"use strict";

const MAX_EVENTS = 200;     // rows kept in the event log
const MAX_SAMPLES = 150;    // chart samples kept (the node keeps as many)
const STATUS_EVERY_MS = 5000;
const LISTS_EVERY_MS = 10000;

const state = { status: null, groups: [], samples: [], live: false };

// ---- small helpers -------------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "title") node.title = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function short(id) { return id && id.length > 16 ? id.slice(0, 8) + "…" + id.slice(-6) : (id || "—"); }
function num(v) { return Number(v || 0); }
function dash(v) { return v === undefined || v === null || v === "" ? "—" : v; }
function enumName(v, prefix) { return String(v || "").replace(prefix, "").toLowerCase(); }

function bytes(n) {
  n = num(n);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function duration(secs) {
  secs = num(secs);
  const d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600);
  const m = Math.floor(secs % 3600 / 60), s = Math.floor(secs % 60);
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + (d || h || m ? m + "m " : "") + s + "s";
}

function rtt(us) {
  us = num(us);
  if (!us) return "—";
  return us < 1000 ? us + " µs" : (us / 1000).toFixed(us < 10000 ? 2 : 1) + " ms";
}

function clock(ms) {
  const d = new Date(num(ms));
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function fillTable(table, rows, emptyText) {
  const body = $(table).tBodies[0];
  const columns = $(table).tHead.rows[0].cells.length;
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colspan: columns }, emptyText))]));
}

function fillList(list, pairs) {
  $(list).replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function problem(text) {
  const p = $("problem");
  p.hidden = !text;
  p.textContent = text || "";
}

async function getJSON(path) {
  const response = await fetch(path, authorized());
  if (response.status === 401) {
    problem(REFUSED);
    throw new Error("401");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// Runs `fn` at most once per `ms`, at the end of a burst.
function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

// ---- the node's status ---------------------------------------------------------------------

async function refreshStatus() {
  let status;
  try { status = await getJSON("/api/status"); } catch (e) { return; }
  state.status = status;
  $("peer-id").textContent = status.peer_id;
  const reach = $("reachability");
  reach.textContent = "reachability: " + dash(status.reachability);
  reach.className = "badge " + status.reachability;
  document.title = "P2P OS node " + short(status.peer_id);
  fillList("identity", [
    ["peer id", el("code", {}, status.peer_id)],
    ["version", status.version],
    ["uptime", duration(status.uptime_secs)],
    ["reachability (AutoNAT)", dash(status.reachability)],
    ["NAT mapping", dash(status.nat_mapping)],
    ["listening on", addressList(status.listen_addresses)],
    ["external addresses", addressList(status.external_addresses)],
    ["relays held", addressList(status.relays)],
    ["routing table", status.routing_table_size + " peers"],
    ["remembered peers", status.remembered_peers + " (redialled at start)"],
    ["metrics", dash(status.metrics_url)],
  ]);
  const peers = status.peers || [];
  $("peer-count").textContent = peers.length + " connected";
  fillTable("peers", peers.map(peerRow), "no peer connected");
  fillTable("node-services", (status.services || []).map((s) => el("tr", {},
    el("td", {}, s.name),
    el("td", {}, el("span", { class: "pill state-" + s.state }, s.state)),
    el("td", {}, s.restarts),
    el("td", {}, dash(s.last_error)))), "none");
  drawMap();
}

function addressList(list) {
  if (!list || !list.length) return "—";
  return el("div", {}, ...list.map((a) => el("div", { class: "mono" }, a)));
}

function peerRow(p) {
  const direct = p.direct;
  return el("tr", { "data-peer": p.peer_id },
    el("td", {}, el("code", { title: p.peer_id }, p.peer_id)),
    el("td", {}, el("span", { class: "pill " + (direct ? "direct" : "relayed") },
      direct ? "direct" : "relayed" + (p.relays && p.relays.length ? " via " + p.relays.map(short).join(", ") : ""))),
    el("td", {}, dash(p.transport)),
    el("td", {}, rtt(p.rtt_us)),
    el("td", {}, p.connections),
    el("td", {}, addressList(p.addresses)),
    el("td", {}, dash(p.why_relayed)),
    el("td", {}, dash(p.agent_version)));
}

// ---- the other services' lists -------------------------------------------------------------

async function refreshLists() {
  await Promise.allSettled([refreshHelpers(), refreshServices(), refreshGroups(), refreshResources()]);
}

async function refreshHelpers() {
  let reply;
  try { reply = await getJSON("/api/helpers"); } catch (e) { fillTable("helpers", [], "unavailable: " + e.message); return; }
  const helpers = reply.helpers || [];
  $("helper-count").textContent = helpers.length;
  fillTable("helpers", helpers.map((h) => {
    const spec = h.spec || {};
    const st = enumName(h.state, "HELPER_STATE_");
    return el("tr", {},
      el("td", {}, spec.app_id || "(admin)"),
      el("td", {}, spec.name),
      el("td", {}, el("span", { class: "pill state-" + st }, st)),
      el("td", {}, num(h.pid) || "—"),
      el("td", {}, h.restarts),
      el("td", {}, dash(h.reason)));
  }), "no helper");
}

// The doctor's checks of the node, when asked (it dials and looks up peers: not on a timer).
async function runDoctor() {
  const button = $("doctor-run");
  button.disabled = true;
  fillTable("doctor", [], "running…");
  try {
    const report = await getJSON("/api/doctor");
    fillTable("doctor", (report.checks || []).map((c) => {
      const verdict = enumName(c.verdict, "VERDICT_");
      return el("tr", { "data-check": c.name },
        el("td", {}, el("span", { class: "pill verdict-" + verdict }, verdict)),
        el("td", {}, c.name),
        el("td", { title: (c.evidence || []).join("\n") }, c.summary),
        el("td", {}, dash(c.remedy)));
    }), "no check");
  } catch (e) {
    fillTable("doctor", [], "unavailable: " + e.message);
  } finally {
    button.disabled = false;
  }
}

async function refreshServices() {
  const [services, exposures, forwards] = await Promise.allSettled(
    ["/api/services", "/api/exposures", "/api/forwards"].map(getJSON));
  if (services.status === "fulfilled") {
    const list = services.value.services || [];
    $("service-count").textContent = list.length;
    fillTable("services", list.map((s) => el("tr", {},
      el("td", {}, s.service), el("td", {}, dash(s.app_id)), el("td", {}, dash(s.description)))), "no service provided here");
  } else fillTable("services", [], "unavailable: " + services.reason.message);
  if (exposures.status === "fulfilled") {
    fillTable("exposures", (exposures.value.exposures || []).map((x) => el("tr", {},
      el("td", {}, x.service), el("td", {}, x.target), el("td", {}, x.open),
      el("td", {}, num(x.connections)), el("td", {}, num(x.resets) ? x.resets + ": " + x.last_reset : "0"))), "no exposure");
  } else fillTable("exposures", [], "unavailable: " + exposures.reason.message);
  if (forwards.status === "fulfilled") {
    fillTable("forwards", (forwards.value.forwards || []).map((f) => el("tr", {},
      el("td", {}, f.service), el("td", {}, f.listen), el("td", {}, el("code", { title: f.peer }, short(f.peer) || "best")),
      el("td", {}, f.open), el("td", {}, num(f.connections)), el("td", {}, num(f.resets) ? f.resets + ": " + f.last_reset : "0"))), "no forward");
  } else fillTable("forwards", [], "unavailable: " + forwards.reason.message);
}

async function refreshGroups() {
  let reply;
  try { reply = await getJSON("/api/groups"); } catch (e) { fillTable("groups", [], "unavailable: " + e.message); return; }
  state.groups = reply.groups || [];
  $("group-count").textContent = state.groups.length;
  fillTable("groups", state.groups.map((g) => {
    const group = g.group || {};
    return el("tr", {},
      el("td", {}, group.name),
      el("td", {}, el("code", { title: group.id }, short(group.id))),
      el("td", {}, (g.members || []).length),
      el("td", {}, !group.member ? "removed" : group.admin ? "admin" : "member"));
  }), "no group");
  drawMap();
}

async function refreshResources() {
  let inv;
  try { inv = await getJSON("/api/resources"); } catch (e) { fillList("resources", [["", "unavailable: " + e.message]]); return; }
  const cpu = inv.cpu || {}, mem = inv.memory || {}, disk = inv.disk || {}, node = inv.node || {};
  fillList("resources", [
    ["CPU", `${cpu.logical_cores || "?"} cores, ${num(cpu.usage_percent).toFixed(0)}% busy, load ${num(cpu.load_1).toFixed(2)}`],
    ["memory", `${bytes(mem.available_bytes)} available of ${bytes(mem.total_bytes)}`],
    ["disk (data directory)", `${bytes(disk.available_bytes)} free of ${bytes(disk.total_bytes)}`],
    ["this node", `${bytes(node.memory_bytes)} resident, ${num(node.cpu_percent).toFixed(1)}% CPU`],
    ["helpers running", (inv.helpers || []).length],
  ]);
}

// ---- the network map -----------------------------------------------------------------------

function drawMap() {
  const map = $("map");
  const status = state.status;
  if (!status) return;
  const W = 640, H = 400, cx = W / 2, cy = H / 2 - 20;
  const peers = status.peers || [];
  const held = new Set(status.relays || []);
  const relays = new Set(held);
  for (const p of peers) for (const r of p.relays || []) relays.add(r);
  const pos = new Map([[status.peer_id, [cx, cy]]]);
  // Peers on an ellipse around this node, starting upper left so no peer sits on a line.
  const rx = 220, ry = 130;
  peers.forEach((p, i) => {
    const a = -Math.PI * 0.75 + 2 * Math.PI * i / Math.max(1, peers.length);
    pos.set(p.peer_id, [cx + rx * Math.cos(a), cy + ry * Math.sin(a)]);
  });
  const links = [], nodes = [], labels = [];
  for (const p of peers) {
    const [x, y] = pos.get(p.peer_id);
    if (p.direct) links.push(svg("line", { class: "link", x1: cx, y1: cy, x2: x, y2: y }));
    // A relayed peer hangs off its relay (itself a peer: this node's link to it is drawn),
    // on a curve that bows away from the straight line through this node.
    for (const r of p.relays || []) {
      if (p.direct) continue;
      const [fx, fy] = pos.get(r) || [cx, cy];
      const [mx, my] = [(fx + x) / 2, (fy + y) / 2];
      const [qx, qy] = [mx - (y - fy) * 0.3, my + (x - fx) * 0.3];
      links.push(svg("path", { class: "link relayed", d: `M${fx},${fy} Q${qx},${qy} ${x},${y}` }));
    }
    const circle = svg("circle", { class: relays.has(p.peer_id) ? "relay" : "peer", cx: x, cy: y, r: 12 });
    circle.append(svg("title", {}, p.peer_id + (held.has(p.peer_id) ? " (relay this node holds a reservation on)" : "")));
    nodes.push(circle);
    // Labels outside the ring, away from this node (past 24 peers, tooltips only).
    if (peers.length > 24) continue;
    const below = y >= cy;
    const ly = below ? y + 26 : y - 30;
    labels.push(svg("text", { x, y: ly }, short(p.peer_id)));
    labels.push(svg("text", { class: "rtt", x, y: ly + 12 }, (held.has(p.peer_id) ? "relay · " : "") + rtt(p.rtt_us)));
  }
  // Groups: boxes along the bottom, linked to their members drawn above.
  const groups = state.groups.slice(0, 6);
  groups.forEach((g, i) => {
    const group = g.group || {};
    const gx = (W / (groups.length + 1)) * (i + 1), gy = H - 18;
    for (const m of g.members || []) {
      const at = pos.get(m.peer_id);
      if (at) links.push(svg("line", { class: "link member", x1: gx, y1: gy, x2: at[0], y2: at[1] }));
    }
    const box = svg("rect", { class: "group", x: gx - 46, y: gy - 12, width: 92, height: 22, rx: 6 });
    box.append(svg("title", {}, `group ${group.name} (${(g.members || []).length} members)`));
    nodes.push(box);
    labels.push(svg("text", { x: gx, y: gy + 3 }, group.name || short(group.id)));
  });
  const self = svg("circle", { class: "self", cx, cy, r: 18 });
  self.append(svg("title", {}, "this node: " + status.peer_id));
  nodes.push(self);
  labels.push(svg("text", { x: cx, y: cy + 34 }, "this node"));
  map.replaceChildren(...links, ...nodes, ...labels);
}

// ---- charts --------------------------------------------------------------------------------

function drawChart(canvasId, series) {
  const canvas = $(canvasId);
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  canvas.width = w * ratio; canvas.height = h * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, w, h);
  const style = getComputedStyle(document.documentElement);
  const samples = state.samples;
  const left = 58, bottom = h - 18, top = 8, right = w - 6;
  const now = Date.now(), span = 5 * 60 * 1000;
  const traffic = canvasId === "traffic-chart";
  let max = 0;
  for (const s of samples) for (const [key] of series) max = Math.max(max, num(s[key]));
  max = niceCeiling(max, traffic ? 1024 : 1);
  ctx.strokeStyle = style.getPropertyValue("--line");
  ctx.fillStyle = style.getPropertyValue("--muted");
  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = bottom - (bottom - top) * i / 4;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(right, y); ctx.stroke();
    const value = max * i / 4;
    ctx.fillText(traffic ? bytes(value) : value.toFixed(max < 4 ? 2 : max < 40 ? 1 : 0), 2, y + 4);
  }
  for (let m = 0; m <= 5; m++) {
    const x = left + (right - left) * (1 - m / 5);
    const label = m === 0 ? "now" : "-" + m + "m";
    ctx.fillText(label, m === 0 ? x - ctx.measureText(label).width : x - 10, h - 4);
  }
  series.forEach(([key], i) => {
    ctx.strokeStyle = style.getPropertyValue("--s" + i);
    ctx.lineWidth = 1.8;
    ctx.beginPath();
    let started = false;
    for (const s of samples) {
      const x = left + (right - left) * (1 - (now - num(s.at_ms)) / span);
      if (x < left) continue;
      const y = bottom - (bottom - top) * num(s[key]) / max;
      if (started) ctx.lineTo(x, y); else { ctx.moveTo(x, y); started = true; }
    }
    ctx.stroke();
  });
}

// A round axis top at or above `value`, at least `floor`: 1, 2 or 5 times a power of ten, or
// for bytes (floor 1024) a power of two.
function niceCeiling(value, floor) {
  if (value <= floor) return floor;
  if (floor === 1024) return Math.pow(2, Math.ceil(Math.log2(value)));
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return value;
}

function drawCharts() {
  drawChart("traffic-chart", [["bytes_in"], ["bytes_out"]]);
  drawChart("message-chart", [["messages_in"], ["messages_out"], ["pubsub"], ["events"]]);
}

async function loadSamples() {
  try {
    const reply = await getJSON("/api/samples");
    state.samples = reply.samples || [];
    drawCharts();
  } catch (e) { /* shown by getJSON when it matters */ }
}

// ---- live events ---------------------------------------------------------------------------

function describe(event) {
  const kind = Object.keys(event).find((k) => k !== "at_ms") || "unknown";
  const e = event[kind] || {};
  const peer = (id) => id || "?";
  switch (kind) {
    case "peer_connected": return [kind, `${peer(e.peer_id)} at ${e.address}`];
    case "peer_gone": return [kind, peer(e.peer_id)];
    case "channel_opened": return [kind, `channel ${e.channel_id} of ${e.app_id} with ${peer(e.peer_id)}${e.inbound ? " (inbound)" : ""}`];
    case "channel_closed": return [kind, `channel ${e.channel_id} of ${e.app_id} with ${peer(e.peer_id)}`];
    case "service_restarted": return [kind, `${e.service} (${e.restarts} restarts): ${e.reason}`];
    case "service_state": return [kind, `${e.service} is ${e.state}`];
    case "message_delivered": return [kind, `${e.inbound ? "from" : "to"} ${peer(e.peer_id)}, app ${e.app_id}, #${e.message_id}`];
    case "message_failed": return [kind, `to ${peer(e.peer_id)}, app ${e.app_id}, #${e.message_id}: ${e.reason}`];
    case "message_waiting": return [kind, `to ${peer(e.peer_id)}, app ${e.app_id}, #${e.message_id}: ${e.reason}`];
    case "helper": return [kind, `${e.app_id || "(admin)"}/${e.name} is ${e.state}${num(e.pid) ? " (pid " + e.pid + ")" : ""}${e.reason ? ": " + e.reason : ""}`];
    case "relay_reserved": return [kind, `reservation on relay ${peer(e.relay_peer_id)}`];
    case "connection_upgraded": return [kind, `${peer(e.peer_id)} now direct at ${e.address}`];
    case "lagged": return [kind, `missed ${e.missed} events`];
    default: return [kind, JSON.stringify(e)];
  }
}

// Events shown, by their JSON: the recent ones read at (re)connection may overlap the feed.
const shown = new Set();

function showEvent(event) {
  const key = JSON.stringify(event);
  if (shown.has(key)) return;
  shown.add(key);
  if (shown.size > 4 * MAX_EVENTS) shown.delete(shown.values().next().value);
  const [kind, text] = describe(event);
  logEvent(kind, text, num(event.at_ms));
}

async function loadRecentEvents() {
  try {
    const reply = await getJSON("/api/recent-events");
    for (const event of reply.events || []) showEvent(event);
  } catch (e) { /* shown by getJSON when it matters */ }
}

function logEvent(kind, text, atMs) {
  const list = $("events");
  // Newest first, by the node's time (recent events may arrive after live ones).
  let before = list.firstElementChild;
  while (before && num(before.dataset.atMs) > atMs) before = before.nextElementSibling;
  const row = el("li", { class: "new", "data-kind": kind, "data-at-ms": String(atMs), "data-received-ms": String(Date.now()) },
    el("span", { class: "at" }, clock(atMs)),
    el("span", { class: "kind" }, kind.replace(/_/g, " ")),
    el("span", { class: "mono" }, text));
  list.insertBefore(row, before);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

const statusSoon = debounce(refreshStatus, 250);
const listsSoon = debounce(refreshLists, 400);

function setLive(on) {
  state.live = on;
  const badge = $("live");
  badge.textContent = on ? "live" : "reconnecting…";
  badge.className = "badge " + (on ? "on" : "off");
}
