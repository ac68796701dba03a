// Line charts as plain SVG polylines: no chart library, nothing to vendor.

import { fmtNumber, h, svg } from "./dom.js";

const COLORS = ["#2f6fde", "#e0602b", "#1f9d6b", "#a04fd0", "#c9a400", "#d23c6b", "#5a6b7d"];
const W = 560;
const H = 220;
const PAD = { left: 52, right: 12, top: 12, bottom: 30 };

function extent(values) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (lo === hi) {
    lo -= Math.abs(lo) * 0.1 || 0.5;
    hi += Math.abs(hi) * 0.1 || 0.5;
  }
  return [lo, hi];
}

function ticks(lo, hi, count) {
  const out = [];
  for (let i = 0; i <= count; i += 1) out.push(lo + ((hi - lo) * i) / count);
  return out;
}

function axes(scaleX, scaleY, xs, ys, xLabel) {
  const group = svg("g", { class: "axes" });
  for (const y of ticks(ys[0], ys[1], 4)) {
    const py = scaleY(y);
    group.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: py, y2: py, class: "gridline" }));
    group.append(svg("text", { x: PAD.left - 6, y: py + 4, "text-anchor": "end" }, fmtNumber(y, 3)));
  }
  for (const x of ticks(xs[0], xs[1], 4)) {
    const px = scaleX(x);
    group.append(svg("text", { x: px, y: H - PAD.bottom + 16, "text-anchor": "middle" }, fmtNumber(Math.round(x * 100) / 100, 4)));
  }
  group.append(svg("text", { x: W - PAD.right, y: H - 2, "text-anchor": "end", class: "axis-label" }, xLabel));
  return group;
}

// series: [{name, points: [[x, y], ...]}]. Returns a <figure> with the SVG and a legend; each
// polyline carries data-series and data-points so that tests and people can read it back.
export function lineChart(series, { title, xLabel = "step", id } = {}) {
  const drawn = series.filter((s) => s.points.length);
  const figure = h("figure", { class: "chart", id });
  if (title) figure.append(h("figcaption", null, title));
  if (!drawn.length) {
    figure.append(h("p", { class: "muted" }, "waiting for data…"));
    return figure;
  }
  const allX = drawn.flatMap((s) => s.points.map((p) => p[0]));
  const allY = drawn.flatMap((s) => s.points.map((p) => p[1]));
  const xs = extent(allX);
  const ys = extent(allY);
  const scaleX = (x) => PAD.left + ((x - xs[0]) / (xs[1] - xs[0])) * (W - PAD.left - PAD.right);
  const scaleY = (y) => H - PAD.bottom - ((y - ys[0]) / (ys[1] - ys[0])) * (H - PAD.top - PAD.bottom);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": title || "chart" });
  chart.append(axes(scaleX, scaleY, xs, ys, xLabel));
  const legend = h("div", { class: "legend" });
  drawn.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const points = s.points.map(([x, y]) => `${scaleX(x).toFixed(1)},${scaleY(y).toFixed(1)}`).join(" ");
    chart.append(
      svg("polyline", {
        points,
        fill: "none",
        stroke: color,
        "stroke-width": 2,
        "stroke-linejoin": "round",
        dataset: { series: s.name, points: String(s.points.length) },
      }),
    );
    if (s.points.length <= 40) {
      for (const [x, y] of s.points) chart.append(svg("circle", { cx: scaleX(x), cy: scaleY(y), r: 2.5, fill: color }));
    }
    const last = s.points[s.points.length - 1];
    legend.append(h("span", { class: "legend-item" }, h("i", { class: "swatch", style: { background: color } }), `${s.name} ${fmtNumber(last[1], 4)}`));
  });
  figure.append(chart, legend);
  return figure;
}

// A small trend line without axes, for the metrics cards.
export function sparkline(values, { width = 120, height = 28 } = {}) {
  const box = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "spark", "aria-hidden": "true" });
  if (values.length < 2) return box;
  const [lo, hi] = extent(values);
  const step = width / (values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - ((v - lo) / (hi - lo)) * (height - 4)).toFixed(1)}`);
  box.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: COLORS[0], "stroke-width": 1.5 }));
  return box;
}
