// Charts drawn as SVG elements (no chart library): a line chart over time and a budget bar.
import { h, s, fmt } from "./dom.js";

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/**
 * A line chart: lines = [{name, points: [[t (epoch s), value], ...]}]; format(value) labels the y axis.
 * Returns a figure with the SVG and a legend.
 */
export function lineChart(lines, { width = 1200, height = 220, format = fmt.num, label = "" } = {}) {
  const pad = { l: 92, r: 16, t: 10, b: 24 };
  const all = lines.flatMap((l) => l.points);
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label,
  });
  if (all.length === 0) {
    svg.appendChild(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "axis" }, "no data yet"));
    return h("figure", { class: "chart-box" }, svg);
  }
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]));
  const ymax = niceMax(Math.max(...all.map((p) => p[1] || 0)));
  const x = (t) => pad.l + (t1 === t0 ? 0.5 : (t - t0) / (t1 - t0)) * (width - pad.l - pad.r);
  const y = (v) => pad.t + (1 - (v || 0) / ymax) * (height - pad.t - pad.b);
  for (let i = 0; i <= 4; i++) {
    const v = (ymax * i) / 4;
    svg.appendChild(s("line", { x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v), class: "grid" }));
    svg.appendChild(s("text", { x: pad.l - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, format(v)));
  }
  const when = (t) => new Date(t * 1000).toISOString().slice(t1 - t0 > 86400 ? 5 : 11, 16).replace("T", " ") + "Z";
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    svg.appendChild(s("text", { x: x(t), y: height - 6, "text-anchor": anchor, class: "axis" }, when(t)));
  }
  lines.forEach((line, i) => {
    const pts = [...line.points].sort((a, b) => a[0] - b[0]);
    const color = PALETTE[i % PALETTE.length];
    if (pts.length === 1) {
      svg.appendChild(s("circle", { cx: x(pts[0][0]), cy: y(pts[0][1]), r: 3, fill: color }));
    } else {
      svg.appendChild(s("polyline", {
        points: pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "),
        fill: "none", stroke: color, "stroke-width": 2, "vector-effect": "non-scaling-stroke",
      }));
    }
  });
  const legend = h("figcaption", { class: "legend" }, lines.map((line, i) => h("span", {},
    h("i", { class: "swatch", style: { background: PALETTE[i % PALETTE.length] } }), line.name)));
  return h("figure", { class: "chart-box" }, svg, legend);
}

/**
 * The series of a /v1/stats answer as lines, one per key (the group; "all" without group_by), with every
 * bucket of the window present (a bucket without requests has no row: it is drawn as 0). value(row) is plotted.
 */
export function linesOf(stats, stepS, value, fallbackName = "all") {
  const buckets = Math.max(1, Math.ceil((stats.until - stats.since) / stepS));
  const byKey = new Map();
  for (const row of stats.series || []) {
    const name = row.key ?? fallbackName;
    if (!byKey.has(name)) byKey.set(name, new Array(buckets).fill(0));
    const k = Math.min(buckets - 1, Math.max(0, Math.round((row.t - stats.since) / stepS)));
    byKey.get(name)[k] += value(row) || 0;
  }
  return [...byKey.entries()].map(([name, values]) => ({
    name, points: values.map((v, k) => [stats.since + k * stepS, v]),
  }));
}

/**
 * A budget bar: spent (solid) and reserved (hatched) against the limit; role=progressbar for assistive
 * technology, aria-valuenow = spent in USD.
 */
export function budgetBar(label, period) {
  const limit = period.limit_usd;
  const spent = period.spent_usd || 0;
  const reserved = period.reserved_usd || 0;
  const share = limit ? Math.min(1, spent / limit) : 0;
  const held = limit ? Math.min(1 - share, reserved / limit) : 0;
  const level = !limit ? "none" : share >= 0.95 ? "bad" : share >= 0.8 ? "warn" : "ok";
  const bar = h("div", {
    class: "bar " + level, role: "progressbar", "aria-label": label,
    "aria-valuemin": 0, "aria-valuemax": limit ?? "", "aria-valuenow": spent,
    "data-spent": spent, "data-limit": limit ?? "",
  },
  h("div", { class: "fill", style: { width: (share * 100).toFixed(3) + "%" } }),
  h("div", { class: "held", style: { width: (held * 100).toFixed(3) + "%" } }));
  const text = limit
    ? `${fmt.usd(spent)} of ${fmt.usd(limit)} (${fmt.pct(spent / limit)})` + (reserved ? ` · ${fmt.usd(reserved)} reserved` : "")
    : `${fmt.usd(spent)} spent · no limit` + (reserved ? ` · ${fmt.usd(reserved)} reserved` : "");
  return h("div", { class: "budget" },
    h("div", { class: "budget-head" }, h("strong", {}, label), h("span", { class: "budget-text" }, text)),
    bar,
    h("div", { class: "muted small" }, `period ${period.period ?? ""} · resets ${period.resets_at ?? "—"}`));
}
