/* vodflow dashboard: the runs list (/) and one run (/runs/{id}), kept live from the JSON API.
 *
 * Data comes only from /api (with the bearer token when the API asks for one: asked once, kept
 * in localStorage) and changes arrive as Server-Sent Events from /api/events. Text from data is
 * always set as text, never as HTML. No framework: a few helpers, then one function per page. */
"use strict";

const TOKEN_KEY = "vodflow.apiToken";
const ATTENTION = new Set(["overdue", "failing", "failed"]);
const RETRYABLE = new Set(["overdue", "failing", "retrying", "failed", "cancelled"]);
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const ICONS = {
  pending: "○", running: "◐", awaiting_callback: "◔", overdue: "⚠", retrying: "↻",
  failing: "↻", succeeded: "✓", failed: "✕", cancelled: "⊘", waiting: "◔", skipped: "–",
};

// --- helpers ---------------------------------------------------------------------------------

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child != null && child !== false) el.append(child);
  }
  return el;
}

const $ = (id) => document.getElementById(id);
const words = (status) => String(status).replace(/_/g, " ");

function setBadge(el, status) {
  el.className = "badge s-" + status;
  el.replaceChildren(h("span", { "aria-hidden": "true" }, ICONS[status] || "•"), " " + words(status));
}

function badge(status) {
  const el = h("span");
  setBadge(el, status);
  return el;
}

function absolute(iso) {
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" }) + " (" + iso + ")";
}

function ago(iso) {
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  const text = duration(Math.abs(seconds), true);
  if (Math.abs(seconds) < 5) return "just now";
  return seconds >= 0 ? text + " ago" : "in " + text;
}

function duration(seconds, rough) {
  if (seconds == null || !isFinite(seconds)) return "–";
  if (seconds < 1 && !rough) return Math.round(seconds * 1000) + " ms";
  if (seconds < 60) return (rough || seconds >= 10 ? Math.round(seconds) : seconds.toFixed(1)) + " s";
  if (seconds < 3600) {
    const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
    return rough || s === 0 ? m + " min" : m + " min " + s + " s";
  }
  if (seconds < 86400) {
    const hr = Math.floor(seconds / 3600), m = Math.round((seconds % 3600) / 60);
    return rough || m === 0 ? hr + " h" : hr + " h " + m + " min";
  }
  return Math.round(seconds / 86400) + " d";
}

function when(iso) {
  if (!iso) return "–";
  return h("time", { datetime: iso, title: absolute(iso) }, ago(iso));
}

function refreshTimes() {
  for (const t of document.querySelectorAll("time[datetime]")) t.textContent = ago(t.dateTime);
}

/** Call fn(key) once per key at most every `ms`, however often it is asked for. */
function debounced(fn, ms) {
  const due = new Map();
  return (key) => {
    if (due.has(key)) return;
    due.set(key, setTimeout(() => { due.delete(key); fn(key); }, ms));
  };
}

// --- the API and its token ---------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

const token = () => localStorage.getItem(TOKEN_KEY) || "";
let asking = null;

/** Show the token dialog; resolves once a token was saved, rejects when the operator cancels. */
function askToken(why) {
  if (asking) return asking;
  const dialog = $("token-dialog");
  const form = $("token-form");
  $("token-error").textContent = why || "";
  form.elements.token.value = "";
  asking = new Promise((resolve, reject) => {
    dialog.addEventListener("close", () => {
      asking = null;
      const value = form.elements.token.value.trim();
      if (dialog.returnValue === "save" && value) {
        localStorage.setItem(TOKEN_KEY, value);
        resolve();
      } else {
        reject(new ApiError("no API token given", 401));
      }
    }, { once: true });
  });
  dialog.showModal();
  return asking;
}

async function api(path, options = {}) {
  if (document.body.dataset.auth === "required" && !token()) await askToken("");
  for (;;) {
    const headers = { Accept: "application/json", ...options.headers };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    if (token()) headers.Authorization = "Bearer " + token();
    const init = { method: options.method || "GET", headers };
    if (options.body !== undefined) init.body = JSON.stringify(options.body);
    const answer = await fetch(path, init);
    const data = await answer.json().catch(() => ({ error: answer.statusText }));
    if (answer.status === 401) {
      await askToken(data.error || "the API asks for a token");
      continue;
    }
    if (!answer.ok) throw new ApiError(data.error || answer.statusText, answer.status);
    return data;
  }
}

/** Subscribe to run changes; `onRun` gets each {historyId, runId, status, reason, ...}. */
function live(onRun, onReconnect) {
  const indicator = $("live");
  const show = (state, text) => { indicator.dataset.state = state; indicator.textContent = text; };
  let source = null;
  const open = () => {
    const query = token() ? "?access_token=" + encodeURIComponent(token()) : "";
    source = new EventSource("/api/events" + query);
    source.addEventListener("open", () => { show("live", "live"); onReconnect(); });
    source.addEventListener("run", (e) => onRun(JSON.parse(e.data)));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CONNECTING) {
        show("reconnecting", "reconnecting…");
        return;
      }
      // Closed for good (the server refused us): try again in a while, with the current token.
      show("offline", "offline");
      source.close();
      setTimeout(() => api("/api/stats").then(open, open), 5000);
    });
  };
  open();
}

function tokenButton() {
  const button = $("token-change");
  if (button) button.addEventListener("click", () => askToken("").then(() => location.reload(), () => {}));
}

async function act(runId, action, body, message) {
  message.textContent = action === "retry" ? "Retrying…" : "Cancelling…";
  try {
    const answer = await api(`/api/runs/${encodeURIComponent(runId)}/${action}`,
      { method: "POST", body, headers: { "X-Vodflow-Actor": "dashboard" } });
    message.className = "message " + (answer.changed ? "ok" : "warn");
    message.textContent = `${action === "retry" ? "Retry" : "Cancel"}: ${answer.reason}`;
    return answer;
  } catch (error) {
    message.className = "message error";
    message.textContent = `${action === "retry" ? "Retry" : "Cancel"} refused: ${error.message}`;
    return null;
  }
}

// --- the runs list -----------------------------------------------------------------------------

/** A status filter value as the API's `status` list (which takes the healths overdue and
 * failing too, so a page of them is a page of the API's), and the health values to keep when a
 * live update changes a listed run. */
function statusFilter(value) {
  switch (value) {
    case "": return { status: [], health: null };
    case "attention": return { status: [...ATTENTION], health: ATTENTION };
    case "active": return { status: ["pending", "running", "awaiting_callback", "retrying"], health: null };
    case "overdue": return { status: ["overdue"], health: new Set(["overdue"]) };
    case "failing": return { status: ["failing"], health: new Set(["failing"]) };
    default: return { status: [value], health: null };
  }
}

function runsPage() {
  const form = $("filters");
  const rows = $("rows");
  const template = $("row-template");
  const message = $("message");
  const older = $("older");
  const byId = new Map();        // run ID -> its <tr>
  const reasons = new Map();     // run ID -> the latest history reason seen
  let filters = readFilters();
  let cursor = null;

  function readFilters() {
    const params = new URLSearchParams(location.search);
    return { workflow: params.get("workflow") || "", status: params.get("status") || "", q: (params.get("q") || "").trim() };
  }

  function matches(run) {
    const { status: wanted, health } = statusFilter(filters.status);
    if (filters.workflow && run.workflow !== filters.workflow) return false;
    // a health filter names healths (overdue is a health of awaiting_callback runs)
    if (health ? !health.has(run.health) : wanted.length && !wanted.includes(run.status)) return false;
    if (filters.q && run.streamId !== filters.q && run.fileId !== filters.q) return false;
    return true;
  }

  function reasonOf(run, detail) {
    if (run.error) return run.error;
    if (detail && run.health === "overdue") {
      const late = detail.steps.flatMap((s) => s.tasks).find((t) => t.overdue);
      if (late) {
        return `no callback for the ${late.kind} task after ${duration(late.waitedSeconds)} ` +
          `(expected within ${duration(late.expectedSeconds)}); vodflow asks VOD about it`;
      }
    }
    if (detail && run.health === "failing") {
      const step = detail.steps.find((s) => s.status === "retrying" || s.error);
      if (step && step.error) return `step ${step.name}, attempt ${step.attempt}: ${step.error}`;
    }
    if (run.status === "succeeded" && run.finishedAt) {
      return "took " + duration((new Date(run.finishedAt) - new Date(run.createdAt)) / 1000);
    }
    if (reasons.has(run.id)) return reasons.get(run.id);
    if (detail && detail.history.length) return detail.history[detail.history.length - 1].reason;
    return "";
  }

  function fill(tr, run, detail) {
    const f = (name) => tr.querySelector(`[data-f="${name}"]`);
    tr.dataset.runId = run.id;
    tr.dataset.health = run.health;
    tr.dataset.updated = run.updatedAt;
    tr.classList.toggle("attention", ATTENTION.has(run.health));
    setBadge(f("status"), run.health);
    f("status").title = ATTENTION.has(run.health) ? "needs attention" : "";
    f("link").href = "/runs/" + encodeURIComponent(run.id);
    f("workflow").textContent = run.workflow;
    f("id").textContent = run.id;
    f("stream").textContent = run.streamId || "–";
    f("file").textContent = run.fileId || "";
    f("step").textContent = run.currentStep || "–";
    const reason = reasonOf(run, detail);
    f("reason").textContent = reason;
    f("reason").title = reason;
    f("updated").replaceChildren(when(run.updatedAt));
    const retry = f("retry");
    retry.hidden = !RETRYABLE.has(run.health);
    retry.setAttribute("aria-label", `Retry run ${run.id}`);
  }

  function upsert(run, detail, place) {
    let tr = byId.get(run.id);
    if (!tr) {
      if (!matches(run)) return;
      tr = template.content.firstElementChild.cloneNode(true);
      tr.querySelector('[data-f="retry"]').addEventListener("click", () => retry(tr.dataset.runId));
      byId.set(run.id, tr);
      if (place === "top") {
        rows.prepend(tr);
        tr.classList.add("fresh");
      } else rows.append(tr);
    }
    fill(tr, run, detail);
    $("empty").hidden = byId.size > 0;
    // The list row says too little about a stalled or failing run: its detail says why.
    if (!detail && ATTENTION.has(run.health) && !run.error) refresh(run.id);
  }

  async function retry(runId) {
    const tr = byId.get(runId);
    const button = tr.querySelector('[data-f="retry"]');
    button.disabled = true;
    const answer = await act(runId, "retry", {}, message);
    button.disabled = false;
    if (answer) {
      tr.querySelector('[data-f="reason"]').textContent = answer.reason;
      refresh(runId);
    }
  }

  async function page(after) {
    const { status, health } = statusFilter(filters.status);
    const query = new URLSearchParams();
    if (filters.workflow) query.set("workflow", filters.workflow);
    if (status.length) query.set("status", status.join(","));
    query.set("limit", "50");
    if (after) query.set("cursor", after);
    if (!filters.q) return api("/api/runs?" + query);
    // One box for both IDs: ask for each and merge, newest first.
    const [byStream, byFile] = await Promise.all(["streamId", "fileId"].map((key) => {
      const q = new URLSearchParams(query);
      q.set(key, filters.q);
      return api("/api/runs?" + q);
    }));
    const seen = new Map([...byStream.runs, ...byFile.runs].map((r) => [r.id, r]));
    const runs = [...seen.values()].sort((a, b) => (a.createdAt < b.createdAt ? 1 : -1));
    return { runs, nextCursor: null };
  }

  async function load(reset) {
    try {
      const answer = await page(reset ? null : cursor);
      if (reset) {
        rows.replaceChildren();
        byId.clear();
      }
      for (const run of answer.runs) upsert(run, null, "bottom");
      cursor = answer.nextCursor;
      older.hidden = !cursor;
      $("empty").hidden = byId.size > 0;
    } catch (error) {
      message.className = "message error";
      message.textContent = "Could not load runs: " + error.message;
    }
  }

  /** Bring rows that changed up to date (and add new runs) without touching the rest. */
  async function reconcile() {
    try {
      const answer = await page(null);
      for (const run of answer.runs.slice().reverse()) {
        const tr = byId.get(run.id);
        if (!tr) upsert(run, null, "top");
        else if (tr.dataset.updated !== run.updatedAt || tr.dataset.health !== run.health) upsert(run);
      }
    } catch (error) { /* the next event or tick tries again */ }
  }

  const refresh = debounced(async (runId) => {
    try {
      const detail = await api("/api/runs/" + encodeURIComponent(runId));
      upsert(detail, detail, "top");
    } catch (error) { /* gone or unreachable: the next reconcile decides */ }
  }, 150);

  async function stats() {
    try {
      const s = await api("/api/stats");
      for (const li of $("stat-runs").children) {
        const n = s.runsByStatus[li.dataset.status] || 0;
        li.querySelector(".n").textContent = n;
        li.classList.toggle("zero", n === 0);
      }
      // What waits on an operator: timers and callbacks that could not be applied.
      const stuck = [
        [s.failedTimers, "timer", "/api/timers?status=failed"],
        [s.inbox.failed || 0, "callback", "/api/inbox?status=failed"],
      ].filter(([n]) => n > 0).map(([n, what, where]) => `${n} ${what}${n === 1 ? "" : "s"} could not be applied (GET ${where})`);
      $("stat-stalled").textContent = s.stalledTasks;
      $("stat-stalled-box").classList.toggle("alert", s.stalledTasks > 0 || stuck.length > 0);
      $("stat-stalled-sub").textContent = ["callbacks past their expected time", ...stuck].join(" · ");
      $("stat-sessions").textContent = s.openSessions;
      sessions(s.openSessions);
      $("stat-quota").textContent = `${s.quota.used} / ${s.quota.limit}`;
      $("stat-quota-meter").max = s.quota.limit;
      $("stat-quota-meter").value = s.quota.used;
      $("stat-quota-sub").textContent = `${s.quota.action} calls per ${duration(s.quota.windowSeconds)}`;
      const p95 = s.callbackLatencySeconds.p95;
      $("stat-latency").textContent = p95 == null ? "–" : duration(p95);
      $("stat-latency-sub").textContent = `${s.callbackLatencySeconds.count} callbacks in the last hour`;
    } catch (error) { /* keep the last figures */ }
  }
  const statsSoon = debounced(stats, 1000);

  // A stream session is no run until its stream has been quiet: say which are collecting.
  async function sessions(count) {
    const sub = $("stat-sessions-sub");
    if (!count) { sub.textContent = "stream sessions not yet quiet"; return; }
    try {
      const page = await api("/api/sessions?status=open&limit=3");
      const items = page.sessions.map((s) => {
        const n = s.segments.length;
        return [`${s.streamId} (${s.workflow}): ${n} recording${n === 1 ? "" : "s"}, run `, when(s.closesAt)];
      });
      sub.replaceChildren(...items.flatMap((parts, i) => (i ? [" · ", ...parts] : parts)));
      if (count > items.length) sub.append(` · ${count - items.length} more (GET /api/sessions)`);
    } catch (error) { /* keep the last list */ }
  }

  function applyFilters() {
    const data = new FormData(form);
    const params = new URLSearchParams();
    for (const key of ["workflow", "status", "q"]) {
      const value = String(data.get(key) || "").trim();
      if (value) params.set(key, value);
    }
    const query = params.toString();
    history.replaceState(null, "", query ? "/?" + query : "/");
    filters = readFilters();
    load(true);
  }

  async function workflows() {
    try {
      const answer = await api("/api/workflows");
      const select = $("filter-workflow");
      const names = answer.workflows.map((w) => w.name).sort();
      if (filters.workflow && !names.includes(filters.workflow)) names.unshift(filters.workflow);
      select.replaceChildren(h("option", { value: "" }, "all workflows"),
        ...names.map((name) => h("option", { value: name, selected: name === filters.workflow }, name)));
    } catch (error) { /* the filter still works by URL */ }
  }

  form.addEventListener("submit", (e) => { e.preventDefault(); applyFilters(); });
  form.addEventListener("change", (e) => { if (e.target.name !== "q") applyFilters(); });
  $("filter-q").addEventListener("search", applyFilters);
  older.addEventListener("click", () => load(false));
  window.addEventListener("popstate", () => location.reload());

  load(true).then(() => {
    workflows();
    stats();
    live((event) => {
      reasons.set(event.runId, event.reason);
      refresh(event.runId);
      statsSoon("stats");
    }, reconcile);
  });
  setInterval(refreshTimes, 10_000);
  // Time alone makes a run overdue (no event says so): look again every few seconds.
  setInterval(() => { reconcile(); stats(); }, 10_000);
}

// --- one run -----------------------------------------------------------------------------------

function runPage() {
  const runId = $("run").dataset.runId;
  const message = $("message");
  const video = $("video");
  let shown = "";     // the outputs on screen, so a refresh leaves a playing video alone
  let run = null;

  async function load() {
    try {
      run = await api("/api/runs/" + encodeURIComponent(runId));
    } catch (error) {
      $("run-workflow").textContent = error.status === 404 ? "No such run" : "Could not load the run";
      $("run-error").hidden = false;
      $("run-error").textContent = error.message;
      if (!run) {  // nothing was shown yet: no "loading" left behind
        $("run-status").hidden = true;
        $("steps").replaceChildren(h("li", { class: "placeholder" }, "Nothing to show."));
      }
      return;
    }
    render(run);
  }
  const reload = debounced(load, 150);

  function render(r) {
    document.title = `${r.workflow} ${r.health} · vodflow`;
    $("run-workflow").textContent = r.workflow;
    $("run-status").hidden = false;
    setBadge($("run-status"), r.health);
    $("f-stream").textContent = r.streamId || "–";
    $("f-file").textContent = r.fileId || "–";
    for (const [id, value] of [["f-created", r.createdAt], ["f-updated", r.updatedAt],
      ["f-finished", r.finishedAt], ["f-deadline", TERMINAL.has(r.status) ? null : r.deadline]]) {
      $(id).replaceChildren(when(value));
    }
    $("f-version").textContent = r.version;
    $("run-error").hidden = !r.error;
    $("run-error").textContent = r.error || "";
    $("retry").disabled = !RETRYABLE.has(r.health);
    $("retry").title = $("retry").disabled ? "only a failed, cancelled or retrying run can be retried" : "";
    $("cancel").disabled = TERMINAL.has(r.status);
    $("steps").replaceChildren(...r.steps.map(renderStep));
    $("history").replaceChildren(...r.history.map(renderHistory));
    $("events").replaceChildren(...r.events.map(renderEvent));
    if (!r.events.length) $("events").append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, "none yet")));
    // Timers still to fire, and those that could not be applied (the run waits on them).
    const timers = r.timers.filter((t) => t.status === "pending" || t.status === "failed");
    $("timers-section").hidden = !timers.length;
    $("timers").replaceChildren(...timers.map(renderTimer));
    renderOutputs(r);
  }

  function renderStep(step) {
    const facts = [`${step.kind} step`, `attempt ${step.attempt}`, `${step.sends} request${step.sends === 1 ? "" : "s"} sent`];
    if (step.throttled) facts.push("throttled by the VOD quota");
    return h("li", { class: "step s-" + step.status },
      h("div", { class: "step-head" },
        h("h3", {}, step.name), badge(step.status),
        h("span", { class: "muted" }, facts.join(" · "))),
      h("dl", { class: "times" },
        ...[["started", step.startedAt], ["submitted", step.submittedAt], ["finished", step.finishedAt],
          ["retry at", step.retryAt], ["deadline", step.finishedAt ? null : step.deadline]]
          .filter(([, v]) => v).map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, when(v))))),
      step.error && h("p", { class: "error" }, step.errorClass ? `${step.errorClass}: ${step.error}` : step.error),
      step.tasks.length > 0 && h("table", { class: "tasks" },
        h("thead", {}, h("tr", {}, ...["VOD task", "Attempt", "Status", "Waited / expected", "Polls"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, ...step.tasks.map(renderTask))));
  }

  function renderTask(task) {
    const share = Math.min(task.waitedSeconds / Math.max(task.expectedSeconds, 1), 1);
    const status = task.overdue ? "overdue" : task.status;
    const bar = h("span", { class: "wait-bar" + (task.overdue ? " late" : "") }, h("span", { class: "wait-fill" }));
    bar.firstChild.style.width = (share * 100).toFixed(1) + "%";
    const waited = h("span", { class: "waited" }, duration(task.waitedSeconds));
    if (!task.finishedAt) {
      waited.dataset.since = task.submittedAt;  // ticks every second
      waited.dataset.expected = task.expectedSeconds;
    }
    return h("tr", { class: task.overdue ? "attention" : "" },
      h("td", {}, h("span", { class: "line" }, task.kind, task.awaited ? "" : " (not awaited)"),
        h("code", { class: "line small", title: task.taskId }, task.taskId)),
      h("td", {}, task.attempt),
      h("td", {}, badge(status), task.error && h("span", { class: "line error small" },
        (task.errorCode != null ? `errCode ${task.errorCode}: ` : "") + task.error)),
      h("td", { title: `waited ${duration(task.waitedSeconds)}; the callback was expected within ${duration(task.expectedSeconds)}` },
        bar, " ", waited, " / " + duration(task.expectedSeconds)),
      h("td", {}, task.polls ? h("span", { title: task.lastPolledAt ? absolute(task.lastPolledAt) : "" },
        `${task.polls} (${task.lastPollStatus || "?"})`) : "–"));
  }

  function renderHistory(entry) {
    const kind = /fail|timeout|error|refused/.test(entry.input) ? "bad"
      : /retry|cancel/.test(entry.input) ? "operator" : "";
    return h("li", { class: kind },
      h("span", { class: "when" }, when(entry.at)),
      h("span", { class: "input" }, words(entry.input)),
      h("span", { class: "move" }, entry.fromStatus === entry.toStatus ? words(entry.toStatus)
        : `${words(entry.fromStatus)} → ${words(entry.toStatus)}`),
      h("span", { class: "reason" }, entry.step ? `${entry.step}: ${entry.reason}` : entry.reason));
  }

  function renderTimer(timer) {
    const failed = timer.status === "failed";
    const what = timer.step ? `${words(timer.kind)}: ${timer.step}` : words(timer.kind);
    return h("tr", { class: failed ? "attention" : "", "data-timer-id": timer.id },
      h("td", {}, when(timer.dueAt)),
      h("td", {}, what, timer.attempt != null && h("span", { class: "line small muted" }, `attempt ${timer.attempt}`)),
      h("td", {}, failed ? badge("failed") : words(timer.status)),
      h("td", {}, failed && h("span", { class: "line error small" }, timer.error || ""),
        failed && h("button", { type: "button", class: "quiet", "aria-label": `Replay timer ${timer.id}`,
          onclick: (e) => replayTimer(timer.id, e.currentTarget) }, "Replay")));
  }

  async function replayTimer(timerId, button) {
    button.disabled = true;
    message.className = "message";
    message.textContent = "Replaying the timer…";
    try {
      const answer = await api(`/api/timers/${timerId}/replay`, { method: "POST" });
      const t = answer.timer;
      message.className = "message " + (t.status === "failed" ? "error" : "ok");
      message.textContent = t.status === "failed" ? `Timer ${timerId} failed again: ${t.error}`
        : `Timer ${timerId} ${words(t.status)}`;
    } catch (error) {
      message.className = "message error";
      message.textContent = `Replay refused: ${error.message}`;
    }
    load();
  }

  function renderEvent(event) {
    return h("tr", {},
      h("td", {}, when(event.receivedAt)),
      h("td", {}, h("span", { class: "line" }, event.eventType), h("span", { class: "line small muted" }, event.source)),
      h("td", {}, event.status),
      h("td", {}, h("span", { class: "clamp" }, event.note || "")));
  }

  // Outputs: every step's play entries (MP4 or HLS) and sprites.
  function renderOutputs(r) {
    const plays = [], sprites = [], links = [];
    for (const step of r.steps) {
      const out = step.outputs || {};
      for (const p of out.play || []) plays.push({ ...p, step: step.name, duration: p.duration ?? out.duration });
      for (const s of out.sprites || []) sprites.push(s);
      for (const s of out.snapshots || []) links.push(...(s.imageUrls || s.urls || []).map((u) => ["snapshot", u]));
      for (const f of out.files || []) if (f.url) links.push(["file", f.url]);
    }
    const key = JSON.stringify([plays.map((p) => p.url), sprites.map((s) => s.webVttUrl)]);
    if (key === shown) return;
    shown = key;
    const select = $("output-select");
    select.replaceChildren(...plays.map((p, i) => h("option", { value: i },
      `${p.step}: ${p.url.endsWith(".m3u8") ? "HLS" : "MP4"} ${p.width || "?"}×${p.height || "?"} (definition ${p.definition})`)));
    $("output-choice").hidden = plays.length < 2;
    select.onchange = () => play(plays[Number(select.value)]);
    if (plays.length) play(plays[0]);
    for (const p of plays) links.push([p.url.endsWith(".m3u8") ? "HLS playlist" : "MP4", p.url]);
    for (const s of sprites) {
      for (const u of s.imageUrls || []) links.push(["sprite sheet", u]);
      if (s.webVttUrl) links.push(["sprite WebVTT", s.webVttUrl]);
    }
    $("output-links").replaceChildren(...links.map(([kind, url]) =>
      h("li", {}, h("span", { class: "muted" }, kind + " "), h("a", { href: url }, url.split("/").slice(-2).join("/")))));
    const sprite = sprites.find((s) => s.webVttUrl);
    if (sprite) scrubber(sprite.webVttUrl, plays[0] && plays[0].duration);
  }

  let hls = null;
  async function play(output) {
    $("no-video").hidden = true;
    if (hls) { hls.destroy(); hls = null; }
    const native = video.canPlayType("application/vnd.apple.mpegurl");
    if (!output.url.endsWith(".m3u8") || (native && !window.MediaSource)) {
      video.src = output.url;
      return;
    }
    // Most browsers play no HLS themselves (and those that do differ): hls.js feeds the segments
    // to the video through Media Source Extensions, the same way everywhere.
    try {
      await loadScript(document.body.dataset.hlsScript);
    } catch (error) { /* handled below */ }
    if (!window.Hls || !window.Hls.isSupported()) {
      if (native) video.src = output.url;
      else {
        $("no-video").hidden = false;
        $("no-video").textContent = "This browser cannot play HLS; use the playlist link below.";
      }
      return;
    }
    hls = new window.Hls();
    hls.loadSource(output.url);
    hls.attachMedia(video);
  }

  $("retry").addEventListener("click", async () => {
    $("retry").disabled = true;
    await act(runId, "retry", {}, message);
    load();
  });
  $("cancel").addEventListener("click", async () => {
    $("cancel").disabled = true;
    await act(runId, "cancel", { reason: "cancelled from the dashboard" }, message);
    load();
  });

  load().then(() => live((event) => { if (event.runId === runId) reload(runId); }, () => reload(runId)));
  setInterval(() => {
    for (const el of document.querySelectorAll("[data-since]")) {
      const waited = (Date.now() - new Date(el.dataset.since).getTime()) / 1000;
      el.textContent = duration(waited);
      const share = Math.min(waited / Math.max(Number(el.dataset.expected), 1), 1);
      el.parentElement.querySelector(".wait-fill").style.width = (share * 100).toFixed(1) + "%";
    }
  }, 1000);
  setInterval(refreshTimes, 10_000);
  setInterval(() => { if (run && !TERMINAL.has(run.status)) reload(runId); }, 15_000);
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    if (document.querySelector(`script[src="${src}"]`)) return resolve();
    document.head.append(h("script", { src, onload: resolve, onerror: reject }));
  });
}

// --- the sprite scrubber -----------------------------------------------------------------------

/** Cues of a sprite WebVTT file: {start, end, image, x, y, w, h}, images resolved against it. */
function parseVtt(text, base) {
  const cues = [];
  for (const block of text.replace(/\r\n?/g, "\n").split(/\n{2,}/)) {
    const lines = block.split("\n");
    const at = lines.findIndex((line) => line.includes("-->"));
    if (at < 0) continue;
    const [start, end] = lines[at].split("-->").map((part) => seconds(part.trim().split(/\s+/)[0]));
    const where = /^(.*)#xywh=(\d+),(\d+),(\d+),(\d+)$/.exec(lines.slice(at + 1).join("").trim());
    if (!where) continue;
    const [, image, x, y, w, h] = where;
    cues.push({ start, end, image: new URL(image, base).href, x: +x, y: +y, w: +w, h: +h });
  }
  return cues;
}

function seconds(stamp) {
  return stamp.split(":").reduce((total, part) => total * 60 + Number(part), 0);
}

/** Under the video, a bar: hovering shows the sprite thumbnail for that time, clicking seeks. */
async function scrubber(vttUrl, knownDuration) {
  const video = $("video"), bar = $("scrub-bar"), thumb = $("thumb"), note = $("scrub-note");
  let cues;
  try {
    const answer = await fetch(vttUrl);
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    cues = parseVtt(await answer.text(), answer.url || vttUrl);
    if (!cues.length) throw new Error("no cues");
  } catch (error) {
    note.textContent = `Thumbnails unavailable (${vttUrl}: ${error.message}).`;
    return;
  }
  for (const image of new Set(cues.map((c) => c.image))) new Image().src = image;  // warm the cache
  $("scrubber").hidden = false;
  note.textContent = `${cues.length} thumbnail${cues.length === 1 ? "" : "s"}; hover the bar to preview, click to seek.`;
  const total = () => (isFinite(video.duration) && video.duration > 0 ? video.duration
    : knownDuration || cues[cues.length - 1].end);
  const cueAt = (t) => cues.find((c) => t >= c.start && t < c.end) || (t >= cues[cues.length - 1].end ? cues[cues.length - 1] : cues[0]);
  const timeAt = (clientX) => {
    const box = bar.getBoundingClientRect();
    return Math.min(Math.max((clientX - box.left) / box.width, 0), 1) * total();
  };
  let preview = 0;

  function show(t) {
    preview = t;
    const cue = cueAt(t);
    const box = bar.getBoundingClientRect();
    thumb.hidden = false;
    thumb.style.width = cue.w + "px";
    thumb.style.height = cue.h + "px";
    thumb.style.backgroundImage = `url("${cue.image}")`;
    thumb.style.backgroundPosition = `${-cue.x}px ${-cue.y}px`;
    const left = (t / total()) * box.width;
    thumb.style.left = Math.min(Math.max(left - cue.w / 2, 0), box.width - cue.w) + "px";
    thumb.dataset.cue = `${cue.start}-${cue.end}`;
    $("thumb-time").textContent = clock(t);
    $("scrub-hover").style.left = left + "px";
    bar.setAttribute("aria-valuenow", t.toFixed(1));
    bar.setAttribute("aria-valuetext", clock(t));
  }
  function hide() { thumb.hidden = true; }
  function seek(t) { video.currentTime = t; show(t); }

  bar.setAttribute("aria-valuemax", total().toFixed(1));
  bar.addEventListener("pointermove", (e) => show(timeAt(e.clientX)));
  bar.addEventListener("pointerleave", hide);
  bar.addEventListener("click", (e) => seek(timeAt(e.clientX)));
  bar.addEventListener("blur", hide);
  bar.addEventListener("keydown", (e) => {
    const step = cues[0].end - cues[0].start || 1;
    const moves = { ArrowLeft: -step, ArrowDown: -step, ArrowRight: step, ArrowUp: step };
    if (e.key in moves) seek(Math.min(Math.max((thumb.hidden ? video.currentTime : preview) + moves[e.key], 0), total()));
    else if (e.key === "Home") seek(0);
    else if (e.key === "End") seek(Math.max(total() - 0.1, 0));
    else return;
    e.preventDefault();
  });
  const progress = () => {
    $("scrub-played").style.width = ((video.currentTime / total()) * 100).toFixed(2) + "%";
    bar.setAttribute("aria-valuemax", total().toFixed(1));
  };
  video.addEventListener("timeupdate", progress);
  video.addEventListener("loadedmetadata", progress);
}

function clock(t) {
  const s = Math.floor(t % 60), m = Math.floor(t / 60) % 60, hr = Math.floor(t / 3600);
  const pad = (n) => String(n).padStart(2, "0");
  return (hr ? hr + ":" + pad(m) : m) + ":" + pad(s);
}

// --- start -----------------------------------------------------------------------------------

tokenButton();
if (document.body.dataset.page === "runs") runsPage();
else if (document.body.dataset.page === "run") runPage();
