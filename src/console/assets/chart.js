// Line charts drawn as inline SVG from the admin API's usage series: one line per team or
// model, every bucket of the range on the x axis (buckets without rows count 0), a legend with
// each line's total. No library: a handful of SVG elements.

const NS = "http://www.w3.org/2000/svg";
const W = 760;
const H = 240;
const PAD = { left: 64, right: 16, top: 12, bottom: 28 };
const COLORS = ["#0f766e", "#2563eb", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#65a30d", "#db2777"];

function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : String(c));
  return el;
}

/// Round `max` up to a value that makes tidy gridlines.
function niceMax(max) {
  if (max <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= max) return m * p;
  return 10 * p;
}

function tickLabel(t, step) {
  const iso = new Date(t).toISOString();
  return step >= 86400000 ? iso.slice(5, 10) : iso.slice(11, 16);
}

/// `series`: `[{ key, points: [{ t, ...totals }] }]`; `value(point)` picks the plotted figure;
/// `from`/`to`/`step` (ms) the buckets; `format(v)` the axis and legend text.
export function lineChart({ id, title, series, value, from, to, step, format }) {
  const buckets = [];
  for (let t = Math.floor(from / step) * step; t < to; t += step) buckets.push(t);
  const lines = series.map((sr, i) => {
    const byT = new Map(sr.points.map((p) => [p.t, value(p)]));
    const ys = buckets.map((t) => byT.get(t) || 0);
    return { key: sr.key, ys, total: ys.reduce((a, b) => a + b, 0), color: COLORS[i % COLORS.length] };
  });
  const max = niceMax(Math.max(0, ...lines.flatMap((l) => l.ys)));
  const iw = W - PAD.left - PAD.right;
  const ih = H - PAD.top - PAD.bottom;
  const x = (i) => PAD.left + (buckets.length <= 1 ? iw / 2 : (i * iw) / (buckets.length - 1));
  const y = (v) => PAD.top + ih - (v / max) * ih;

  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": title });
  for (let g = 0; g <= 4; g++) {
    const v = (max * g) / 4;
    svg.append(s("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(s("text", { x: PAD.left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, format(v)));
  }
  const every = Math.max(1, Math.ceil(buckets.length / 8));
  buckets.forEach((t, i) => {
    if (i % every === 0)
      svg.append(s("text", { x: x(i), y: H - 8, class: "axis", "text-anchor": "middle" }, tickLabel(t, step)));
  });
  for (const l of lines) {
    const d = l.ys.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.append(
      s("path", { d, class: "series", stroke: l.color, "data-series": l.key, "data-total": l.total }),
    );
    l.ys.forEach((v, i) => {
      if (v > 0) {
        const dot = s("circle", { cx: x(i), cy: y(v), r: 3, fill: l.color, class: "point" });
        dot.append(s("title", {}, `${l.key} ${tickLabel(buckets[i], step)}: ${format(v)}`));
        svg.append(dot);
      }
    });
  }
  const legend = document.createElement("figcaption");
  legend.className = "legend";
  if (!lines.length) legend.textContent = "No requests in this range.";
  for (const l of lines) {
    const item = document.createElement("span");
    item.className = "legend-item";
    const sw = s("svg", { width: 12, height: 12, class: "swatch" }, s("rect", { width: 12, height: 12, rx: 3, fill: l.color }));
    item.append(sw, ` ${l.key}: ${format(l.total)}`);
    legend.append(item);
  }
  const fig = document.createElement("figure");
  fig.className = "chart";
  fig.dataset.chart = id;
  const h = document.createElement("h2");
  h.textContent = title;
  fig.append(h, svg, legend);
  return fig;
}
