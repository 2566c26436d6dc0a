// The dashboard page's session and live feed, and its start (loaded after app.js).
//
// The session: the login link (`p2pctl dashboard`) sends the browser to `/#session=S`; the
// fragment never reaches a server. The page moves S to sessionStorage (kept per origin, so per
// port, and per tab), takes it out of the address bar, and sends `Authorization: Bearer S` on
// every request. The feed is read with fetch, since EventSource cannot send a header.
"use strict";

// ---- the session ---------------------------------------------------------------------------

const SESSION_KEY = "p2pos-dashboard-session";

function takeSession() {
  const match = /^#session=([0-9a-f]{1,128})$/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(SESSION_KEY, match[1]);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(SESSION_KEY);
}

const session = takeSession();

function authorized(init) {
  return Object.assign({ cache: "no-store", credentials: "omit", headers: { Authorization: "Bearer " + session } }, init);
}

const LOGGED_OUT = "This page needs a login: run `p2pctl dashboard` on this machine and open the link it prints (within a minute).";
const REFUSED = "The node no longer accepts this page's login (it restarted, or the session ended): run `p2pctl dashboard` for a new link.";

// ---- the live feed -------------------------------------------------------------------------

// Most bytes of one server-sent event (the node's are one line of JSON, far smaller).
const MAX_FRAME = 1 << 20;

// Follows /api/events: fetch and a stream reader (EventSource cannot send a header), the
// server-sent events' framing parsed here. A cut feed is followed again after the node's
// `retry`; a refused one (401: the session ended; 503: too many pages) after 10 s.
async function follow() {
  let retryMs = 2000;
  let response = null;
  try {
    response = await fetch("/api/events", authorized());
  } catch (e) { /* the node is down: try again */ }
  if (!response || !response.ok) {
    setLive(false);
    if (response && response.status === 401) problem(REFUSED);
    else if (response) problem("The node refused this page's live feed (too many pages open?); trying again in 10 s.");
    setTimeout(follow, response ? 10000 : retryMs);
    return;
  }
  setLive(true);
  problem("");
  loadSamples();
  loadRecentEvents();
  refreshStatus();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const frame = parseFrame(block);
        if (frame.retry !== null) retryMs = frame.retry;
        if (frame.data !== null) dispatch(frame.event, frame.data);
      }
      if (buffer.length > MAX_FRAME) break;
    }
  } catch (e) { /* cut: follow again */ }
  reader.cancel().catch(() => {});
  setLive(false);
  setTimeout(follow, retryMs);
}

// One server-sent event's lines: `event:`, `data:` (joined by newlines), `retry:`, comments.
function parseFrame(block) {
  const frame = { event: "message", data: null, retry: null };
  const data = [];
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") frame.event = value;
    else if (field === "data") data.push(value);
    else if (field === "retry" && /^\d+$/.test(value)) frame.retry = Number(value);
  }
  if (data.length) frame.data = data.join("\n");
  return frame;
}

function dispatch(name, data) {
  let message;
  try { message = JSON.parse(data); } catch (e) { return; }
  if (name === "event") {
    const [kind] = describe(message);
    showEvent(message);
    statusSoon();
    if (kind.startsWith("helper") || kind.startsWith("service") || kind.startsWith("channel")) listsSoon();
  } else if (name === "lagged") {
    logEvent("lagged", `this page missed ${message.missed} events`, Date.now());
  } else if (name === "sample") {
    state.samples.push(message);
    if (state.samples.length > MAX_SAMPLES) state.samples.splice(0, state.samples.length - MAX_SAMPLES);
    drawCharts();
  }
}

// ---- start ---------------------------------------------------------------------------------

drawCharts();
window.addEventListener("resize", debounce(drawCharts, 200));
$("doctor-run").addEventListener("click", runDoctor);
if (session) {
  refreshStatus();
  refreshLists();
  loadSamples();
  follow();
  setInterval(refreshStatus, STATUS_EVERY_MS);
  setInterval(refreshLists, LISTS_EVERY_MS);
} else {
  // Nothing to ask the node without a login: say how to get one.
  problem(LOGGED_OUT);
  const badge = $("live");
  badge.textContent = "not logged in";
  badge.className = "badge off";
}
