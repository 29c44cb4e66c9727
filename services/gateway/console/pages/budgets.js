// Budgets & cost: each team's spend against its daily and monthly limits (GET /v1/budgets/{team}), with the
// alerts sent; spend over time per model and per team and the savings from routing (GET /v1/stats).
import { api } from "../api.js";
import { h, put, fmt, table, problem, facts } from "../dom.js";
import { budgetBar, lineChart, linesOf } from "../charts.js";

async function teamNames(me) {
  if (me.role !== "admin") return [me.team]; // a viewer reads its own team's budget only
  const teams = await api("/v1/admin/teams");
  return (teams.data || []).map((t) => t.name);
}

function teamCard(b) {
  const p = b.periods || {};
  const alerts = b.alerts_sent || [];
  return h("article", { class: "card", "data-team": b.team },
    h("h3", {}, b.team),
    p.daily ? budgetBar("Daily", p.daily) : null,
    p.monthly ? budgetBar("Monthly", p.monthly) : null,
    h("div", { class: "small" }, `${fmt.num(b.open_reservations || 0)} open reservations`),
    alerts.length ? h("div", { class: "alerts", role: "alert" }, "Alerts sent: ",
      alerts.map((a) => (typeof a === "object" ? JSON.stringify(a) : String(a))).join(", ")) : null,
    (b.keys || []).length ? h("div", {}, h("h4", {}, "Keys with their own budget"),
      (b.keys || []).map((k) => h("div", {}, h("div", { class: "mono small" }, k.display),
        k.periods && k.periods.daily ? budgetBar("Daily", k.periods.daily) : null))) : null);
}

export function budgetsPage(root, ctx) {
  const cards = h("div", { class: "cards", id: "budget-cards" });
  const byModel = h("div");
  const byTeam = h("div");
  const savings = h("div", { id: "savings" });
  const windowSel = h("select", { name: "window", "aria-label": "chart window" },
    [["24h", "1h", 3600], ["7d", "6h", 21600], ["30d", "1d", 86400]].map(([w, i, step]) => h("option", {
      value: w, "data-interval": i, "data-step": step,
    }, "last " + w)));
  put(root, h("h1", {}, "Budgets & cost"),
    h("section", {}, h("h2", {}, "Spend against limits"), cards),
    h("section", {}, h("h2", {}, "Spend over time ", windowSel),
      h("h3", {}, "Per model"), byModel,
      ctx.me.role === "viewer" ? null : [h("h3", {}, "Per team"), byTeam]),
    h("section", {}, h("h2", {}, "Savings from routing"), savings));

  const loadBudgets = async () => {
    try {
      const names = await teamNames(ctx.me);
      const budgets = await Promise.all(names.map((n) => api("/v1/budgets/" + encodeURIComponent(n))));
      put(cards, budgets.map(teamCard));
    } catch (err) {
      put(cards, problem(err));
    }
  };
  const loadCharts = async () => {
    const win = windowSel.value;
    const { interval, step } = windowSel.selectedOptions[0].dataset;
    try {
      const [models, teams, month] = await Promise.all([
        api("/v1/stats", { query: { window: win, interval, group_by: "model" } }),
        ctx.me.role === "viewer" ? null : api("/v1/stats", { query: { window: win, interval, group_by: "team" } }),
        api("/v1/stats", { query: { window: "30d", group_by: "model" } }),
      ]);
      put(byModel, lineChart(linesOf(models, Number(step), (r) => r.cost_usd), { format: fmt.usd, label: "cost per model" }));
      if (teams) put(byTeam, lineChart(linesOf(teams, Number(step), (r) => r.cost_usd), { format: fmt.usd, label: "cost per team" }));
      const t = month.totals;
      put(savings,
        facts([["Spent, last 30 days", fmt.usd(t.cost_usd)],
          ["Saved vs the most expensive eligible model", h("strong", {}, fmt.usd(t.savings_usd))],
          ["Requests served by a fallback", fmt.num(t.fallbacks)]]),
        table([{ label: "Model" }, { label: "Requests", cls: "num" }, { label: "Cost", cls: "num" }, { label: "Saved", cls: "num" }],
          [...(month.groups || [])].sort((a, b) => b.cost_usd - a.cost_usd)
            .map((g) => [g.key, fmt.num(g.requests), fmt.usd(g.cost_usd), fmt.usd(g.savings_usd)])));
    } catch (err) {
      put(byModel, problem(err));
    }
  };
  windowSel.addEventListener("change", loadCharts);
  ctx.poll(loadBudgets, 2000);
  ctx.poll(loadCharts, 10000);
}
