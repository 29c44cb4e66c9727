// Admin (admin keys): API keys — create (the key is shown once), revoke, rotate — and team settings.
import { api } from "../api.js";
import { h, put, fmt, badge, table, problem } from "../dom.js";

// Every team setting (shared/state/teams.py TeamSettings): [field, label, kind, choices]. Kinds: number, int,
// choice (a select), bool (a select of true/false), list (comma-separated; numbers for "numbers").
const SETTINGS = [
  ["daily_budget_usd", "Daily budget (USD)", "number"], ["monthly_budget_usd", "Monthly budget (USD)", "number"],
  ["alert_thresholds", "Budget alerts at (fractions)", "numbers"],
  ["rpm", "Requests / min", "int"], ["tpm", "Tokens / min", "int"],
  ["pii_action", "PII", "choice", ["redact", "block", "allow"]],
  ["risk_action", "Prompt risk", "choice", ["allow", "flag", "block"]], ["risk_threshold", "Risk threshold", "number"],
  ["data_class", "Data class", "choice", ["public", "internal", "confidential", "restricted"]],
  ["store_text", "Keep completion text", "bool"],
  ["allowed_models", "Allowed models", "list"], ["allowed_providers", "Allowed providers", "list"],
  ["cache_mode", "Response cache", "choice", ["off", "request", "exact", "semantic"]],
  ["cache_ttl_s", "Cache TTL (s)", "number"], ["cache_similarity", "Cache similarity", "number"],
];

function settingInput(field, kind, choices, value) {
  if (kind === "choice" || kind === "bool") {
    const options = kind === "bool" ? ["true", "false"] : choices;
    const shown = value === undefined || value === null ? "" : String(value);
    return h("select", { name: field }, [h("option", { value: "" }, "default"),
      ...options.map((o) => h("option", { value: o, selected: o === shown }, o))]);
  }
  if (kind === "list" || kind === "numbers") {
    return h("input", { name: field, type: "text", value: Array.isArray(value) ? value.join(", ") : "",
      placeholder: "default" });
  }
  return h("input", { name: field, type: "number", min: 0, step: kind === "int" ? 1 : "any",
    value: value !== undefined && value !== null ? value : "", placeholder: "default" });
}

function settingValue(kind, raw) {
  const v = raw.trim();
  if (v === "") return null;
  if (kind === "int") return parseInt(v, 10);
  if (kind === "number") return Number(v);
  if (kind === "bool") return v === "true";
  if (kind === "list") return v.split(",").map((x) => x.trim()).filter(Boolean);
  if (kind === "numbers") return v.split(",").map((x) => Number(x.trim())).filter((x) => !Number.isNaN(x));
  return v;
}

function shownOnce(title, key) {
  const input = h("input", { readonly: true, value: key, class: "mono wide", id: "new-key", "aria-label": "new key" });
  return h("div", { class: "shown-once", role: "alert" },
    h("strong", {}, title), h("p", {}, "Copy it now: it is shown this once and cannot be read again."),
    input, h("button", { onclick: () => { input.select(); navigator.clipboard && navigator.clipboard.writeText(key); } }, "Copy"));
}

/** A button that asks once more before it acts (no blocking dialogs). */
function confirmButton(label, action, attrs = {}) {
  let armed = false;
  const btn = h("button", {
    class: "small danger", ...attrs, onclick: async () => {
      if (!armed) {
        armed = true;
        btn.textContent = "Confirm " + label.toLowerCase();
        setTimeout(() => { armed = false; btn.textContent = label; }, 4000);
        return;
      }
      await action();
    },
  }, label);
  return btn;
}

export function adminPage(root, ctx) {
  const note = h("div", { id: "admin-note" });
  const keys = h("div", { id: "key-list" });
  const teams = h("div", { id: "team-list" });
  const teamSelect = h("select", { name: "team", "aria-label": "team" });
  const role = h("select", { name: "role", "aria-label": "role" }, ["member", "viewer", "admin"].map((r) => h("option", { value: r }, r)));
  const name = h("input", { name: "name", placeholder: "what it is for", autocomplete: "off", "aria-label": "key name" });
  const createKey = h("form", {
    class: "filters", id: "create-key", onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const key = await api("/v1/admin/keys", { method: "POST", body: { team: teamSelect.value, role: role.value, name: name.value } });
        put(note, shownOnce(`Key ${key.id} created for ${key.team} (${key.role})`, key.key));
        name.value = "";
        await loadKeys();
      } catch (err) {
        put(note, problem(err));
      }
    },
  }, h("label", {}, "Team", teamSelect), h("label", {}, "Role", role), h("label", {}, "Name", name),
  h("button", { type: "submit" }, "Create key"));
  const newTeam = h("input", { name: "team-name", placeholder: "team name", autocomplete: "off", "aria-label": "new team" });
  const createTeam = h("form", {
    class: "filters", onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        await api("/v1/admin/teams", { method: "POST", body: { name: newTeam.value.trim() } });
        put(note, `Team ${newTeam.value.trim()} created.`);
        newTeam.value = "";
        await loadTeams();
      } catch (err) {
        put(note, problem(err));
      }
    },
  }, h("label", {}, "New team", newTeam), h("button", { type: "submit" }, "Create team"));

  const loadKeys = async () => {
    try {
      const page = await api("/v1/admin/keys");
      const rows = page.data || [];
      put(keys, table(
        [{ label: "Id" }, { label: "Name" }, { label: "Team" }, { label: "Role" }, { label: "Key" }, { label: "Status" },
          { label: "Created" }, { label: "Expires" }, { label: "" }],
        rows.map((k) => [h("span", { class: "mono" }, k.id), k.name || "—", k.team,
          [k.role, k.operator ? [" ", badge("operator", "warn")] : null], h("span", { class: "mono" }, k.display),
          badge(k.status), fmt.time(k.created_at), fmt.time(k.expires_at),
          k.status === "active" && k.source !== "config" ? h("div", { class: "actions" },
            confirmButton("Revoke", async () => {
              try {
                await api(`/v1/admin/keys/${encodeURIComponent(k.id)}/revoke`, { method: "POST" });
                put(note, `Key ${k.id} revoked.`);
              } catch (err) {
                put(note, problem(err));
              }
              await loadKeys();
            }, { "data-action": "revoke" }),
            confirmButton("Rotate", async () => {
              try {
                const r = await api(`/v1/admin/keys/${encodeURIComponent(k.id)}/rotate`, { method: "POST", body: {} });
                put(note, shownOnce(`Key ${k.id} rotated: the new key is ${r.id}`, r.key));
              } catch (err) {
                put(note, problem(err));
              }
              await loadKeys();
            }, { "data-action": "rotate" })) : h("span", { class: "muted small" }, k.source === "config" ? "configured" : "")]),
        (i) => ({ "data-key-id": rows[i].id })));
    } catch (err) {
      put(keys, problem(err));
    }
  };

  const teamForm = (t) => {
    const inputs = SETTINGS.map(([field, label, kind, choices]) => h("label", {}, label,
      settingInput(field, kind, choices, t.settings ? t.settings[field] : undefined)));
    const form = h("form", {
      class: "filters team-settings", "data-team": t.name, onsubmit: async (ev) => {
        ev.preventDefault();
        const settings = {};
        for (const [field, , kind] of SETTINGS) settings[field] = settingValue(kind, form.elements[field].value);
        try {
          await api(`/v1/admin/teams/${encodeURIComponent(t.name)}`, { method: "PATCH", body: { settings } });
          put(note, `Settings of ${t.name} saved.`);
          await loadTeams();
        } catch (err) {
          put(note, problem(err));
        }
      },
    }, h("strong", { class: "team-name" }, t.name), inputs, h("button", { type: "submit" }, "Save"));
    return form;
  };

  const loadTeams = async () => {
    try {
      const page = await api("/v1/admin/teams");
      const rows = page.data || [];
      const chosen = teamSelect.value;
      put(teamSelect, rows.map((t) => h("option", { value: t.name }, t.name)));
      if (chosen) teamSelect.value = chosen;
      put(teams, rows.map(teamForm));
    } catch (err) {
      put(teams, problem(err));
    }
  };

  put(root, h("h1", {}, "Admin"), note,
    h("section", {}, h("h2", {}, "API keys"), createKey, keys),
    h("section", {}, h("h2", {}, "Teams"), createTeam,
      h("p", { class: "muted small" }, "Empty fields take the policy's default."), teams));
  loadTeams();
  loadKeys();
}
