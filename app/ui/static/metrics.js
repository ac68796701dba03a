// The metrics panel: requests/s, latency percentiles and resident bytes from
// GET /v1/metrics/summary, polled while the panel is on screen.

import { api } from "./api.js";
import { sparkline } from "./charts.js";
import { errorNote, fmtBytes, fmtNumber, fmtSeconds, h, refusedNote, replace, section, table } from "./dom.js";

const history = []; // requests/s of the last polls, for the sparkline

function card(label, value, extra, id) {
  return h("div", { class: "stat", id }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value), extra || null);
}

function cards(summary) {
  const lat = summary.latency_seconds;
  const device = summary.resident.device || { bytes: 0, adapters: 0 };
  const cpu = summary.resident.cpu || { bytes: 0, adapters: 0 };
  return h(
    "div",
    { class: "stats", id: "metrics-cards" },
    card("requests/s", fmtNumber(summary.requests_per_second, 3), sparkline(history), "stat-rps"),
    card("latency p50", fmtSeconds(lat.p50), null, "stat-p50"),
    card("latency p90", fmtSeconds(lat.p90)),
    card("latency p99", fmtSeconds(lat.p99)),
    card("resident on device", fmtBytes(device.bytes), h("div", { class: "muted small" }, `${device.adapters} adapters`), "stat-device"),
    card("resident on CPU", fmtBytes(cpu.bytes), h("div", { class: "muted small" }, `${cpu.adapters} adapters`)),
    card("requests", String(summary.requests_total), h("div", { class: "muted small" }, `${summary.errors_total} errors · queue ${summary.queue_rows}`)),
  );
}

function perAdapter(summary) {
  return table(
    ["adapter", "requests", "errors", "requests/s", "p50", "p90", "p99"],
    summary.adapters.map((a) => [a.adapter, String(a.requests_total), String(a.errors_total), fmtNumber(a.requests_per_second, 3), fmtSeconds(a.latency_seconds.p50), fmtSeconds(a.latency_seconds.p90), fmtSeconds(a.latency_seconds.p99)]),
    { empty: "no requests yet", id: "metrics-adapters" },
  );
}

// The cards (and, with `full`, the per-adapter table); refreshed every 2 s.
export function metricsCard(ctx, { full = false } = {}) {
  const body = h("div", null, h("p", { class: "muted" }, "loading…"));
  const refresh = async () => {
    try {
      const summary = await api("/v1/metrics/summary", { scope: "any", signal: ctx.signal });
      history.push(summary.requests_per_second);
      if (history.length > 60) history.shift();
      const window = h("p", { class: "muted small" }, `rates and percentiles over the last ${fmtSeconds(summary.window_seconds)} · up ${fmtSeconds(summary.uptime_seconds)}`);
      const rejected = Object.entries(summary.rejected);
      replace(
        body,
        cards(summary),
        window,
        full ? perAdapter(summary) : null,
        full && rejected.length ? h("p", null, "refused before running: ", rejected.map(([reason, n]) => `${reason} ${n}`).join(", ")) : null,
      );
    } catch (error) {
      if (!ctx.signal.aborted) replace(body, error.status === 403 ? refusedNote(error) : errorNote(error));
    }
  };
  refresh();
  ctx.every(2000, refresh);
  return section("Metrics", body);
}

export function metricsPage(root, ctx) {
  replace(root, metricsCard(ctx, { full: true }));
}
