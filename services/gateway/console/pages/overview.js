// Overview: live figures of the last hour from GET /v1/stats, refreshed every two seconds.
import { api } from "../api.js";
import { h, put, fmt, table, problem } from "../dom.js";
import { lineChart, linesOf } from "../charts.js";

function tile(label, value, id, sub) {
  return h("div", { class: "tile", id }, h("div", { class: "tile-label" }, label),
    h("div", { class: "tile-value" }, value), sub ? h("div", { class: "tile-sub" }, sub) : null);
}

/** Requests per minute over the last five one-minute buckets of the series (or the window's average). */
function ratePerMinute(stats) {
  const series = stats.series || [];
  const until = stats.until;
  const recent = series.filter((row) => row.t > until - 300);
  if (recent.length) return recent.reduce((n, row) => n + row.requests, 0) / 5;
  return stats.totals.requests / Math.max(1, (stats.until - stats.since) / 60);
}

export function overview(root, ctx) {
  const tiles = h("div", { class: "tiles" });
  const chart = h("div");
  const top = h("div");
  const status = h("div", { class: "muted small", id: "updated" });
  put(root,
    h("h1", {}, "Overview"), status, tiles,
    h("section", {}, h("h2", {}, "Requests and errors per minute, last hour"), chart),
    h("section", {}, h("h2", {}, "Top models, last 24 hours"), top));
  ctx.poll(async () => {
    let hour, day;
    try {
      [hour, day] = await Promise.all([
        api("/v1/stats", { query: { window: "1h", interval: "1m" } }),
        api("/v1/stats", { query: { window: "24h", group_by: "model" } }),
      ]);
    } catch (err) {
      put(tiles, problem(err));
      return;
    }
    const t = hour.totals;
    // Failed (or expired) among those that ran to an end; denied and cancelled requests are policy and choice.
    const errors = t.success_rate === null || t.success_rate === undefined ? null : 1 - t.success_rate;
    put(tiles,
      tile("Request rate", ratePerMinute(hour).toFixed(1) + " /min", "tile-rate", `${fmt.num(t.requests)} in the last hour`),
      tile("Error rate", fmt.pct(errors), "tile-errors",
        `${fmt.num(t.failed)} failed · ${fmt.num(t.denied || 0)} denied · ${fmt.num(t.in_progress || 0)} running`),
      tile("Latency P50 / P95 / P99", `${fmt.ms(t.latency_ms.p50)} / ${fmt.ms(t.latency_ms.p95)} / ${fmt.ms(t.latency_ms.p99)}`,
        "tile-latency", hour.percentile_sample > 1 ? `over every ${hour.percentile_sample}th request` : "last hour"),
      tile("Time to first token P50 / P95", `${fmt.ms(t.ttft_ms.p50)} / ${fmt.ms(t.ttft_ms.p95)}`, "tile-ttft"),
      tile("Spend today (UTC)", fmt.usd(hour.totals.spend_today_usd ?? day.totals.spend_today_usd), "tile-spend",
        `${fmt.usd(t.cost_usd)} in the last hour`),
      tile("Fallbacks", fmt.num(t.fallbacks), "tile-fallbacks", `saved ${fmt.usd(t.savings_usd)} by routing`));
    put(chart, lineChart([
      { name: "requests", points: linesOf(hour, 60, (r) => r.requests)[0]?.points || [] },
      { name: "errors", points: linesOf(hour, 60, (r) => r.errors)[0]?.points || [] },
    ], { label: "requests and errors per minute" }));
    const groups = [...(day.groups || [])].sort((a, b) => b.requests - a.requests).slice(0, 8);
    put(top, table(
      [{ label: "Model" }, { label: "Requests", cls: "num" }, { label: "Success", cls: "num" },
        { label: "P95", cls: "num" }, { label: "Tokens", cls: "num" }, { label: "Cost", cls: "num" }],
      groups.map((g) => [g.key, fmt.num(g.requests), fmt.pct(g.success_rate), fmt.ms(g.latency_ms.p95),
        fmt.num(g.usage.total_tokens), fmt.usd(g.cost_usd)])));
    put(status, "Live · updated " + new Date().toISOString().slice(11, 19) + "Z");
  }, 2000);
}
