// The demo page: live status, background traffic, and the deploy cards.
// Deploys go through beamdeploy's admin API (/_deploy) with the token from
// this page's address (#token=...), kept in this tab only.
"use strict";

const PING_EVERY_MS = 100;
const STATUS_EVERY_MS = 500;
const TOKEN_KEY = "beamdeploy-demo-token";

const state = {
  token: null,
  status: null,
  statusAt: 0,
  busy: false,
  runs: 0, // actions started from this page; the outcome element says which one it shows
  ok: 0,
  failed: 0,
  served: new Map(), // pid -> how many /api/whoami answers that process counted (its own state)
  labels: new Map(), // release version -> {label, color}, learned from /api/whoami
};

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- the token -------------------------------------------------------------

function takeToken() {
  const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search); // out of the address bar
  }
  state.token = sessionStorage.getItem(TOKEN_KEY);
  if (!state.token) askForToken("");
}

function askForToken(why) {
  if (why) $("token-why").textContent = why;
  $("token-form").hidden = false;
  renderCards();
}

$("token-entry").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  state.token = token;
  $("token-input").value = "";
  $("token-form").hidden = true;
  renderCards();
});

// ---- talking to the admin API ---------------------------------------------

async function admin(method, path, body) {
  const init = { method, cache: "no-store", headers: { Authorization: `Bearer ${state.token}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/_deploy${path}`, init);
  const document_ = await response.json().catch(() => null);
  if (response.status === 401) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    askForToken("The admin API refused the token this page had. Paste the one in example_app/.demo/token:");
  }
  if (!response.ok) {
    const detail = document_ && document_.detail ? `${document_.error}: ${document_.detail}` : `HTTP ${response.status}`;
    const error = new Error(detail);
    error.document = document_;
    throw error;
  }
  return document_;
}

// Server-sent events need a header here, so fetch reads the stream (EventSource sends no headers).
async function follow(id, onEvent) {
  const response = await fetch(`/_deploy/deployments/${id}/events`, {
    cache: "no-store",
    headers: { Authorization: `Bearer ${state.token}` },
  });
  if (!response.ok) throw new Error(`events of deployment ${id}: HTTP ${response.status}`);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      const parsed = data ? JSON.parse(data) : {};
      if (name === "end") return parsed;
      if (name === "error") throw new Error(`${parsed.error}: ${parsed.detail}`);
      onEvent(name, parsed);
    }
  }
  // The stream ended without its last event: ask for the deployment until it has ended.
  for (let i = 0; i < 1200; i++) {
    const deployment = await admin("GET", `/deployments/${id}`);
    if (deployment.outcome) return deployment;
    await sleep(500);
  }
  throw new Error(`deployment ${id} did not end`);
}

// A build of the demo by the demo (POST /api/builds), its progress as JSON lines.
async function build(kind, label) {
  const response = await fetch("/api/builds", {
    method: "POST",
    cache: "no-store",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ kind, label }),
  });
  if (!response.ok) {
    const document_ = await response.json().catch(() => null);
    throw new Error(`build refused: ${document_ ? document_.error : `HTTP ${response.status}`}`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const message = JSON.parse(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 1);
      if (message.line !== undefined) log("build", message.line);
      else if (message.done) return message.done;
      else throw new Error(`build failed: ${message.error}`);
    }
  }
  throw new Error("the build's answer ended early");
}

// ---- the deployment panel --------------------------------------------------

let logStarted = 0;

function startLog(title) {
  logStarted = performance.now();
  $("deploy-title").textContent = title;
  $("deploy-log").replaceChildren();
  state.runs += 1;
  $("deploy-outcome").dataset.run = state.runs;
  setOutcome("running", "running…");
  $("deploy-detail").hidden = true;
  $("deploy-detail").replaceChildren();
  delete $("deploy-detail").dataset.samePids;
  $("deploy-detail").className = "";
}

function log(phase, message) {
  const item = document.createElement("li");
  const at = document.createElement("span");
  at.className = "at";
  at.textContent = `${((performance.now() - logStarted) / 1000).toFixed(2).padStart(6)}s `;
  const tag = document.createElement("span");
  tag.className = `phase phase-${phase}`;
  tag.textContent = `${phase.padEnd(10)} `;
  item.append(at, tag, document.createTextNode(message));
  item.dataset.phase = phase;
  const list = $("deploy-log");
  list.append(item);
  while (list.children.length > 200) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

function setOutcome(outcome, text) {
  const element = $("deploy-outcome");
  element.dataset.outcome = outcome;
  element.textContent = text;
}

function seconds(deployment) {
  const took = (deployment.ended_at || 0) - (deployment.started_at || 0);
  return took > 0 ? `${took.toFixed(2)} s` : "";
}

function servingPids() {
  const serving = state.status && state.status.serving;
  return serving ? serving.workers.map((worker) => worker.pid).sort((a, b) => a - b) : [];
}

function describeRelease(version) {
  const known = state.labels.get(version);
  return known ? `demo ${version} (${known.label})` : `demo ${version}`;
}

const TITLES = {
  ship: (label) => `Ship ${label}: build a new release, then upgrade to it blue-green`,
  hot: () => "Hot-reload a new greeting: build, then patch the running workers",
  broken: () => "Ship a broken release: build one whose import fails, then try to upgrade",
  rollback: () => "Roll back to the release that served before, blue-green",
};

async function act(kind, label) {
  if (state.busy || !state.token) return;
  state.busy = true;
  renderCards();
  startLog(TITLES[kind](label));
  try {
    let request;
    if (kind === "rollback") {
      request = ["/rollback", undefined];
    } else {
      log("api", `POST /api/builds {"kind": "${kind}"${label ? `, "label": "${label}"` : ""}}`);
      const built = await build(kind, label);
      if (!state.labels.has(built.version)) state.labels.set(built.version, { label: built.label, color: null });
      request = [kind === "hot" ? "/hot-reload" : "/upgrade", { release: built.artifact }];
    }
    await refreshStatus();
    const before = servingPids();
    const servingBefore = state.status && state.status.serving ? state.status.serving.release.version : "?";
    log("api", `POST /_deploy${request[0]}${request[1] ? ` ${JSON.stringify(request[1])}` : ""}`);
    const started = await admin("POST", request[0], request[1]);
    log("api", `202 Accepted: deployment ${started.id}; following GET /_deploy/deployments/${started.id}/events`);
    const end = await follow(started.id, (phase, event) => log(phase, event.message || phase));
    await refreshStatus();
    if (end.outcome === "succeeded") {
      log("done", `${end.kind} ${end.id} succeeded in ${seconds(end)}`);
      if (kind === "hot") showHotReload(end, before);
      const to = end.to && end.to.version ? describeRelease(end.to.version) : "the new release";
      const how = kind === "hot" ? "hot-reloaded into the same workers" : `generation ${end.generation}, blue-green`;
      setOutcome("succeeded", `✓ ${to} serves (${how}) after ${seconds(end)}.`);
    } else {
      const [cause, where] = explain(end.error || "failed");
      setOutcome("failed", `✗ Refused: ${cause}. ${describeRelease(servingBefore)} keeps serving, untouched.`);
      if (where || (end.error || "").includes("\n")) showDetail("refusal-where", where || "", end.error);
    }
  } catch (error) {
    log("failed", error.message);
    setOutcome("failed", `✗ ${error.message}`);
  } finally {
    state.busy = false;
    renderCards();
  }
}

// A refusal's first line is its cause; a traceback after it says where it happened.
function explain(error) {
  const lines = error.split("\n");
  const frames = [...error.matchAll(/File "([^"]+)", line (\d+)/g)];
  const cause = lines[0].replace(/\/\S*\/site-packages\//g, ".../site-packages/"); // shorter paths
  if (!frames.length) return [cause, null];
  const [, file, line] = frames[frames.length - 1];
  const short = file.includes("site-packages/") ? file.split("site-packages/").pop() : file;
  return [cause, `In the new release's ${short}, line ${line}.`];
}

function showDetail(testid, summary, full) {
  const box = $("deploy-detail");
  const where = document.createElement("div");
  where.dataset.testid = testid;
  where.textContent = summary;
  const details = document.createElement("details");
  const title = document.createElement("summary");
  title.textContent = "The whole error, as the deployment recorded it";
  const text = document.createElement("pre");
  text.textContent = full;
  details.append(title, text);
  box.append(where, details);
  box.className = "refusal";
  box.hidden = false;
}

function showHotReload(end, before) {
  const workers = end.workers || {};
  const after = Object.keys(workers).map(Number).sort((a, b) => a - b);
  const same = before.length > 0 && before.join() === after.join();
  const box = $("deploy-detail");
  const line = (testid, text) => {
    const p = document.createElement("div");
    p.dataset.testid = testid;
    p.textContent = text;
    box.append(p);
  };
  line("hot-pids-before", `Worker pids before: ${before.join(", ")}`);
  line("hot-pids-after", `Worker pids after:  ${after.join(", ")}`);
  line(
    "hot-same-pids",
    same
      ? "The same processes: nothing restarted, and their counters in the table kept counting."
      : "The pids changed (a worker was replaced).",
  );
  const held = after.map((pid) => {
    const resume = (workers[String(pid)] || {}).resume || {};
    const ms = ((resume.held_for || 0) * 1000).toFixed(1);
    return `pid ${pid}: ${resume.held || 0} request(s) held for ${ms} ms`;
  });
  line("hot-held", `New requests held while the code changed: ${held.join("; ")}.`);
  const changes = ((end.plan || {}).modules || []).map((module) => {
    const what = [...(module.changes.functions || []), ...(module.changes.constants || [])];
    return `${module.module}: ${what.join(", ") || "docstring"}`;
  });
  if (changes.length) line("hot-changes", `Patched in place: ${changes.join("; ")}.`);
  box.dataset.samePids = String(same);
  box.hidden = false;
}

// ---- live status -----------------------------------------------------------

async function refreshStatus() {
  if (!state.token) return;
  try {
    state.status = await admin("GET", "/status");
    state.statusAt = Date.now();
  } catch (error) {
    $("status-age").textContent = `(status: ${error.message})`;
    return;
  }
  renderStatus();
}

function renderStatus() {
  const status = state.status;
  if (!status) return;
  $("status-age").textContent = status.upgrading
    ? `(deploying: ${status.deployment ? status.deployment.phase : "…"})`
    : "";
  const rows = [];
  const add = (generation, kind) => {
    if (generation) rows.push([generation, kind]);
  };
  (status.booting || []).forEach((g) => add(g, "booting"));
  add(status.serving, "serving");
  (status.draining || []).forEach((g) => add(g, "draining"));
  const body = $("generations");
  body.replaceChildren();
  for (const [generation, kind] of rows) {
    const row = document.createElement("tr");
    row.className = kind;
    row.dataset.testid = `generation-${kind}`;
    row.dataset.generation = generation.generation;
    const cell = (content) => {
      const td = document.createElement("td");
      if (typeof content === "string") td.textContent = content;
      else td.append(content);
      row.append(td);
      return td;
    };
    cell(String(generation.generation));
    const version = generation.release ? generation.release.version : "?";
    const known = state.labels.get(version);
    const release = document.createElement("span");
    if (known && known.color) {
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = known.color;
      release.append(swatch);
    }
    release.append(document.createTextNode(describeRelease(version)));
    cell(release);
    const badge = document.createElement("span");
    badge.className = `state state-${kind}`;
    badge.textContent = generation.state || kind;
    cell(badge);
    const list = document.createElement("span");
    for (const worker of generation.workers || []) {
      const entry = document.createElement("span");
      entry.className = "worker";
      entry.dataset.testid = "worker";
      entry.dataset.pid = worker.pid;
      const pid = document.createElement("b");
      pid.dataset.testid = "worker-pid";
      pid.textContent = worker.pid;
      const served = state.served.get(worker.pid);
      const badge = document.createElement("span");
      badge.className = `state state-${worker.state}`;
      badge.textContent = worker.state;
      const count = document.createElement("span");
      count.className = "served";
      count.textContent = served ? `${served} answer${served === 1 ? "" : "s"}` : "";
      entry.append(pid, " ", badge, " ", count);
      list.append(entry);
    }
    cell(list);
    body.append(row);
  }
  const draining = status.draining || [];
  $("draining").textContent = draining.length
    ? `Draining: ${draining
        .map((g) => `generation ${g.generation} (${describeRelease(g.release ? g.release.version : "?")}, ${(g.workers || []).length} workers)`)
        .join("; ")}: finishing their requests, taking no new ones.`
    : "No generation draining.";
  renderCards();
}

async function statusLoop() {
  for (;;) {
    const started = performance.now();
    await refreshStatus();
    await sleep(Math.max(50, STATUS_EVERY_MS - (performance.now() - started)));
  }
}

// ---- background traffic ----------------------------------------------------

function showServing(who) {
  state.labels.set(who.version, { label: who.label, color: who.color });
  state.served.set(who.pid, who.served);
  document.documentElement.style.setProperty("--accent", who.color);
  $("serving-label").textContent = who.label;
  $("serving-version").textContent = who.version;
  $("serving-generation").textContent = who.generation;
  $("serving-pid").textContent = who.pid;
  $("greeting").textContent = who.greeting;
  document.title = `${who.label} ${who.version}: BeamDeploy demo`;
}

async function pingLoop() {
  for (;;) {
    const started = performance.now();
    try {
      const response = await fetch("/api/whoami", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      showServing(await response.json());
      state.ok += 1;
    } catch (error) {
      state.failed += 1;
      $("last-failure").textContent = `Last failure: ${error.message} at ${new Date().toLocaleTimeString()}.`;
    }
    $("requests-total").textContent = state.ok + state.failed;
    $("requests-ok").textContent = state.ok;
    $("requests-failed").textContent = state.failed;
    $("requests-failed").className = `big ${state.failed ? "bad" : "good"}`;
    await sleep(Math.max(0, PING_EVERY_MS - (performance.now() - started)));
  }
}

// ---- the cards ---------------------------------------------------------------

function renderCards() {
  const deploying = Boolean(state.status && state.status.upgrading);
  const off = state.busy || deploying || !state.token;
  for (const button of document.querySelectorAll("button[data-action]")) button.disabled = off;
  $("cards-note").textContent = !state.token
    ? "The cards need the admin token (see above)."
    : state.busy
      ? "Working on it: follow the deployment on the left."
      : deploying
        ? "A deployment is running (started elsewhere)."
        : "";
}

for (const button of document.querySelectorAll("button[data-action]")) {
  button.addEventListener("click", () => act(button.dataset.action, button.dataset.label));
}

takeToken();
renderCards();
pingLoop();
statusLoop();
