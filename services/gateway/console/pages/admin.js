// Admin (admin keys): API keys — create (the key is shown once), revoke, rotate — and team settings.
import { api } from "../api.js";
import { h, put, fmt, badge, table, problem } from "../dom.js";

const SETTINGS = [
  ["daily_budget_usd", "Daily budget (USD)"], ["monthly_budget_usd", "Monthly budget (USD)"],
  ["rpm", "Requests / min"], ["tpm", "Tokens / min"],
];

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
    const inputs = SETTINGS.map(([field, label]) => h("label", {}, label, h("input", {
      name: field, type: "number", min: 0, step: "any", value: t.settings && t.settings[field] !== undefined ? t.settings[field] : "",
      placeholder: "default",
    })));
    const form = h("form", {
      class: "filters team-settings", "data-team": t.name, onsubmit: async (ev) => {
        ev.preventDefault();
        const settings = {};
        for (const [field] of SETTINGS) {
          const v = form.elements[field].value.trim();
          settings[field] = v === "" ? null : (field === "rpm" || field === "tpm" ? parseInt(v, 10) : Number(v));
        }
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
