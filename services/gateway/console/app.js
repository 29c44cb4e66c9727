// The console's shell: sign-in, navigation by role, a hash router, and live polling that stops when the page
// is left. Each page is a module exporting a function (root, ctx) that fills root.
import { api, session, remember, forget, ApiError } from "./api.js";
import { h, put, problem } from "./dom.js";
import { overview } from "./pages/overview.js";
import { requestsPage, requestPage } from "./pages/requests.js";
import { providersPage } from "./pages/providers.js";
import { budgetsPage } from "./pages/budgets.js";
import { jobsPage, jobPage } from "./pages/jobs.js";
import { adminPage } from "./pages/admin.js";
import { auditPage } from "./pages/audit.js";

// Pages, in the navigation's order: who sees them is decided by the signed-in key's role.
const PAGES = [
  { path: "overview", title: "Overview", view: overview },
  { path: "requests", title: "Requests", view: requestsPage, detail: requestPage },
  { path: "providers", title: "Providers", view: providersPage },
  { path: "budgets", title: "Budgets & cost", view: budgetsPage, roles: ["admin", "viewer"] },
  { path: "jobs", title: "Jobs", view: jobsPage, detail: jobPage },
  { path: "audit", title: "Audit", view: auditPage },
  { path: "admin", title: "Admin", view: adminPage, roles: ["admin"] },
];

const app = document.getElementById("app");
let leave = []; // what the current page must stop (its pollers) when the user navigates away

function stopPage() {
  for (const stop of leave) stop();
  leave = [];
}

/** Run fn now and every ms milliseconds while the page is shown (skipped while the tab is hidden). */
function poller(fn, ms) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await fn();
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 401)) console.warn(err);
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
  };
  leave.push(stop);
  return stop;
}

function visible(page, me) {
  return !page.roles || page.roles.includes(me.role);
}

function signInView(message) {
  const input = h("input", {
    type: "password", id: "api-key", name: "api-key", autocomplete: "off", placeholder: "sk-…", required: true,
    "aria-label": "API key",
  });
  const note = h("div", { class: "sign-in-note" }, message ? problem({ message }) : null);
  const form = h("form", {
    class: "sign-in", onsubmit: async (ev) => {
      ev.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      try {
        const me = await api("/v1/me", { key });
        remember(key, me);
        input.value = "";
        if (!location.hash || location.hash === "#/" || location.hash === "#/sign-in") location.hash = "#/overview";
        render();
      } catch (err) {
        put(note, problem(err.status === 401 ? { message: "That key was not accepted." } : err));
      }
    },
  },
  h("h1", {}, "Switchyard console"),
  h("p", { class: "muted" }, "Sign in with an API key. It is kept in this tab's session storage only."),
  h("label", { for: "api-key" }, "API key"), input,
  h("button", { type: "submit", id: "sign-in" }, "Sign in"),
  note);
  put(app, h("main", { class: "center" }, form));
  input.focus();
}

function shell(me, current) {
  const nav = h("nav", { class: "nav" }, PAGES.filter((p) => visible(p, me)).map((p) => h("a", {
    href: "#/" + p.path, class: p.path === current ? "active" : null, "data-page": p.path,
  }, p.title)));
  const who = h("div", { class: "who" },
    h("span", { id: "who-tenant" }, me.tenant), " / ", h("span", { id: "who-team" }, me.team), " ",
    h("span", { class: "badge neutral", id: "who-role" }, me.role),
    me.operator ? h("span", { class: "badge warn" }, "operator") : null,
    h("button", {
      class: "link", id: "sign-out", onclick: () => {
        forget();
        location.hash = "#/sign-in";
        render();
      },
    }, "Sign out"));
  const main = h("main", { id: "page" });
  put(app, h("header", { class: "top" }, h("a", { class: "brand", href: "#/overview" }, "Switchyard"), nav, who), main);
  return main;
}

function render() {
  stopPage();
  const current = session();
  if (!current) {
    signInView();
    return;
  }
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  let page = PAGES.find((p) => p.path === parts[0] && visible(p, current.me));
  if (!page) {
    page = PAGES[0];
    if (location.hash !== "#/overview") history.replaceState(null, "", "#/overview");
  }
  const main = shell(current.me, page.path);
  const ctx = { me: current.me, poll: poller, go: (hash) => { location.hash = hash; } };
  try {
    if (parts[1] && page.detail) page.detail(main, ctx, parts[1]);
    else page.view(main, ctx);
  } catch (err) {
    put(main, problem(err));
  }
}

window.addEventListener("hashchange", render);
window.addEventListener("switchyard:signed-out", () => {
  stopPage();
  signInView("The session ended (the key was refused). Sign in again.");
});
render();
