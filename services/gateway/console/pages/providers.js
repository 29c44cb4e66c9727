// Providers: each deployment's health, breaker state and recent transitions, latency and error rate
// (GET /v1/providers/status, every three seconds); an operator key can force or reset a breaker.
import { api } from "../api.js";
import { h, put, fmt, badge, table, problem } from "../dom.js";

function health(row) {
  const state = row.breaker && row.breaker.state;
  if (state === "open" || state === "forced_open") return "down";
  if (state === "half_open" || row.error_rate >= 0.2) return "degraded";
  return "healthy";
}

function breakerCell(b) {
  if (!b) return "—";
  return h("div", {}, badge(b.state), b.enabled === false ? h("span", { class: "muted small" }, " (breaker off)") : null,
    b.reason ? h("div", { class: "muted small" }, b.reason) : null,
    b.since ? h("div", { class: "muted small" }, "since " + fmt.ago(b.since)) : null,
    b.retry_in_s && b.state === "open" ? h("div", { class: "muted small" }, `probe in ${b.retry_in_s.toFixed(1)} s`) : null);
}

function transitionsCell(row) {
  const list = row.transitions || [];
  if (!list.length) return h("span", { class: "muted" }, "—");
  return h("ul", { class: "transitions" }, list.slice(-5).reverse().map((t) => h("li", {},
    `${fmt.clock(t.ts ?? t.at)} ${t.from ?? ""}${t.from ? " → " : ""}${t.to ?? t.state ?? ""}` + (t.reason ? ` (${t.reason})` : ""))));
}

export function providersPage(root, ctx) {
  const note = h("div", { role: "status", class: "muted small" });
  const list = h("div", { id: "provider-list" });
  const events = h("div", { id: "breaker-events" });
  const operate = async (deployment, action) => {
    try {
      await api("/v1/providers/breaker", { method: "POST", body: { deployment, action } });
      put(note, `${action} applied to ${deployment}`);
      await load();
      setTimeout(loadEvents, 700); // the audit trail records the act a moment later
    } catch (err) {
      put(note, problem(err));
    }
  };
  const load = async () => {
    let status;
    try {
      status = await api("/v1/providers/status");
    } catch (err) {
      put(list, problem(err));
      return;
    }
    const rows = status.data || [];
    // Recent transitions per deployment, where the status carries them (else the breaker cell's "since" and the
    // breaker events below tell the story).
    const transitions = rows.some((r) => Array.isArray(r.transitions));
    const columns = [{ label: "Deployment" }, { label: "Health" }, { label: "Breaker" },
      transitions ? { label: "Recent transitions" } : null,
      { label: "Calls (window)", cls: "num" }, { label: "Error rate", cls: "num" }, { label: "Latency", cls: "num" },
      { label: "In flight", cls: "num" }].filter(Boolean);
    if (ctx.me.operator) columns.push({ label: "Operator" });
    put(list, table(columns, rows.map((r) => {
      const cells = [h("span", { class: "mono" }, r.deployment), badge(health(r)), breakerCell(r.breaker),
        ...(transitions ? [transitionsCell(r)] : []),
        r.window ? `${r.window.calls} (${r.window.failures} failed)` : "—",
        fmt.pct(r.error_rate), [fmt.ms(r.latency_ms), h("span", { class: "muted small" }, ` ${r.latency_source || ""}`)],
        fmt.num(r.in_flight)];
      if (ctx.me.operator) {
        cells.push(h("div", { class: "actions" }, [["force_open", "Force open"], ["force_closed", "Force closed"],
          ["reset", "Reset"]].map(([action, label]) => h("button", {
          class: "small", "data-action": action, onclick: () => operate(r.deployment, action),
        }, label))));
      }
      return cells;
    }), (i) => ({ "data-deployment": rows[i].deployment, "data-breaker": rows[i].breaker && rows[i].breaker.state })));
  };
  const loadEvents = async () => {
    try {
      const page = await api("/v1/audit/events", { query: { type: "breaker", limit: 20 } });
      const rows = page.data || [];
      put(events, table([{ label: "Time" }, { label: "Deployment" }, { label: "Action" }, { label: "By" }],
        rows.map((e) => {
          const d = e.detail || {};
          return [fmt.time(e.ts), h("span", { class: "mono" }, d.subject ?? d.deployment ?? "—"), d.action ?? "—",
            d.by ?? e.actor ?? "—"];
        }), (i) => ({ class: "breaker-event", "data-breaker-action": (rows[i].detail || {}).action })));
    } catch (err) {
      put(events, h("p", { class: "muted" }, "Breaker events are not available: " + err.message));
    }
  };
  put(root, h("h1", {}, "Providers"),
    ctx.me.operator ? h("p", { class: "muted" }, "A breaker applies to every tenant: forcing it is an operator's act.") : null,
    note, list, h("section", {}, h("h2", {}, "Recent breaker events"), events));
  ctx.poll(load, 3000);
  ctx.poll(loadEvents, 5000);
}
