// Requests: the live list (GET /v1/requests, newest first, filters, cursor pages) and one request's page
// (GET /v1/requests/{id}: attempts, routing explanation, admission, budget events; the job if it is one).
import { api } from "../api.js";
import { h, put, fmt, badge, facts, table, problem } from "../dom.js";

const OUTCOMES = ["", "succeeded", "failed", "denied", "cancelled", "expired", "in_progress"];
const WINDOWS = [["", "any time"], ["900", "last 15 min"], ["3600", "last hour"], ["86400", "last 24 h"],
  ["604800", "last 7 days"]];

function select(name, options, label) {
  return h("label", {}, label, h("select", { name },
    options.map((o) => (Array.isArray(o) ? h("option", { value: o[0] }, o[1]) : h("option", { value: o }, o || "any")))));
}

function field(name, label, placeholder) {
  return h("label", {}, label, h("input", { name, placeholder: placeholder || "", autocomplete: "off" }));
}

/** The filter form shared by the requests and jobs lists; onChange(query) on every change. */
export function filterForm(me, onChange, { job = false } = {}) {
  const form = h("form", { class: "filters", onsubmit: (ev) => ev.preventDefault() },
    me.role === "viewer" ? null : field("team", "Team"),
    field("model", "Model"), field("provider", "Provider"),
    job ? null : select("outcome", OUTCOMES, "Outcome"),
    job ? null : select("degraded", [["", "any"], ["true", "yes"], ["false", "no"]], "Degraded"),
    job ? null : select("pii", [["", "any"], ["true", "yes"], ["false", "no"]], "PII"),
    select("window", WINDOWS, "Time"));
  const read = () => {
    const q = {};
    for (const el of form.elements) if (el.name && el.value) q[el.name] = el.value.trim();
    if (q.window) {
      q.since = (Date.now() / 1000 - Number(q.window)).toFixed(0);
      delete q.window;
    }
    if (job) q.job = "true";
    return q;
  };
  let debounce = null;
  const changed = () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => onChange(read()), 250);
  };
  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  return { form, read };
}

function modelCell(row) {
  if (!row.served_model || row.served_model === row.requested_model) return row.requested_model;
  return [row.requested_model, h("span", { class: "muted" }, " → "), row.served_model];
}

function rowsTable(rows, linkTo) {
  return table(
    [{ label: "Time" }, { label: "Request" }, { label: "Team" }, { label: "Model", cls: "nowrap" }, { label: "Attempts" },
      { label: "Outcome" }, { label: "Latency", cls: "num" }, { label: "TTFT", cls: "num" },
      { label: "Tokens", cls: "num" }, { label: "Cost", cls: "num" }],
    rows.map((r) => [
      h("span", { title: fmt.time(r.created) }, fmt.clock(r.created)),
      h("a", { href: linkTo(r.id), class: "mono" }, r.id),
      r.team, modelCell(r),
      h("span", { class: "chain" }, r.attempt_chain || "—"),
      [badge(r.outcome), r.degraded ? badge("degraded", "warn") : null,
        r.pii && Object.keys(r.pii).length ? badge("PII", "neutral") : null],
      fmt.ms(r.latency_ms), fmt.ms(r.ttft_ms), fmt.num(r.usage && r.usage.total_tokens), fmt.usd(r.cost_usd),
    ]),
    (i) => ({ "data-request-id": rows[i].id, "data-outcome": rows[i].outcome }));
}

/** A live list of /v1/requests rows: the first page refreshes every two seconds; older pages hold still. */
export function liveList(root, ctx, { title, job = false, linkTo }) {
  const list = h("div", { id: "request-list" });
  const pager = h("div", { class: "pager" });
  const status = h("div", { class: "muted small", id: "updated" });
  let query = {};
  let cursors = []; // the cursors of the pages before this one (empty: the live first page)
  let cursor = null;
  let latest = 0; // an answer to an older question (filters since changed) is dropped, not drawn over a newer one
  const load = async () => {
    const asked = ++latest;
    let page;
    try {
      page = await api("/v1/requests", { query: { ...query, limit: 50, cursor } });
    } catch (err) {
      if (asked === latest) put(list, problem(err));
      return;
    }
    if (asked !== latest) return;
    put(list, rowsTable(page.data, linkTo));
    put(pager,
      cursors.length ? h("button", { onclick: () => { cursor = null; cursors = []; load(); } }, "← Newest") : null,
      page.has_more && page.next_cursor ? h("button", {
        onclick: () => { cursors.push(cursor); cursor = page.next_cursor; load(); },
      }, "Older →") : null);
    put(status, cursor ? "Older page (not live)" : "Live · updated " + new Date().toISOString().slice(11, 19) + "Z");
  };
  const filters = filterForm(ctx.me, (q) => { query = q; cursor = null; cursors = []; load(); }, { job });
  query = filters.read(); // from the start: the jobs list asks for jobs only
  put(root, h("h1", {}, title), filters.form, status, list, pager);
  ctx.poll(async () => { if (!cursor) await load(); }, 2000);
}

export function requestsPage(root, ctx) {
  liveList(root, ctx, { title: "Requests", linkTo: (id) => "#/requests/" + encodeURIComponent(id) });
}

function attemptsTable(attempts) {
  return table(
    [{ label: "#" }, { label: "Kind" }, { label: "Deployment" }, { label: "Outcome" }, { label: "Latency", cls: "num" },
      { label: "TTFT", cls: "num" }, { label: "Tokens in / out", cls: "num" }, { label: "Cost", cls: "num" },
      { label: "Why / error" }],
    attempts.map((a) => [
      String(a.attempt) + (a.delivery ? `.${a.delivery}` : ""),
      a.kind || "—",
      h("span", { class: "mono" }, a.deployment || `${a.provider}/${a.model}`),
      [badge(a.outcome), a.degraded ? badge("degraded", "warn") : null],
      fmt.ms(a.latency_ms), fmt.ms(a.ttft_ms),
      `${fmt.num(a.prompt_tokens)} / ${fmt.num(a.completion_tokens)}`,
      h("span", { class: "attempt-cost" }, fmt.usd(a.cost_usd)),
      h("div", {}, a.reason ? h("div", {}, a.reason) : null,
        a.error ? h("div", { class: "error-text" }, `${a.error.code || ""}: ${a.error.message || ""}`) : null,
        a.cache ? h("div", { class: "muted" }, "cache: " + JSON.stringify(a.cache)) : null,
        a.detail ? h("div", { class: "muted small" }, "detail (operator): " + JSON.stringify(a.detail)) : null),
    ]),
    (i) => ({ class: "attempt", "data-outcome": attempts[i].outcome, "data-attempt": attempts[i].attempt }));
}

// The estimate's field is est_cost_usd in older traces, estimated_cost_usd in newer ones.
const estCost = (o) => o.estimated_cost_usd ?? o.est_cost_usd;

function routingSection(routing) {
  if (!routing) return h("p", { class: "muted" }, "No routing decision recorded (denied before routing, or a cache hit).");
  const cands = routing.candidates || [];
  return h("div", {},
    facts([
      ["Mode", routing.mode], ["Requested", routing.requested], ["Strategy", routing.strategy],
      ["Balancing", routing.balancing], ["Selected", routing.selected], ["Reason", routing.reason],
      ["Task", routing.task ? `${routing.task} (${routing.task_source || "?"})` : undefined],
      ["Preference", routing.preference || undefined],
      ["Estimated cost", fmt.usd(routing.estimated_cost_usd)],
      ["Baseline (most expensive eligible)", routing.baseline
        ? `${routing.baseline.model}: ${fmt.usd(estCost(routing.baseline))}` : undefined],
      ["Last resort", routing.last_resort || undefined],
      ["Seed", routing.seed || undefined],
      ["Decided by", routing.decided_by ? `${routing.decided_by} at ${fmt.time(routing.decided_at)}` : undefined],
    ]),
    h("h3", {}, "Candidates"),
    table(
      [{ label: "Rank", cls: "num" }, { label: "Deployment" }, { label: "Score", cls: "num" }, { label: "Cost", cls: "num" },
        { label: "Latency", cls: "num" }, { label: "Quality", cls: "num" }, { label: "Avail.", cls: "num" },
        { label: "Est. cost", cls: "num" }, { label: "Est. latency", cls: "num" }, { label: "Error rate", cls: "num" },
        { label: "Breaker" }, { label: "Excluded" }],
      cands.map((c) => {
        const sc = c.scores || {};
        return [c.rank ?? "—", h("span", { class: "mono" }, c.deployment), fmt.score(c.score), fmt.score(sc.cost),
          fmt.score(sc.latency), fmt.score(sc.quality), fmt.score(sc.availability), fmt.usd(estCost(c)),
          fmt.ms(c.latency_ms), fmt.pct(c.error_rate), badge(c.breaker || "closed"),
          c.excluded ? [badge(c.excluded, "bad"), " ", c.detail || ""] : "—"];
      }),
      (i) => ({ class: "candidate", "data-excluded": cands[i].excluded || "" })));
}

function admissionSection(adm) {
  if (!adm) return h("p", { class: "muted" }, "No admission decision recorded yet.");
  const pii = adm.pii && Object.keys(adm.pii).length
    ? h("ul", { class: "inline" }, Object.entries(adm.pii).map(([kind, n]) => h("li", {}, `${kind} × ${n}`)))
    : "none found";
  const known = new Set(["decision", "reason", "ts", "data_class", "pii", "pii_action", "risk_score", "risk_action",
    "risk_signals", "reserved_usd"]);
  const extra = Object.entries(adm).filter(([k]) => !known.has(k));
  return facts([
    ["Decision", badge(adm.decision)], ["Reason", adm.reason || undefined], ["Data class", adm.data_class],
    ["PII", pii], ["PII action", adm.pii_action],
    ["Risk score", adm.risk_score === undefined ? undefined : fmt.score(adm.risk_score)],
    ["Risk signals", adm.risk_signals && adm.risk_signals.length ? adm.risk_signals.join(", ") : "none"],
    ["Risk action", adm.risk_action],
    ["Budget reserved", fmt.usd(adm.reserved_usd)],
    ...extra.map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]),
    ["Decided at", fmt.time(adm.ts)],
  ]);
}

function budgetSection(events) {
  if (!events || !events.length) return h("p", { class: "muted" }, "No budget events for this request.");
  return table([{ label: "Time" }, { label: "Event" }, { label: "Amount", cls: "num" }, { label: "Detail" }],
    events.map((e) => {
      const { event, amount_usd, ts, ...rest } = e;
      return [fmt.clock(ts), event, fmt.usd(amount_usd), Object.keys(rest).length ? JSON.stringify(rest) : ""];
    }));
}

const OPEN = new Set(["requested", "admitted", "in_progress"]);

export function requestPage(root, ctx, id) {
  const body = h("div", { id: "request-detail" });
  const jobBox = h("div");
  put(root, h("p", {}, h("a", { href: "#/requests" }, "← Requests")), h("h1", { class: "mono" }, id), body);
  let settled = 0; // polls since the request ended: late audit rows (a settlement) still arrive for a moment
  const stop = ctx.poll(async () => {
    let t;
    try {
      t = await api("/v1/requests/" + encodeURIComponent(id));
    } catch (err) {
      put(body, problem(err.status === 404 ? { message: "No such request (yet): its trace appears once audit has it." } : err));
      return;
    }
    const attempts = t.attempts || [];
    put(body,
      facts([
        ["Status", [badge(t.status), t.degraded ? badge("degraded", "warn") : null]],
        ["Model", t.model], ["Team", t.team],
        ["Received", fmt.time(t.created_at)], ["Completed", fmt.time(t.completed_at)],
        ["Latency", fmt.ms(t.latency_ms)],
        ["Tokens", t.usage ? `${fmt.num(t.usage.prompt_tokens)} in / ${fmt.num(t.usage.completion_tokens)} out` : undefined],
        ["Cost", h("span", { id: "request-cost" }, fmt.usd(t.cost_usd))],
        ["Error", t.error ? `${t.error.code}: ${t.error.message}` : undefined],
        ["Prompt template", t.prompt ? `${t.prompt.id} v${t.prompt.version}` : undefined],
        ["Trace id", t.trace_id ? h("span", { class: "mono" }, t.trace_id) : undefined],
      ]),
      h("section", {}, h("h2", {}, "Attempts"),
        h("p", { class: "chain", id: "attempt-chain" }, attempts.map((a) => `${a.deployment || a.provider + "/" + a.model} ${a.outcome}`).join(" → ") || "—"),
        attemptsTable(attempts)),
      h("section", {}, h("h2", {}, "Routing"), routingSection(t.routing)),
      h("section", {}, h("h2", {}, "Admission"), admissionSection(t.admission)),
      h("section", {}, h("h2", {}, "Budget"), budgetSection(t.budget)),
      t.job ? h("section", {}, h("h2", {}, "Job"), jobBox) : null);
    if (t.job) {
      try {
        const job = await api("/v1/jobs/" + encodeURIComponent(id));
        put(jobBox, facts([["Status", badge(job.status)], ["Created", fmt.time(job.created_at)],
          ["Completed", fmt.time(job.completed_at)]]), h("a", { href: "#/jobs/" + encodeURIComponent(id) }, "Open the job →"));
      } catch (err) {
        put(jobBox, problem(err));
      }
    }
    if (!OPEN.has(t.status) && ++settled >= 4) stop(); // then a finished request's trace no longer changes
  }, 1500);
}
