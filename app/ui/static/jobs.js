// Training jobs: the list, and one job's page with live curves from its server-sent events.

import { ApiError, api, refused, streamEvents } from "./api.js";
import { lineChart } from "./charts.js";
import { badge, errorNote, fmtNumber, fmtSeconds, fmtTime, h, numericEntries, refusedNote, replace, section, table } from "./dom.js";

const ACTIVE = ["queued", "validating", "running"];
// Not curves: where an evaluation sits (its fold under cross-validation), and the probe grid's C.
const NOT_METRICS = ["step", "epoch", "fold", "C"];

function progressBar(progress) {
  const percent = Math.max(0, Math.min(100, Number(progress && progress.percent) || 0));
  return h("div", { class: "progress", title: `${percent.toFixed(0)} %` }, h("div", { class: "bar", style: { width: `${percent}%` } }));
}

function bestText(best) {
  if (!best || best.value === undefined) return h("span", { class: "muted" }, "–");
  return `${best.metric} ${fmtNumber(best.value, 3)} @ ${best.step}`;
}

function jobRow(job) {
  return h(
    "tr",
    { id: `job-${job.id}`, dataset: { job: job.id, status: job.status } },
    h("td", null, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
    h("td", null, job.adapter),
    h("td", null, job.method || "–"),
    h("td", null, job.task || "–"),
    h("td", null, badge(job.status)),
    h("td", null, progressBar(job.progress)),
    h("td", null, bestText(job.best)),
    h("td", null, fmtTime(job.created_at)),
  );
}

// The jobs table (newest first), refreshed every few seconds; `limit` rows at most.
export function jobsCard(ctx, { limit = 10, title = "Training jobs" } = {}) {
  const body = h("div", null, h("p", { class: "muted" }, "loading…"));
  const refresh = async () => {
    try {
      const { data } = await api(`/v1/training-jobs?limit=${limit}`, { scope: "train", signal: ctx.signal });
      replace(body, table(["job", "adapter", "method", "task", "status", "progress", "best", "created"], data.map(jobRow), { empty: "no training jobs yet", id: "jobs" }));
    } catch (error) {
      if (ctx.signal.aborted) return;
      replace(body, error.status === 403 ? refusedNote(error) : errorNote(error));
      ctx.refreshNav();
    }
  };
  refresh();
  ctx.every(3000, refresh);
  return section(title, body);
}

export function jobsPage(root, ctx) {
  replace(root, jobsCard(ctx, { limit: 200, title: "All training jobs" }));
}

// Curves from the events seen so far: training loss (and validation loss) against the step,
// and every other numeric evaluation metric on its own chart.
class Curves {
  constructor() {
    this.loss = [];
    this.evalLoss = [];
    this.metrics = new Map();
    this.log = [];
  }

  add(event) {
    const data = event.data || {};
    if (event.kind === "loss" && Number.isFinite(data.loss)) this.loss.push([data.step, data.loss]);
    if (event.kind === "evaluation") {
      for (const [key, value] of numericEntries(data, NOT_METRICS)) {
        if (key === "loss" || key === "validation_loss") this.evalLoss.push([data.step, value]);
        else {
          if (!this.metrics.has(key)) this.metrics.set(key, []);
          this.metrics.get(key).push([data.step, value]);
        }
      }
    }
    if (event.kind === "info" || event.kind === "status") this.log.push(event);
  }

  render() {
    const lossSeries = [{ name: "training loss", points: this.loss }];
    if (this.evalLoss.length) lossSeries.push({ name: "validation loss", points: this.evalLoss });
    const metricSeries = [...this.metrics].map(([name, points]) => ({ name, points }));
    return [
      lineChart(lossSeries, { title: "Loss", id: "loss-chart" }),
      lineChart(metricSeries, { title: "Validation metrics", id: "metric-chart" }),
    ];
  }
}

function candidatesTable(candidates) {
  const columns = [];
  for (const row of candidates) for (const key of Object.keys(row || {})) if (!columns.includes(key)) columns.push(key);
  const cell = (v) => (v === null || v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : typeof v === "number" ? fmtNumber(v, 4) : String(v));
  return table(columns, candidates.map((row) => columns.map((key) => cell(row[key]))), { id: "candidates" });
}

function cancelButton(job, ctx, reload) {
  if (!ACTIVE.includes(job.status)) return null;
  const button = h("button", { type: "button", class: "danger", id: "cancel-job" }, "Cancel job");
  if (refused.has("train")) button.disabled = true;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api(`/v1/training-jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST", scope: "train" });
    } catch (error) {
      button.title = error.message;
      if (!(error instanceof ApiError && error.status === 403)) button.disabled = false;
    }
    reload();
  });
  return button;
}

function summary(job, ctx, reload) {
  const p = job.progress || {};
  const result = job.result ? h("a", { href: `#/adapters/${encodeURIComponent(job.result.adapter)}` }, `${job.result.adapter} v${job.result.version}`) : "–";
  return h(
    "section",
    { class: "card" },
    h("h2", null, `Job ${job.id} `, badge(job.status)),
    h("div", { class: "row" }, progressBar(p), h("span", null, `step ${p.step ?? 0} / ${p.total_steps ?? "?"} · epoch ${fmtNumber(p.epoch ?? 0, 3)} · ETA ${fmtSeconds(p.eta_seconds)}`), cancelButton(job, ctx, reload)),
    h(
      "dl",
      { class: "kv wide" },
      [["adapter", job.adapter], ["method", job.method], ["task", job.task], ["training data", job.training_data || "inline examples"], ["validation data", job.validation_data || (job.rows && job.rows.validation_source) || "–"], ["rows", job.rows ? `${job.rows.train ?? "?"} train / ${job.rows.validation ?? "?"} validation` : "–"], ["best", bestText(job.best)], ["created", fmtTime(job.created_at)], ["finished", fmtTime(job.finished_at)]].map(([k, v]) => [h("dt", null, k), h("dd", null, v ?? "–")]),
      h("dt", null, "result"),
      h("dd", { id: "job-result" }, result),
    ),
    job.error ? h("p", { class: "error" }, `${job.error.code}: ${job.error.message}`) : null,
    job.hyperparameters ? h("details", null, h("summary", null, "hyperparameters"), h("dl", { class: "kv" }, Object.entries(job.hyperparameters).map(([k, v]) => [h("dt", null, k), h("dd", null, typeof v === "object" ? JSON.stringify(v) : String(v))]))) : null,
  );
}

// #/jobs/ID: status and progress, loss and metric curves that grow as events arrive, the
// candidates table when the job has one, the log of status changes, and a cancel button.
export async function jobPage(root, ctx, id) {
  const top = h("div", null, h("p", { class: "muted" }, "loading…"));
  const charts = h("div", { class: "charts" });
  const extra = h("div");
  const log = h("ol", { class: "log" });
  replace(root, top, section("Curves", charts), extra, section("Log", log));
  const curves = new Curves();
  let job = null;
  const reload = async () => {
    try {
      job = await api(`/v1/training-jobs/${encodeURIComponent(id)}`, { scope: "train", signal: ctx.signal });
    } catch (error) {
      if (!ctx.signal.aborted) replace(top, section(`Job ${id}`, error.status === 403 ? refusedNote(error) : errorNote(error)));
      return;
    }
    replace(top, summary(job, ctx, reload));
    const candidates = Array.isArray(job.candidates) && job.candidates.length ? job.candidates : null;
    replace(extra, candidates ? section("Candidates", candidatesTable(candidates)) : null);
  };
  await reload();
  replace(charts, curves.render());
  ctx.every(2000, () => {
    if (job && ACTIVE.includes(job.status)) reload();
  });
  let pending = false;
  const redraw = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      replace(charts, curves.render());
      replace(log, curves.log.slice(-50).map((e) => h("li", null, h("span", { class: "muted small" }, fmtTime(e.created_at)), " ", e.kind === "status" ? badge(e.data.status) : e.data.message || JSON.stringify(e.data))));
    });
  };
  try {
    for await (const event of streamEvents(`/v1/training-jobs/${encodeURIComponent(id)}/events?stream=true`, { signal: ctx.signal, scope: "train" })) {
      curves.add(event);
      redraw();
      if (event.kind === "status") reload();
    }
  } catch (error) {
    if (!ctx.signal.aborted) log.append(h("li", { class: "error" }, `event stream stopped: ${error.message}`));
  }
  if (!ctx.signal.aborted) reload();
}
