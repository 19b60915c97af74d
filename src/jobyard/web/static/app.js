// jobyard dashboard: a small single-page app over /ui/api (session cookie + CSRF header).
// No framework and no build step; everything is built with DOM calls (never innerHTML with data).
"use strict";

const STATES = ["QUEUED", "STARTING", "RUNNING", "STOPPING", "SUCCEEDED", "FAILED", "STOPPED"];
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "STOPPED"]);
const POLL_MS = 1000;
let me = null;
let cleanup = [];  // what the current view must undo when another one replaces it

// ---- helpers -------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function csrf() {
  const found = document.cookie.split("; ").find((c) => c.startsWith("jobyard_csrf="));
  return found ? decodeURIComponent(found.slice("jobyard_csrf=".length)) : "";
}

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") init.headers["X-CSRF-Token"] = csrf();
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    window.location.assign("/login");
    throw new Error("signed out");
  }
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok && !(data && data.errors)) {
    throw new Error((data && data.error && data.error.message) || `HTTP ${response.status}`);
  }
  return { status: response.status, data };
}

function age(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return span(seconds);
}

function span(seconds) {
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${Math.floor(seconds % 60)}s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86400)}d`;
}

function duration(job) {
  if (!job.started_at) return "";
  const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
  return span(Math.max(0, (end - Date.parse(job.started_at)) / 1000));
}

function resources(r, replicas) {
  const parts = [];
  if (r.cpus) parts.push(`${r.cpus} CPU`);
  const memory = r.memory || r.memory_mib;
  if (memory) parts.push(`${memory} MiB`);
  if (r.gpus) parts.push(`${r.gpus} GPU${r.gpu_model ? " " + r.gpu_model : ""}`);
  if (replicas > 1) parts.push(`× ${replicas}`);
  return parts.join(", ") || "—";
}

function stateCell(job) {
  const cell = el("td", {}, el("span", { class: `state state-${job.state}`, text: job.state }));
  if (job.state === "QUEUED") {
    const where = job.queue_position ? `#${job.queue_position} in queue` : "";
    const why = [where, job.pending_reason, job.pending_message].filter(Boolean).join(" · ");
    if (why) cell.append(el("div", { class: "pending", text: why }));
  }
  return cell;
}

function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try { await fn(); } catch (err) { if (!stopped) console.warn(err.message); }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  const stop = () => { stopped = true; clearTimeout(timer); };
  cleanup.push(stop);
  return stop;
}

function view() { return document.getElementById("view"); }

// ---- jobs ----------------------------------------------------------------------------------

function renderJobs(params) {
  const filters = {
    state: params.get("state") || "", queue: params.get("queue") || "",
    owner: params.get("owner") || "", q: params.get("q") || "",
    order: params.get("order") || "desc", page: Number(params.get("page") || 0),
  };
  const go = (changes) => {
    const next = new URLSearchParams({ ...filters, ...changes });
    for (const [k, v] of [...next]) if (v === "" || (k === "page" && v === "0") || (k === "order" && v === "desc")) next.delete(k);
    window.location.hash = `#/jobs?${next}`;
  };
  const select = (id, label, options, value) => el("label", { for: id }, label,
    el("select", { id, onchange: (e) => go({ [id.slice(2)]: e.target.value, page: 0 }) },
      el("option", { value: "", text: "all" }),
      options.map((o) => el("option", { value: o, text: o, selected: o === value }))));
  const text = (id, label, value) => el("label", { for: id }, label,
    el("input", { id, type: "search", value, onchange: (e) => go({ [id.slice(2)]: e.target.value.trim(), page: 0 }) }));
  const body = el("tbody", { id: "jobs-body" });
  const summary = el("span", { class: "status", id: "jobs-total" });
  const prev = el("button", { type: "button", disabled: filters.page === 0, onclick: () => go({ page: filters.page - 1 }) }, "Previous");
  const next = el("button", { type: "button", disabled: true, onclick: () => go({ page: filters.page + 1 }) }, "Next");
  const sortAge = el("button", { type: "button", onclick: () => go({ order: filters.order === "desc" ? "asc" : "desc" }),
    "aria-label": "sort by age" }, `Age ${filters.order === "desc" ? "▲" : "▼"}`);
  view().replaceChildren(
    el("h1", { text: "Jobs" }),
    el("div", { class: "filters", role: "search" },
      select("f-state", "State", STATES, filters.state),
      select("f-queue", "Queue", me.queues, filters.queue),
      me.admin ? text("f-owner", "Owner", filters.owner) : null,
      text("f-q", "Name", filters.q)),
    el("div", { class: "table-wrap" }, el("table", { id: "jobs" },
      el("thead", {}, el("tr", {},
        el("th", { text: "ID" }), el("th", { text: "Name" }), el("th", { text: "State" }),
        el("th", { text: "Owner" }), el("th", { text: "Queue", class: "hide-narrow" }),
        el("th", { text: "Resources", class: "hide-narrow" }), el("th", {}, sortAge),
        el("th", { text: "Duration", class: "hide-narrow" }))),
      body)),
    el("div", { class: "pager" }, prev, next, summary));
  const limit = 50;
  let latest = null;
  const draw = () => {
    const data = latest;
    const focused = document.activeElement && body.contains(document.activeElement) ? document.activeElement.getAttribute("href") : null;
    body.replaceChildren(...data.items.map((job) => el("tr", { "data-job": job.display_id },
      el("td", {}, el("a", { href: `#/jobs/${job.display_id}`, text: job.display_id })),
      el("td", { text: job.name }), stateCell(job), el("td", { text: job.owner }),
      el("td", { text: job.queue, class: "hide-narrow" }),
      el("td", { text: resources(job.resources, job.replicas), class: "hide-narrow" }),
      el("td", { text: age(job.created_at), title: job.created_at, "data-age": job.created_at }),
      el("td", { text: duration(job), class: "hide-narrow", "data-duration": "", "data-started": job.started_at, "data-finished": job.finished_at }))));
    if (!data.items.length) body.append(el("tr", {}, el("td", { colspan: 8, text: "No jobs." })));
    if (focused) { const again = body.querySelector(`a[href="${focused}"]`); if (again) again.focus(); }
    summary.textContent = `${data.total} job${data.total === 1 ? "" : "s"}, page ${filters.page + 1}`;
    next.disabled = (filters.page + 1) * limit >= data.total;
  };
  const query = new URLSearchParams({ limit, page: filters.page, order: filters.order });
  for (const key of ["state", "queue", "owner", "q"]) if (filters[key]) query.set(key, filters[key]);
  // Server-sent events: the server sends the table whenever it changes; ages tick here.
  const source = new EventSource(`/ui/api/jobs/events?${query}`);
  source.onmessage = (event) => { latest = JSON.parse(event.data); draw(); };
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) api("GET", "/ui/api/me").catch(() => {}); };
  const tick = () => {  // ages and durations move on between the server's messages
    for (const cell of body.querySelectorAll("td[data-age]")) cell.textContent = age(cell.dataset.age);
    for (const cell of body.querySelectorAll("td[data-duration]")) cell.textContent = duration({ started_at: cell.dataset.started, finished_at: cell.dataset.finished });
  };
  const ticker = setInterval(tick, POLL_MS);
  cleanup.push(() => { source.close(); clearInterval(ticker); });
}

// ---- job detail ----------------------------------------------------------------------------

function renderJob(ref) {
  const head = el("div", { class: "card", id: "job-head" });
  const timeline = el("ol", { class: "timeline", id: "timeline" });
  const events = el("tbody", { id: "events" });
  const tasks = el("tbody", { id: "tasks" });
  const spec = el("pre", { id: "spec" });
  const ports = el("tbody", { id: "ports" });
  const portsBox = el("section", { class: "hidden" }, el("h2", { text: "Ports" }),
    el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {},
      el("th", { text: "Port" }), el("th", { text: "URL or command" }))), ports)));
  const message = el("p", { class: "error", role: "alert", id: "job-error" });
  const stopButton = el("button", { type: "button", class: "danger", id: "stop", onclick: () => act("stop") }, "Stop");
  const deleteButton = el("button", { type: "button", class: "danger", id: "delete", onclick: () => act("delete") }, "Delete");
  const cloneButton = el("button", { type: "button", id: "clone", onclick: () => { window.location.hash = `#/submit?clone=${ref}`; } }, "Re-submit");
  const termButton = el("button", { type: "button", id: "open-terminal", onclick: () => openTerminal() }, "Terminal");
  const termBox = el("div", { id: "terminal-box" });
  const logs = logView(ref);
  const usage = usageView(ref);  // usage.js
  cleanup.push(() => usage.destroy());
  let job = null;

  async function act(what) {
    const live = job && !TERMINAL.has(job.state);
    const question = what === "stop" ? `Stop job ${ref}?` : `Delete job ${ref}${live ? " (it is still running)" : ""} and its logs?`;
    if (!window.confirm(question)) return;
    message.textContent = "";
    try {
      if (what === "stop") await api("POST", `/ui/api/jobs/${ref}/stop`);
      else { await api("DELETE", `/ui/api/jobs/${ref}?force=${live}`); window.location.hash = "#/jobs"; }
    } catch (err) { message.textContent = err.message; }
  }

  async function openTerminal() {
    message.textContent = "";
    try {
      const task = logs.task() || undefined;
      const { data } = await api("POST", `/ui/api/jobs/${ref}/terminal`, { task });
      await terminal(termBox, data.url);
    } catch (err) { message.textContent = err.message; }
  }

  view().replaceChildren(
    el("p", {}, el("a", { href: "#/jobs", text: "← Jobs" })),
    head, message,
    el("div", { class: "actions" }, stopButton, deleteButton, cloneButton, me.terminal ? termButton : null),
    termBox, portsBox,
    el("h2", { text: "Logs" }), logs.node, usage.node,
    el("div", { class: "grid" },
      el("section", {}, el("h2", { text: "Timeline" }), timeline),
      el("section", {}, el("h2", { text: "Spec" }), spec)),
    el("h2", { text: "Tasks" }),
    el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {},
      ["Task", "State", "Node", "GPUs", "Exit code", "Started", "Finished"].map((t) => el("th", { text: t })))), tasks)),
    el("h2", { text: "Events" }),
    el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {},
      ["Time", "Type", "Reason", "Message"].map((t) => el("th", { text: t })))), events)));

  const stop = every(POLL_MS, async () => {
    let found;
    try { found = await api("GET", `/ui/api/jobs/${ref}`); } catch (err) {
      message.textContent = err.message; stop(); return;
    }
    job = found.data;
    head.replaceChildren(
      el("h1", {}, `${job.name} `, el("span", { class: `state state-${job.state}`, id: "job-state", text: job.state })),
      el("p", {}, `${job.display_id} · owner ${job.owner} · queue ${job.queue} · pool ${job.pool} · `,
        `${resources(job.resources, job.replicas)} · created ${age(job.created_at)} ago`,
        job.exit_code !== null ? ` · exit code ${job.exit_code}` : "",
        job.reason ? ` · ${job.reason}` : "", job.message ? ` · ${job.message}` : ""),
      job.state === "QUEUED" ? stateCell(job).lastChild : "");
    stopButton.disabled = TERMINAL.has(job.state) || job.state === "STOPPING";
    termButton.disabled = job.state !== "RUNNING";
    spec.textContent = JSON.stringify(job.spec, null, 2);
    timeline.replaceChildren(...job.state_log.map((s) => el("li", {},
      el("span", { class: `state state-${s.state}`, text: s.state }), ` ${new Date(s.timestamp).toLocaleString()}`)));
    tasks.replaceChildren(...job.tasks.map((t) => el("tr", {},
      el("td", { text: t.name }), el("td", { text: t.state }), el("td", { text: t.node || "" }),
      el("td", { text: t.gpus.join(",") }), el("td", { class: "exit-code", text: t.exit_code ?? "" }),
      el("td", { text: t.started_at ? new Date(t.started_at).toLocaleTimeString() : "" }),
      el("td", { text: t.finished_at ? new Date(t.finished_at).toLocaleTimeString() : "" }))));
    events.replaceChildren(...job.events.map((e) => el("tr", {},
      el("td", { text: new Date(e.timestamp).toLocaleTimeString() }), el("td", { text: e.type }),
      el("td", { text: e.reason }), el("td", { text: e.message }))));
    ports.replaceChildren(...job.ports.map((p) => el("tr", {},
      el("td", { text: `${p.port}/${p.protocol}` }),
      el("td", {}, p.ssh ? el("code", { text: p.ssh }) : p.url ? el("a", { href: p.url, target: "_blank", rel: "noopener noreferrer", text: p.url.split("?")[0] }) : "not leased")),
    ));
    portsBox.className = job.ports.length ? "" : "hidden";
    logs.setTasks(job.tasks.map((t) => t.name));
    usage.refresh(job);
  });
}

// ---- logs: follow a task's output, keeping at most `tail` lines in the DOM --------------------

function logView(ref) {
  const box = el("div", { class: "log", id: "log", role: "log", "aria-live": "off", tabindex: "0" });
  const status = el("span", { class: "status", id: "log-status" });
  const taskSelect = el("select", { id: "log-task", onchange: () => start() });
  const tailInput = el("input", { id: "log-tail", type: "number", min: "1", max: "100000", value: "1000", onchange: () => start() });
  const pause = el("button", { type: "button", id: "log-pause", onclick: () => togglePause() }, "Pause");
  const search = el("input", { id: "log-search", type: "search", placeholder: "search", oninput: () => applySearch() });
  const download = el("a", { id: "log-download", href: `/ui/api/jobs/${ref}/logs`, download: `${ref}.log` }, "Download");
  const stamps = el("input", { id: "log-timestamps", type: "checkbox", onchange: () => start() });
  let stampTimer = null;
  let controller = null;
  let paused = false;
  let held = [];
  let known = "";
  let partial = "";

  const limit = () => Math.max(1, Math.min(100000, Number(tailInput.value) || 1000));

  function matches(line) {
    const term = search.value;
    return !term || line.includes(term);
  }

  function applySearch() {
    const term = search.value;
    let hits = 0;
    for (const node of box.children) {
      const hit = !term || node.textContent.includes(term);
      node.className = term ? (hit ? "hit" : "miss") : "";
      if (hit && term) hits += 1;
    }
    status.textContent = term ? `${hits} matching line${hits === 1 ? "" : "s"}` : status.dataset.state || "";
  }

  function append(lines) {
    if (!lines.length) return;
    const keep = limit();
    if (lines.length > keep) lines = lines.slice(lines.length - keep);
    const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    const fragment = document.createDocumentFragment();
    const term = search.value;
    for (const line of lines) {
      const node = document.createElement("div");
      node.textContent = line;
      if (term) node.className = matches(line) ? "hit" : "miss";
      fragment.append(node);
    }
    box.append(fragment);
    let extra = box.childElementCount - keep;
    while (extra-- > 0) box.firstElementChild.remove();
    if (stick) box.scrollTop = box.scrollHeight;
    if (term) applySearch();
  }

  function receive(lines) {
    if (paused) {
      held.push(...lines);
      if (held.length > limit()) held = held.slice(held.length - limit());
    } else append(lines);
  }

  function setStatus(text) { status.dataset.state = text; if (!search.value) status.textContent = text; }

  function togglePause() {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) { append(held); held = []; }
    setStatus(paused ? "paused" : "following");
  }

  // With timestamps: the tail as the server stamps it (when jobyard first saw each line),
  // read again every 2 s rather than followed.
  async function stamped() {
    const query = new URLSearchParams({ tail: limit() });
    if (taskSelect.value) query.set("task", taskSelect.value);
    const response = await fetch(`/ui/api/jobs/${ref}/logs/stamped?${query}`, { credentials: "same-origin" });
    if (!response.ok) { setStatus(`no log (${response.status})`); return; }
    const lines = (await response.text()).split("\n");
    if (lines[lines.length - 1] === "") lines.pop();
    box.replaceChildren(); append(lines);
    setStatus("with timestamps, read every 2 s");
  }

  async function start() {
    if (controller) controller.abort();
    controller = new AbortController();
    clearInterval(stampTimer);
    if (stamps.checked) { stamped(); stampTimer = setInterval(stamped, 2000); return; }
    box.replaceChildren(); held = []; partial = "";
    const task = taskSelect.value;
    download.href = `/ui/api/jobs/${ref}/logs${task ? `?task=${encodeURIComponent(task)}` : ""}`;
    const query = new URLSearchParams({ follow: "true", tail: limit() });
    if (task) query.set("task", task);
    setStatus(paused ? "paused" : "following");
    try {
      const response = await fetch(`/ui/api/jobs/${ref}/logs?${query}`, { signal: controller.signal, credentials: "same-origin" });
      if (!response.ok) { setStatus(`no log (${response.status})`); return; }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const parts = (partial + value).split("\n");
        partial = parts.pop();
        receive(parts);
      }
      if (partial) receive([partial]);
      partial = "";
      setStatus("ended");
    } catch (err) {
      if (err.name !== "AbortError") setStatus(`stopped: ${err.message}`);
    }
  }

  cleanup.push(() => { if (controller) controller.abort(); clearInterval(stampTimer); });
  const node = el("div", {},
    el("div", { class: "log-bar" },
      el("label", { for: "log-task" }, "Task ", taskSelect),
      el("label", { for: "log-tail" }, "Tail lines ", tailInput),
      pause, el("label", { for: "log-timestamps" }, stamps, " Timestamps"), search, download, status),
    box);
  return {
    node,
    task: () => taskSelect.value,
    setTasks(names) {
      const joined = names.join("\n");
      if (joined === known) return;
      const current = taskSelect.value;
      known = joined;
      taskSelect.replaceChildren(...names.map((n) => el("option", { value: n, text: n, selected: n === current })));
      if (!controller || (!current && names.length)) start();
    },
  };
}

// ---- terminal (xterm.js from npm, over the training face's WebSocket terminal) ---------------

function load(tag, attrs) {
  return new Promise((resolve, reject) => {
    const node = el(tag, { ...attrs, onload: resolve, onerror: () => reject(new Error("xterm.js is not installed on this server (make assets)")) });
    document.head.append(node);
  });
}

async function terminal(box, url) {
  if (!window.Terminal) {
    try {
      await Promise.all([load("link", { rel: "stylesheet", href: "/static/vendor/xterm.css" }),
        load("script", { src: "/static/vendor/xterm.js" }), load("script", { src: "/static/vendor/addon-fit.js" })]);
    } catch (err) { box.replaceChildren(el("p", { class: "error", text: err.message })); return; }
  }
  const holder = el("div", { class: "term", id: "terminal" });
  const closeButton = el("button", { type: "button", id: "close-terminal" }, "Close terminal");
  box.replaceChildren(closeButton, holder);
  const term = new window.Terminal({ cursorBlink: true, convertEol: false, fontSize: 13 });
  const fit = window.FitAddon ? new window.FitAddon.FitAddon() : null;
  if (fit) term.loadAddon(fit);
  term.open(holder);
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  const frame = (channel, bytes) => {
    const out = new Uint8Array(bytes.length + 1);
    out[0] = channel; out.set(bytes, 1);
    if (socket.readyState === WebSocket.OPEN) socket.send(out);
  };
  const resize = () => {
    if (fit) fit.fit();
    frame(4, encoder.encode(JSON.stringify({ Height: term.rows, Width: term.cols })));
  };
  socket.onopen = () => { resize(); term.focus(); };
  socket.onmessage = (e) => term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
  socket.onclose = (e) => term.write(`\r\n[terminal closed${e.reason ? ": " + e.reason : ""}]\r\n`);
  term.onData((data) => frame(0, encoder.encode(data)));
  window.addEventListener("resize", resize);
  const close = () => { window.removeEventListener("resize", resize); socket.close(); term.dispose(); box.replaceChildren(); };
  closeButton.addEventListener("click", close);
  cleanup.push(close);
}

// ---- submit --------------------------------------------------------------------------------

const FIELDS = [
  ["entrypoint", "Entrypoint (shell command)", "text", "wide"],
  ["name", "Name", "text"],
  ["queue", "Queue", "select"],
  ["resources.cpus", "CPUs", "text"],
  ["resources.memory", "Memory (MiB or e.g. 4GiB)", "text"],
  ["resources.gpus", "GPUs", "text"],
  ["resources.gpu_model", "GPU model", "text"],
  ["replicas", "Replicas", "text"],
  ["max_runtime", "Max runtime (seconds)", "text"],
  ["ports", "Ports (comma-separated)", "text"],
  ["env", "Environment (KEY=value per line)", "textarea", "wide"],
];

function fieldId(name) { return `s-${name.replace(".", "-")}`; }

function renderSubmit(params) {
  const formError = el("p", { class: "error", role: "alert", id: "form-error" });
  const inputs = {};
  const errors = {};
  const fields = FIELDS.map(([name, label, kind, wide]) => {
    const id = fieldId(name);
    const error = el("p", { class: "field-error", id: `${id}-error`, "aria-live": "polite" });
    let input;
    if (kind === "select") input = el("select", { id, name }, me.queues.map((q) => el("option", { value: q, text: q })));
    else if (kind === "textarea") input = el("textarea", { id, name, rows: 3 });
    else input = el("input", { id, name, type: "text", required: name === "entrypoint", autocomplete: "off" });
    input.setAttribute("aria-describedby", `${id}-error`);
    inputs[name] = input;
    errors[name] = error;
    return el("label", { for: id, class: wide || null }, label, input, error);
  });
  const form = el("form", { class: "form card", id: "submit-form", novalidate: true },
    fields, el("div", { class: "wide actions" }, el("button", { type: "submit", id: "submit" }, "Submit"), formError));
  view().replaceChildren(el("h1", { text: "Submit a job" }), form);

  const clone = params.get("clone");
  if (clone) api("GET", `/ui/api/jobs/${clone}`).then(({ data }) => prefill(inputs, data)).catch((e) => { formError.textContent = e.message; });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const e of Object.values(errors)) e.textContent = "";
    formError.textContent = "";
    let body;
    try { body = formBody(inputs); } catch (err) { formError.textContent = err.message; return; }
    const { status, data } = await api("POST", "/ui/api/jobs", body).catch((err) => ({ status: 0, data: { errors: [{ field: "form", message: err.message }] } }));
    if (status === 201) { window.location.hash = `#/jobs/${data.display_id}`; return; }
    for (const { field, message } of data.errors) {
      const key = Object.keys(errors).find((k) => field === k || field.startsWith(`${k}.`));
      if (key) { errors[key].textContent = message; inputs[key].setAttribute("aria-invalid", "true"); }
      else formError.textContent = `${field}: ${message}`;
    }
  });
}

function formBody(inputs) {
  const v = (name) => inputs[name].value.trim();
  const spec = { entrypoint: v("entrypoint"), resources: {} };
  for (const key of ["cpus", "memory", "gpus", "gpu_model"]) if (v(`resources.${key}`)) spec.resources[key] = v(`resources.${key}`);
  if (v("replicas")) spec.replicas = v("replicas");
  if (v("max_runtime")) spec.max_runtime = v("max_runtime");
  if (v("ports")) spec.ports = v("ports").split(",").map((p) => ({ port: p.trim(), protocol: "http" }));
  if (v("env")) {
    spec.env = {};
    for (const line of v("env").split("\n")) {
      if (!line.trim()) continue;
      const at = line.indexOf("=");
      if (at < 1) throw new Error(`environment: "${line}" is not KEY=value`);
      spec.env[line.slice(0, at).trim()] = line.slice(at + 1);
    }
  }
  const body = { spec, queue: v("queue") || undefined };
  if (v("name")) body.name = v("name");
  return body;
}

function prefill(inputs, job) {
  const s = job.spec;
  inputs.entrypoint.value = Array.isArray(s.entrypoint) ? s.entrypoint.join(" ") : s.entrypoint;
  inputs.name.value = job.name;
  inputs.queue.value = job.queue;
  for (const key of ["cpus", "memory", "gpus", "gpu_model"]) inputs[`resources.${key}`].value = (s.resources || {})[key] ?? "";
  inputs.replicas.value = s.replicas ?? "";
  inputs.max_runtime.value = s.max_runtime ?? "";
  inputs.ports.value = (s.ports || []).map((p) => p.port).join(",");
  inputs.env.value = Object.entries(s.env || {}).map(([k, val]) => `${k}=${val}`).join("\n");
}

// ---- queues and pools ----------------------------------------------------------------------

function bar(label, used, capacity, unit) {
  return el("div", {}, el("div", { text: `${label}: ${used} / ${capacity}${unit}` }),
    el("meter", { min: 0, max: capacity || 1, value: used, "aria-label": label }));
}

function gpuModels(gpus) {
  const models = new Map();
  for (const gpu of gpus) {
    const [used, all] = models.get(gpu.model) || [0, 0];
    models.set(gpu.model, [used + (gpu.in_use ? 1 : 0), all + 1]);
  }
  return [...models].map(([model, [used, all]]) => bar(`${model}`, used, all, ""));
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

function chart(data) {
  const width = 600, height = 120, pad = 4;
  const top = Math.max(1, ...data.running, ...data.queued);
  const n = data.running.length;
  const line = (values, cls) => svg("polyline", { class: cls, fill: "none",
    points: values.map((v, i) => `${pad + (i * (width - 2 * pad)) / Math.max(1, n - 1)},${height - pad - (v * (height - 2 * pad)) / top}`).join(" ") });
  const last = (values) => values[values.length - 1] ?? 0;
  const summary = `this minute ${last(data.running)} running, ${last(data.queued)} waiting; peak ${top} in a minute of the last hour`;
  return el("div", {},
    svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", class: "chart", role: "img", "aria-label": summary },
      svg("title", {}, summary), line(data.queued, "queued-line"), line(data.running, "running-line")),
    el("p", { class: "status", id: "activity-summary" },
      el("span", { class: "legend running-key", text: "running" }), " ",
      el("span", { class: "legend queued-key", text: "queued" }), ` — ${summary}`));
}

function renderQueues() {
  const pools = el("div", { class: "grid", id: "pools" });
  const queues = el("tbody", { id: "queues" });
  const history = el("section", { class: "card", id: "activity" });
  view().replaceChildren(el("h1", { text: "Pools" }), pools,
    el("h1", { text: "Jobs over the last hour" }), history, el("h1", { text: "Queues" }),
    el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {},
      ["Queue", "Priority", "Running", "Queued", "In use"].map((t) => el("th", { text: t })))), queues)));
  every(2 * POLL_MS, async () => {
    const [p, q, a] = await Promise.all([api("GET", "/ui/api/pools"), api("GET", "/ui/api/queues"),
      api("GET", "/ui/api/activity")]);
    history.replaceChildren(chart(a.data));
    pools.replaceChildren(...p.data.items.map((pool) => el("section", { class: "card" },
      el("h2", { text: pool.name }),
      bar("CPUs", pool.in_use.cpus, pool.capacity.cpus, ""),
      bar("Memory", pool.in_use.memory_mib, pool.capacity.memory_mib, " MiB"),
      bar("GPUs", pool.in_use.gpus, pool.capacity.gpus, ""),
      gpuModels(pool.gpus),
      el("p", { class: "status", text: `${pool.running_jobs ?? 0} running, ${pool.queued_jobs ?? 0} queued` }))));
    queues.replaceChildren(...q.data.items.map((queue) => el("tr", {},
      el("td", { text: queue.name }), el("td", { text: queue.priority ?? "" }),
      el("td", { text: queue.running_jobs }), el("td", { text: queue.queued_jobs }),
      el("td", { text: queue.in_use ? resources(queue.in_use, 1) : "" }))));
  });
}

// ---- routing -------------------------------------------------------------------------------

function route() {
  for (const undo of cleanup.splice(0)) undo();
  const hash = window.location.hash.slice(1) || "/jobs";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts[1]) renderJob(decodeURIComponent(parts[1]));
  else if (parts[0] === "submit") renderSubmit(params);
  else if (parts[0] === "queues") renderQueues();
  else renderJobs(params);
}

async function main() {
  ({ data: me } = await api("GET", "/ui/api/me"));
  document.getElementById("whoami").textContent = `${me.name}${me.admin ? " (admin)" : ""}`;
  document.getElementById("signout").addEventListener("click", async () => {
    await api("POST", "/logout");
    window.location.assign("/login");
  });
  window.addEventListener("hashchange", route);
  route();
}

main();
