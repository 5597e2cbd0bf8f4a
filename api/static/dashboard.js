/* tracestream dashboard.
 *
 * Reads the public read API every few seconds and draws with the plotly.js the
 * server ships (no CDN). A selected training run's loss curve is loaded from
 * /api/runs/{id}/metrics, then extended live from /api/runs/{id}/events (SSE).
 * Every panel degrades on its own: an endpoint that fails or has nothing shows
 * "no data" with the reason, and the other panels carry on.
 *
 * When the API keeps its reads behind the token (GET /api/session says so), the
 * page first asks for the token and signs in: the API answers with an HttpOnly
 * session cookie that every fetch and the EventSource then send by themselves.
 * A 401 later (the session expired, the token changed) brings the sign-in back.
 */
"use strict";

const REFRESH_MS = 5000;
const PLOT_CONFIG = { displayModeBar: false, responsive: true };
const LAYOUT = {
  margin: { l: 56, r: 16, t: 8, b: 40 },
  font: { size: 12, color: "#1f2933" },
  paper_bgcolor: "#ffffff",
  plot_bgcolor: "#ffffff",
  xaxis: { gridcolor: "#eef1f4" },
  yaxis: { gridcolor: "#eef1f4", rangemode: "tozero" },
};
const COLORS = ["#2f6fdf", "#e07b39", "#23834f", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d", "#d4ac0d"];
const TERMINAL = new Set(["completed", "failed", "cancelled", "stopped"]);

/* ---------- small helpers ---------- */

async function errorDetail(response) {
  try { return (await response.json()).error.message; } catch (_) { return ""; /* not the API's error shape */ }
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    const detail = await errorDetail(response);
    if (response.status === 401 && auth.required) signedOut("Your session has ended; sign in again.");
    throw new Error(`GET ${path} answered ${response.status}${detail ? `: ${detail}` : ""}`);
  }
  return response.json();
}

/* Build an element; children are nodes or strings (always set as text, never parsed as HTML). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function fillBody(table, rows) {
  table.tBodies[0].replaceChildren(...rows);
}

function panelMessage(panelId, message, isError = false) {
  const p = document.querySelector(`#${panelId} .empty`);
  p.hidden = !message;
  p.textContent = message || "";
  p.classList.toggle("error", isError);
}

function plot(divId, data, layout = {}) {
  const div = document.getElementById(divId);
  div.classList.toggle("hidden", data.length === 0);
  if (data.length === 0) { Plotly.purge(div); return; }
  Plotly.react(div, data, { ...LAYOUT, ...layout, xaxis: { ...LAYOUT.xaxis, ...layout.xaxis },
                            yaxis: { ...LAYOUT.yaxis, ...layout.yaxis } }, PLOT_CONFIG);
}

const fmt = {
  int: (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US")),
  num: (x, digits = 4) => (x === null || x === undefined ? "–" : Number(x).toPrecision(digits)),
  pct: (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`),
  time: (t) => (t ? new Date(t).toISOString().replace("T", " ").slice(0, 19) : "–"),
  short: (s, n = 12) => (s && s.length > n ? `${s.slice(0, n)}…` : s || ""),
};

/* Run a panel's refresh; a failure is shown in that panel only. */
async function guarded(panelId, refresh) {
  try {
    await refresh();
  } catch (error) {
    panelMessage(panelId, `no data: ${error.message}`, true);
    console.warn(`dashboard panel ${panelId}:`, error);
  }
}

/* ---------- header tiles and ingest rate ---------- */

async function refreshStats() {
  const stats = await getJSON("/api/stats");
  const ingest = stats.ingest || {};
  const traces = ingest.traces || {};
  document.getElementById("tile-traces").textContent = fmt.int(traces.total);
  document.getElementById("tile-dlq").textContent = fmt.int(stats.dead_letters);
  const minute = (traces.windows || []).find((w) => w.seconds === 60);
  document.getElementById("tile-rate").textContent = minute ? `${fmt.num(minute.per_second, 3)} /s` : "–";
  const lag = (stats.lag || []).reduce((sum, p) => sum + (p.lag || 0), 0);
  const lagTile = document.getElementById("tile-lag");
  lagTile.textContent = stats.lag ? fmt.int(lag) : "–";
  lagTile.title = stats.lag_error || "";

  const points = ingest.traces_per_minute || [];
  if (points.length === 0) {
    plot("chart-ingest", []);
    panelMessage("panel-ingest", "no data: no traces ingested in the last hour");
    return;
  }
  // One bar per minute, centred on its minute, on an axis that always spans the last hour.
  const MINUTE_MS = 60_000;
  const iso = (ms) => new Date(ms).toISOString();
  const now = Date.now();
  plot("chart-ingest", [
    { type: "bar", name: "traces per minute", x: points.map((p) => iso(Date.parse(p.minute) + MINUTE_MS / 2)),
      y: points.map((p) => p.rows), width: points.map(() => MINUTE_MS * 0.85), marker: { color: COLORS[0] },
      hovertemplate: "%{x|%H:%M}: %{y} traces<extra></extra>" },
  ], {
    xaxis: { type: "date", range: [iso(now - 60 * MINUTE_MS), iso(now + MINUTE_MS)] },
    yaxis: { title: { text: "traces / minute" } },
  });
  panelMessage("panel-ingest", "");
}

/* ---------- dead letters ---------- */

async function refreshDlq() {
  const body = await getJSON("/api/dlq?limit=1");
  const byReason = new Map();
  for (const c of body.counts || []) byReason.set(c.reason, (byReason.get(c.reason) || 0) + c.count);
  const counts = [...byReason].map(([reason, count]) => ({ reason, count })).sort((a, b) => b.count - a.count);
  if (counts.length === 0) {
    plot("chart-dlq", []);
    panelMessage("panel-dlq", "no data: no dead letters");
    return;
  }
  plot("chart-dlq", [
    { type: "bar", orientation: "h", x: counts.map((c) => c.count), y: counts.map((c) => c.reason),
      marker: { color: "#c0392b" }, text: counts.map((c) => String(c.count)), textposition: "auto" },
  ], { margin: { l: 170, r: 16, t: 8, b: 40 }, yaxis: { autorange: "reversed", rangemode: "normal" } });
  panelMessage("panel-dlq", "");
}

/* ---------- datasets ---------- */

const rangesOf = (dataset) => (dataset.manifest && dataset.manifest.ranges) || [];

async function refreshDatasets() {
  const datasets = await getJSON("/api/datasets");
  const table = document.getElementById("datasets-table");
  if (datasets.length === 0) {
    plot("chart-datasets", []);
    fillBody(table, []);
    panelMessage("panel-datasets", "no data: no datasets yet (tracestream dataset create NAME)");
    return;
  }
  // One bar per (dataset version, partition): from its start offset to its end offset.
  const bars = datasets.map((d, k) => {
    const label = `${d.name}@${d.version}`;
    const ranges = rangesOf(d);
    return {
      type: "bar", orientation: "h", name: label,
      y: ranges.map((r) => `${label} p${r.partition}`),
      base: ranges.map((r) => r.start),
      x: ranges.map((r) => r.end - r.start),
      marker: { color: COLORS[k % COLORS.length] },
      hovertemplate: "%{y}: [%{base}, %{customdata})<extra></extra>",
      customdata: ranges.map((r) => r.end),
    };
  });
  const rows = bars.reduce((n, b) => n + b.y.length, 0);
  document.getElementById("chart-datasets").style.height = `${Math.max(160, 40 + 24 * rows)}px`;
  plot("chart-datasets", bars, {
    barmode: "overlay", showlegend: true, legend: { orientation: "h", y: -0.25 },
    margin: { l: 150, r: 16, t: 8, b: 60 }, xaxis: { title: { text: "offset" } },
    yaxis: { autorange: "reversed", rangemode: "normal" },
  });
  fillBody(table, datasets.map((d) => el("tr", {},
    el("td", {}, el("b", {}, d.name), `@${d.version}`),
    el("td", {}, el("span", { class: `status ${d.status}` }, d.status)),
    el("td", { class: "num" }, fmt.int(d.record_count)),
    el("td", { class: "num" }, `${fmt.int(d.train_count)} / ${fmt.int(d.eval_count)}`),
    el("td", { class: "mono" }, rangesOf(d).map((r) => `p${r.partition} [${r.start}, ${r.end})`).join("  ")),
    el("td", { class: "mono", title: d.content_sha256 || "" }, fmt.short(d.content_sha256)),
    el("td", {}, fmt.time(d.manifest && d.manifest.created_at)),
  )));
  panelMessage("panel-datasets", "");
}

/* ---------- models: the registry ---------- */

const stagesText = (stages) => Object.entries(stages).map(([stage, v]) => `${stage} v${v}`).join(" · ") || "–";

function gateText(gate) {
  if (!gate) return "–";
  const verdict = gate.passed ? "passed" : "FAILED";
  const value = gate.metric === "exact_match" ? fmt.pct : fmt.num;
  return `${verdict} vs ${gate.against_ref}: ${gate.metric} ${value(gate.candidate)} vs ${value(gate.baseline)}` +
    ` (max drop ${gate.max_drop})`;
}

async function refreshModels() {
  const models = await getJSON("/api/models");
  const table = document.getElementById("models-table");
  const versionsTable = document.getElementById("model-versions-table");
  if (models.length === 0) {
    fillBody(table, []);
    fillBody(versionsTable, []);
    panelMessage("panel-models", "no data: no models yet (tracestream models register RUN --name NAME)");
    return;
  }
  fillBody(table, models.map((m) => el("tr", { "data-model": m.name },
    el("td", {}, el("b", {}, m.name)),
    el("td", { class: "num" }, `v${m.latest_version}`),
    el("td", { class: "stages" }, stagesText(m.stages)),
  )));
  const details = await Promise.all(models.map((m) => getJSON(`/api/models/${encodeURIComponent(m.name)}`)));
  fillBody(versionsTable, details.flatMap((m) => m.versions_detail.map((v) => el("tr",
    { "data-version": `${v.name}@${v.version}` },
    el("td", {}, el("b", {}, v.name), `@${v.version}`),
    el("td", {}, v.stage ? el("span", { class: `status ${v.stage}` }, v.stage) : "–"),
    el("td", { class: "mono", title: v.run_id }, v.run_id),
    el("td", { class: "mono", title: (v.lineage.dataset.ranges || [])
      .map((r) => `p${r.partition} [${r.start}, ${r.end})`).join("  ") },
    `${v.dataset.name}@${v.dataset.version}`),
    el("td", { class: "num" }, fmt.pct(v.scorecard.exact_match)),
    el("td", { class: "gate" }, gateText(v.gates[v.gates.length - 1])),
  ))));
  panelMessage("panel-models", "");
}

/* ---------- tunes: the trials' loss curves on one chart, the best highlighted ---------- */

/* The tune shown: the one picked (or linked with #tune=ID), else the newest. */
const tuneView = { tuneId: null };

const paramValue = (v) => (typeof v !== "number" ? String(v)
  : v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5) ? v.toExponential(2) : fmt.num(v, 3));
const paramsText = (params) => Object.entries(params || {})
  .map(([key, value]) => `${key.split(".").pop()}=${paramValue(value)}`).join(" ");

async function refreshTunes() {
  const tunes = await getJSON("/api/tunes");
  const table = document.getElementById("tunes-table");
  const trialsTable = document.getElementById("trials-table");
  if (tunes.length === 0) {
    fillBody(table, []);
    fillBody(trialsTable, []);
    plot("chart-tune", []);
    panelMessage("panel-tunes", "no data: no tunes yet (tracestream tune DATASET --space space.json --samples N)");
    return;
  }
  const tuneId = tuneView.tuneId || tunes[tunes.length - 1].tune_id;
  const tune = await getJSON(`/api/tunes/${encodeURIComponent(tuneId)}`);
  fillBody(table, [...tunes].reverse().map((t) => el("tr", {
    "data-tune": t.tune_id, class: t.tune_id === tuneId ? "selected" : "", onclick: () => pinTune(t.tune_id),
  },
    el("td", { class: "mono", title: t.tune_id }, t.tune_id),
    el("td", { class: "num" }, fmt.int(t.trials)),
    el("td", {}, t.tune_id === tuneId ? el("span", { class: `status ${tune.status}` }, tune.status) : "–"),
    el("td", {}, fmt.time(t.started_at)),
  )));
  // The best trial is drawn last (on top), wide and in the accent colour; the others thin and muted.
  const ordered = [...tune.trials].sort((a, b) => (a.run_id === tune.best) - (b.run_id === tune.best));
  plot("chart-tune", ordered.map((t, i) => {
    const best = t.run_id === tune.best;
    return { type: "scatter", mode: "lines", name: `${t.run_id.split("-").pop()} ${paramsText(t.params)}`,
             x: t.curve.map((p) => p.step), y: t.curve.map((p) => p.loss),
             line: { width: best ? 4 : 1.5, color: best ? COLORS[0] : COLORS[1 + (i % (COLORS.length - 1))] },
             opacity: best ? 1 : 0.55, meta: t.run_id };
  }), { xaxis: { title: { text: "step" } }, yaxis: { title: { text: "training loss" } }, showlegend: true,
        margin: { ...LAYOUT.margin, b: 90 }, legend: { orientation: "h", y: -0.35 } });
  const best = tune.trials.find((t) => t.run_id === tune.best);
  document.getElementById("tune-best").textContent = best
    ? `best by ${tune.metric} (${tune.mode}): ${best.run_id}, ${paramsText(best.params)}, ${tune.metric} ` +
      `${fmt.num(best[tune.metric])}${best.checkpoint ? `, checkpoint ${best.checkpoint}` : ""}`
    : `no best yet: no trial completed with a ${tune.metric}`;
  fillBody(trialsTable, tune.trials.map((t) => el("tr", {
    "data-trial": t.run_id, class: t.run_id === tune.best ? "best" : "", title: t.error || "",
  },
    el("td", { class: "mono" }, t.run_id),
    el("td", {}, el("span", { class: `status ${t.status}` }, t.status)),
    el("td", { class: "mono" }, paramsText(t.params)),
    el("td", { class: "num" }, fmt.int(t.steps)),
    el("td", { class: "num" }, fmt.num(t.loss)),
    el("td", { class: "num" }, fmt.num(t.eval_loss)),
  )));
  panelMessage("panel-tunes", "");
}

function pinTune(tuneId) {
  tuneView.tuneId = tuneId;
  setLink({ tune: tuneId });
  guarded("panel-tunes", refreshTunes);
}

/* ---------- runs: list, loss curve (live), scorecard, leaderboard ---------- */

/* The selected run: its curve as step -> loss (the one truth the chart is drawn from) and its live stream. */
const current = { runId: null, source: null, points: new Map(), lastStep: -Infinity };

async function refreshRuns() {
  const runs = await getJSON("/api/runs");
  const table = document.getElementById("runs-table");
  fillBody(table, runs.map((r) => el("tr", {
    "data-run": r.run_id, class: r.run_id === current.runId ? "selected" : "",
    onclick: () => pinRun(r.run_id),
  },
    el("td", { class: "mono", title: r.run_id }, fmt.short(r.run_id, 14)),
    el("td", {}, `${r.dataset.name}@${r.dataset.version}`),
    el("td", {}, el("span", { class: `status ${r.status}` }, r.status)),
    el("td", { class: "num" }, fmt.int(r.steps)),
    el("td", { class: "num" }, fmt.num(r.loss)),
  )));
  if (runs.length === 0) {
    panelMessage("panel-runs", "no data: no training runs yet (tracestream train DATASET)");
    return;
  }
  panelMessage("panel-runs", "");
  const following = document.getElementById("follow-latest").checked;
  // Runs come oldest first: follow the newest one still going, else the newest.
  const newestFirst = runs.slice().reverse();
  const latest = newestFirst.find((r) => !TERMINAL.has(r.status)) || newestFirst[0];
  if (!current.runId || (following && latest.run_id !== current.runId)) await selectRun(latest.run_id);
}

/* Stop following the latest run and show this one; the URL (#run=ID) keeps the choice. */
async function pinRun(runId) {
  document.getElementById("follow-latest").checked = false;
  setLink({ run: runId });
  try {
    await selectRun(runId);
  } catch (error) {
    setLive(error.message, false);
  }
}

async function selectRun(runId) {
  if (current.source) current.source.close();
  Object.assign(current, { runId, source: null, points: new Map(), lastStep: -Infinity });
  for (const tr of document.querySelectorAll("#runs-table tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.run === runId);
  }
  const [detail] = await Promise.all([getJSON(`/api/runs/${encodeURIComponent(runId)}`), loadCurve(runId)]);
  if (current.runId !== runId) return;  // another run was picked meanwhile
  const run = detail.run;
  showScorecard(run);
  refreshLeaderboard(run.dataset).catch((e) => console.warn("leaderboard:", e));
  if (!TERMINAL.has(run.status)) follow(runId);
  else setLive(ended(run), false);
}

/* How a finished run ended, with its error when it failed. */
function ended(run) {
  return `${run.status}: ${fmt.int(current.points.size)} steps${run.error ? `: ${run.error}` : ""}`;
}

function drawCurve() {
  const steps = [...current.points.keys()].sort((a, b) => a - b);
  plot("chart-loss", [
    { type: "scatter", mode: "lines+markers", name: "train loss", x: steps,
      y: steps.map((s) => current.points.get(s)), line: { color: COLORS[0] }, marker: { size: 4 } },
  ], { xaxis: { title: { text: "step" } }, yaxis: { title: { text: "loss" } }, showlegend: false });
}

/* Merge the stored curve (/metrics) into the chart: the first draw, and the repair when the stream skipped a point. */
async function loadCurve(runId) {
  const metrics = await getJSON(`/api/runs/${encodeURIComponent(runId)}/metrics`);
  if (current.runId !== runId) return;
  for (const m of metrics.points) {
    current.points.set(m.step, m.loss);
    current.lastStep = Math.max(current.lastStep, m.step);
  }
  drawCurve();
}

function addPoint(step, loss) {
  if (current.points.has(step)) return;
  current.points.set(step, loss);
  if (step > current.lastStep) {
    current.lastStep = step;
    Plotly.extendTraces("chart-loss", { x: [[step]], y: [[loss]] }, [0]);
  } else {
    drawCurve();  // an earlier step arrived late: redraw in step order
  }
}

/* Extend the selected run's curve from its Server-Sent Events until it ends. */
function follow(runId) {
  const source = new EventSource(`/api/runs/${encodeURIComponent(runId)}/events`);
  current.source = source;
  setLive("live: waiting for metrics…", true);
  const onEvent = async (message) => {
    if (current.runId !== runId) { source.close(); return; }
    const event = JSON.parse(message.data);
    if (event.event_type === "metrics" && event.metrics) {
      addPoint(event.metrics.step, event.metrics.loss);
      setLive(`live: step ${event.metrics.step}, loss ${fmt.num(event.metrics.loss)}`, true);
    } else if (event.event_type === "metrics") {
      await loadCurve(runId);  // a metrics event without its numbers: read them from the stored curve
    } else if (TERMINAL.has(event.event_type)) {
      source.close();
      await loadCurve(runId);
      const [run] = await Promise.all([refreshRunDetails(runId), guarded("panel-runs", refreshRuns)]);
      if (current.runId === runId) setLive(ended(run), false);
    } else if (event.event_type === "evaluated") {
      await refreshRunDetails(runId);
    }
  };
  for (const type of ["queued", "started", "metrics", "checkpoint", "evaluated", "completed", "failed", "cancelled",
                      "stopped"]) {
    source.addEventListener(type, (message) => onEvent(message).catch((e) => console.warn("run stream:", e)));
  }
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) setLive("live stream closed", false); };
}

async function refreshRunDetails(runId) {
  const run = (await getJSON(`/api/runs/${encodeURIComponent(runId)}`)).run;
  if (current.runId === runId) {
    showScorecard(run);
    refreshLeaderboard(run.dataset).catch((e) => console.warn("leaderboard:", e));
  }
  return run;
}

function setLive(text, on) {
  const p = document.getElementById("run-live");
  p.textContent = text;
  p.classList.toggle("on", on);
}

function showScorecard(run) {
  document.getElementById("scorecard-run").textContent = run.run_id;
  const box = document.getElementById("scorecard");
  const card = run.scorecard;
  if (!card) { box.replaceChildren(el("p", { class: "muted" }, "no evaluation yet")); return; }
  const rows = [
    ["items", fmt.int(card.items)], ["scored", fmt.int(card.scored)], ["exact match", fmt.pct(card.exact_match)],
    ["eval loss", fmt.num(card.loss)], ["perplexity", fmt.num(card.perplexity)],
  ];
  if (card.baseline) rows.push(["majority-answer baseline", fmt.pct(card.baseline.exact_match)]);
  for (const [source, s] of Object.entries(card.by_source || {})) {
    rows.push([`exact match, ${source}`, `${fmt.pct(s.exact_match)} of ${fmt.int(s.items)}`]);
  }
  if (card.note) rows.push(["note", card.note]);
  box.replaceChildren(el("dl", { class: "scorecard" }, rows.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
}

async function refreshLeaderboard(dataset) {
  document.getElementById("leaderboard-dataset").textContent = `on ${dataset.name}`;
  const body = await getJSON(`/api/evaluations?dataset=${encodeURIComponent(dataset.name)}`);
  fillBody(document.getElementById("leaderboard-table"), body.entries.map((e) => el("tr", {
    class: e.run_id === current.runId ? "selected" : "",
  },
    el("td", { class: "num" }, e.rank),
    el("td", { class: "mono", title: e.run_id }, fmt.short(e.run_id, 14)),
    el("td", { class: "num" }, fmt.pct(e.score)),
    el("td", { class: "num" }, fmt.num(e.loss)),
    el("td", { class: "num" }, fmt.num(e.scorecard && e.scorecard.perplexity)),
    el("td", { class: "num" }, fmt.int(e.scorecard && e.scorecard.items)),
  )));
}

/* ---------- trace viewer ---------- */

const PAGE_SIZE = 50;
/* cursors[k] fetches page k of /api/traces (keyset pages, newest first); page 0 needs none. */
const traceList = { cursors: [null], page: 0, selected: null };

async function refreshTraces() {
  const cursor = traceList.cursors[traceList.page];
  const after = cursor ? `&cursor=${encodeURIComponent(cursor)}` : "";
  const body = await getJSON(`/api/traces?order=desc&limit=${PAGE_SIZE}${after}`);
  const traces = body.items;
  traceList.cursors[traceList.page + 1] = body.next_cursor;
  document.getElementById("traces-prev").disabled = traceList.page === 0;
  document.getElementById("traces-next").disabled = !body.next_cursor;
  document.getElementById("traces-page").textContent = `page ${traceList.page + 1}`;
  fillBody(document.getElementById("traces-table"), traces.map((t) => el("tr", {
    "data-trace": t.trace_id, class: t.trace_id === traceList.selected ? "selected" : "",
    onclick: () => pickTrace(t.trace_id),
  },
    el("td", { class: "mono", title: t.trace_id }, fmt.short(t.trace_id, 14)),
    el("td", {}, t.source),
    el("td", { class: "num" }, fmt.int(t.steps)),
    el("td", {}, fmt.time(t.created_at)),
  )));
  if (traces.length === 0) {
    panelMessage("panel-traces", "no data: no traces yet (tracestream publish FILE)");
    return;
  }
  panelMessage("panel-traces", "");
  if (!traceList.selected) await showTrace(traces[0].trace_id);
}

function turnTracePage(delta) {
  traceList.page = Math.max(0, traceList.page + delta);
  guarded("panel-traces", refreshTraces);
}

/* Show a trace the user picked; the URL (#trace=ID) keeps the choice. */
function pickTrace(traceId) {
  setLink({ trace: traceId });
  return showTrace(traceId);
}

async function showTrace(traceId) {
  traceList.selected = traceId;
  for (const tr of document.querySelectorAll("#traces-table tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.trace === traceId);
  }
  const view = document.getElementById("trace-view");
  let t;
  try {
    t = await getJSON(`/api/traces/${encodeURIComponent(traceId)}`);
  } catch (error) {
    view.replaceChildren(el("p", { class: "error" }, error.message));
    return;
  }
  if (traceList.selected !== traceId) return;  // another trace was picked meanwhile
  const steps = t.steps.slice().sort((a, b) => a.i - b.i);
  const meta = Object.entries(t.meta || {}).map(([k, v]) => `${k}=${v}`).join("  ");
  view.replaceChildren(
    el("h3", { class: "mono", "data-trace": t.trace_id }, t.trace_id),
    el("p", { class: "coords" },
      `${t.source} · v${t.trace_version} · ${t.topic}[${t.partition}]@${t.offset} · ${fmt.time(t.created_at)}`,
      meta ? ` · ${meta}` : ""),
    el("h4", {}, "prompt"),
    el("div", { class: "prompt" }, t.prompt),
    el("h4", {}, `steps (${steps.length})`),
    el("ol", { class: "steps" }, steps.map((s) => el("li", { "data-i": s.i, "data-type": s.type },
      el("span", { class: "step-i" }, s.i),
      el("span", { class: "step-type" }, s.type),
      el("span", { class: "step-content" }, s.content),
    ))),
    el("h4", {}, "final answer"),
    el("div", { class: "answer" }, t.final_answer),
  );
}

/* ---------- links: #run=ID&trace=ID opens the page on that run and that trace ---------- */

function setLink(changes) {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const [key, value] of Object.entries(changes)) {
    if (value) params.set(key, value);
    else params.delete(key);
  }
  history.replaceState(null, "", `#${params}`);
}

function followLink() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("run")) pinRun(params.get("run"));
  if (params.get("trace")) showTrace(params.get("trace"));
  if (params.get("tune")) tuneView.tuneId = params.get("tune");
}

/* ---------- sign-in: only when the API keeps its reads behind the token ---------- */

/* required: reads need the token; open: the panels may read (signed in, or nothing to sign in to). */
const auth = { required: false, open: false, started: false };

function showSignIn(message = "") {
  document.getElementById("sign-in").hidden = false;
  document.getElementById("panels").hidden = true;
  document.getElementById("tiles").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("updated").textContent = "signed out";
  const error = document.getElementById("sign-in-error");
  error.hidden = !message;
  error.textContent = message;
  document.getElementById("sign-in-token").focus();
}

/* The panels' reads were refused: stop reading (and streaming) until the user signs in again. */
function signedOut(message) {
  if (!auth.open) return;
  auth.open = false;
  if (current.source) current.source.close();
  showSignIn(message);
}

function showDashboard() {
  auth.open = true;
  document.getElementById("sign-in").hidden = true;
  document.getElementById("panels").hidden = false;
  document.getElementById("tiles").hidden = false;
  document.getElementById("sign-out").hidden = !auth.required;
  if (!auth.started) {
    auth.started = true;
    followLink();
    loop();
  } else {
    if (current.runId) selectRun(current.runId).catch((e) => setLive(e.message, false));
    refreshAll();
  }
}

async function signIn(event) {
  event.preventDefault();
  const box = document.getElementById("sign-in-token");
  const response = await fetch("/api/session", {
    method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ token: box.value }),
  });
  if (!response.ok) {
    const detail = await errorDetail(response);
    showSignIn(`Not signed in (${response.status})${detail ? `: ${detail}` : ""}`);
    box.select();
    return;
  }
  box.value = "";
  showDashboard();
}

async function signOut() {
  await fetch("/api/session", { method: "DELETE" });
  location.reload();  // a fresh page: nothing read under the session stays in it
}

async function start() {
  let session = { required: false, signed_in: false };
  try {
    session = await getJSON("/api/session");
  } catch (error) {
    console.warn("GET /api/session:", error);  // an API without sessions: read as before
  }
  auth.required = session.required;
  if (session.required && !session.signed_in) showSignIn();
  else showDashboard();
}

/* ---------- main loop ---------- */

async function refreshAll() {
  await Promise.all([
    guarded("panel-ingest", refreshStats),
    guarded("panel-dlq", refreshDlq),
    guarded("panel-datasets", refreshDatasets),
    guarded("panel-runs", refreshRuns),
    guarded("panel-models", refreshModels),
    guarded("panel-tunes", refreshTunes),
    guarded("panel-traces", refreshTraces),
  ]);
  if (auth.open) document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

/* Refresh, then wait: a slow API never gets overlapping rounds; a hidden tab does not poll. */
async function loop() {
  if (!document.hidden && auth.open) await refreshAll();
  setTimeout(loop, REFRESH_MS);
}

document.getElementById("trace-open").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = document.getElementById("trace-id").value.trim();
  if (id) pickTrace(id);
});
document.getElementById("traces-prev").addEventListener("click", () => turnTracePage(-1));
document.getElementById("traces-next").addEventListener("click", () => turnTracePage(+1));
document.getElementById("follow-latest").addEventListener("change", (event) => {
  if (event.target.checked) setLink({ run: null });
});
document.getElementById("sign-in-form").addEventListener("submit", (event) => {
  signIn(event).catch((error) => showSignIn(`Not signed in: ${error.message}`));
});
document.getElementById("sign-out").addEventListener("click", () => signOut());
start();
