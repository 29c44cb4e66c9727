// Audit: the tenant's audit trail (GET /v1/audit/events): admissions, denials, key and team changes, breaker
// actions, budget events; metadata only.
import { api } from "../api.js";
import { h, put, fmt, badge, table, problem } from "../dom.js";

/** An event's metadata as "name: value" pairs that wrap. */
function details(detail) {
  return h("div", { class: "detail small" }, Object.entries(detail || {}).map(([k, v]) => h("span", { class: "pair" },
    h("span", { class: "muted" }, k + ": "), typeof v === "object" && v !== null ? JSON.stringify(v) : String(v))));
}

export function auditPage(root, ctx) {
  const list = h("div", { id: "audit-list" });
  const type = h("input", { name: "type", placeholder: "e.g. denied,key_created", autocomplete: "off" });
  const requestId = h("input", { name: "request_id", placeholder: "req_…", autocomplete: "off" });
  const form = h("form", { class: "filters", onsubmit: (ev) => { ev.preventDefault(); load(); } },
    h("label", {}, "Types", type), h("label", {}, "Request", requestId), h("button", { type: "submit" }, "Filter"));
  const load = async () => {
    try {
      const page = await api("/v1/audit/events", { query: { type: type.value.trim(), request_id: requestId.value.trim(), limit: 100 } });
      const rows = page.data || [];
      put(list, table([{ label: "Time", cls: "nowrap" }, { label: "Type" }, { label: "Team" }, { label: "Key" },
        { label: "Request" }, { label: "Actor" }, { label: "Detail" }],
      rows.map((e) => [fmt.time(e.ts), badge(e.type, "neutral"), e.team || "—", h("span", { class: "mono" }, e.key_id || "—"),
        e.request_id ? h("a", { href: "#/requests/" + encodeURIComponent(e.request_id), class: "mono" }, e.request_id) : "—",
        h("span", { class: "mono" }, e.actor || "—"), details(e.detail)]),
      (i) => ({ "data-type": rows[i].type, "data-request-id": rows[i].request_id || "" })));
    } catch (err) {
      put(list, problem(err));
    }
  };
  put(root, h("h1", {}, "Audit trail"), form, list);
  ctx.poll(load, 5000);
}
