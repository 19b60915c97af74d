// jobyard dashboard: a job's usage charts (CPU, memory, GPUs) from /ui/api/jobs/{ref}/metrics,
// drawn with uPlot (from npm, served from /static/vendor). Loaded before app.js, whose el() and
// api() it uses; app.js's job page calls usageView(ref) and then refresh(job) as it polls.
"use strict";

const USAGE_COLORS = ["#2b59c3", "#c62828", "#1a7f37", "#9a6700", "#6f42c1", "#0a7ea4", "#b3186f", "#5b6770"];
const USAGE_POLL_MS = 2500;

function usageBytes(value) {
  if (value === null || value === undefined) return "";
  const units = [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]];
  for (const [unit, size] of units) if (Math.abs(value) >= size) return `${(value / size).toFixed(value / size >= 10 ? 0 : 1)} ${unit}`;
  return `${value} B`;
}

function usageCores(value) { return value === null || value === undefined ? "" : `${value.toFixed(2)} cores`; }
function usagePercent(value) { return value === null || value === undefined ? "" : `${value.toFixed(0)} %`; }

// The samples of every task on one time axis (tasks sampled in one pass share its timestamp).
function usageTable(usage, pick) {
  const times = new Set();
  const lines = [];  // { label, values: Map(time -> value) }
  for (const task of usage.tasks) {
    for (const sample of task.samples) times.add(Date.parse(sample.timestamp) / 1000);
    for (const [label, value] of pick(task)) {
      let line = lines.find((l) => l.label === label);
      if (!line) { line = { label, values: new Map() }; lines.push(line); }
      for (const [t, v] of value) line.values.set(t, v);
    }
  }
  const xs = [...times].sort((a, b) => a - b);
  return { xs, lines, data: [xs, ...lines.map((l) => xs.map((t) => (l.values.has(t) ? l.values.get(t) : null)))] };
}

function usageSeries(task, field) {
  return [[task.name, task.samples.map((s) => [Date.parse(s.timestamp) / 1000, s[field]])]];
}

function usageGpuSeries(task, field) {
  const byGpu = new Map();
  for (const s of task.samples) {
    for (const gpu of s.gpus || []) {
      if (!byGpu.has(gpu.index)) byGpu.set(gpu.index, []);
      byGpu.get(gpu.index).push([Date.parse(s.timestamp) / 1000, gpu[field]]);
    }
  }
  return [...byGpu].map(([index, values]) => [`${task.name} GPU ${index}`, values]);
}

const USAGE_CHARTS = [
  { id: "cpu", title: "CPU", unit: "cores", format: usageCores, pick: (t) => usageSeries(t, "cpu_cores") },
  { id: "memory", title: "Memory (RSS)", unit: "bytes", format: usageBytes, pick: (t) => usageSeries(t, "memory_rss_bytes") },
  { id: "gpu-util", title: "GPU utilisation", unit: "%", format: usagePercent, gpu: true, range: [0, 100],
    pick: (t) => usageGpuSeries(t, "utilization_percent") },
  { id: "gpu-memory", title: "GPU memory", unit: "bytes", format: usageBytes, gpu: true,
    pick: (t) => usageGpuSeries(t, "memory_used_bytes") },
];

function usageView(ref) {
  const note = el("p", { class: "status", id: "usage-note" });
  const grid = el("div", { class: "usage-grid", id: "usage" });
  const node = el("section", {}, el("h2", { text: "Usage" }), note, grid);
  const plots = new Map();  // chart id -> { plot, box, labels }
  let last = 0;
  let finalDone = false;
  let busy = false;

  function summary(chart, table) {
    const latest = table.lines.map((l) => {
      const values = table.data[table.lines.indexOf(l) + 1];
      const value = [...values].reverse().find((v) => v !== null && v !== undefined);
      return `${l.label} ${value === undefined ? "no figure" : chart.format(value)}`;
    });
    return `${chart.title}, latest: ${latest.join("; ") || "no samples"}`;
  }

  function draw(chart, table) {
    const width = Math.max(260, Math.floor((grid.clientWidth || 600) / 2) - 40);
    const labels = table.lines.map((l) => l.label).join("\n");
    let entry = plots.get(chart.id);
    if (entry && entry.labels !== labels) { entry.plot.destroy(); entry.box.remove(); plots.delete(chart.id); entry = null; }
    if (!entry) {
      const box = el("figure", { class: "usage-chart", id: `usage-${chart.id}`, role: "img" });
      grid.append(box);
      const opts = {
        title: chart.title, width, height: 200,
        scales: { x: { time: true }, y: chart.range ? { range: chart.range } : { range: (u, lo, hi) => [0, Math.max(hi || 0, 1) * 1.1] } },
        series: [{ label: "time" }, ...table.lines.map((l, i) => ({
          label: l.label, stroke: USAGE_COLORS[i % USAGE_COLORS.length], width: 1.5, spanGaps: false,
          value: (u, v) => chart.format(v),
        }))],
        axes: [{}, { label: chart.unit, size: 84, values: (u, ticks) => ticks.map((v) => chart.format(v)) }],
      };
      entry = { plot: new window.uPlot(opts, table.data, box), box, labels };
      plots.set(chart.id, entry);
    } else {
      entry.plot.setData(table.data);
      if (Math.abs(entry.plot.width - width) > 8) entry.plot.setSize({ width, height: 200 });
    }
    entry.box.setAttribute("aria-label", summary(chart, table));
    entry.box.dataset.series = String(table.lines.length);
    entry.box.dataset.points = String(table.xs.length);
  }

  function render(usage) {
    const samples = usage.tasks.flatMap((t) => t.samples);
    if (!samples.length) { note.textContent = "No usage samples yet (they are taken while a task runs)."; return; }
    const gpuFigures = samples.some((s) => s.gpus && s.gpus.length);
    const unmeasured = samples.every((s) => s.gpus === null);
    note.textContent = `${samples.length} sample${samples.length === 1 ? "" : "s"}, one every ${usage.interval_seconds} s` +
      (unmeasured ? " · GPU figures: not measured on this server" : gpuFigures ? "" : " · no GPUs");
    for (const chart of USAGE_CHARTS) {
      if (chart.gpu && !gpuFigures) continue;
      draw(chart, usageTable(usage, chart.pick));
    }
  }

  async function fetchAndDraw() {
    if (!window.uPlot) {
      try { await load("link", { rel: "stylesheet", href: "/static/vendor/uPlot.min.css" }); await load("script", { src: "/static/vendor/uPlot.iife.min.js" }); }
      catch (err) { note.textContent = "The charts need uPlot, which is not installed on this server (make assets)."; finalDone = true; return; }
    }
    const { data } = await api("GET", `/ui/api/jobs/${encodeURIComponent(ref)}/metrics`);
    render(data);
  }

  return {
    node,
    // Called on every poll of the job page: fetch again every few seconds while the job is
    // live, and once more after it ended (its last samples), then no more.
    async refresh(job) {
      const ended = TERMINAL.has(job.state);
      if (busy || finalDone || Date.now() - last < (ended ? 0 : USAGE_POLL_MS)) return;
      busy = true; last = Date.now();
      try { await fetchAndDraw(); if (ended) finalDone = true; }
      catch (err) { note.textContent = `usage: ${err.message}`; }
      finally { busy = false; }
    },
    destroy() { for (const { plot } of plots.values()) plot.destroy(); plots.clear(); },
  };
}
