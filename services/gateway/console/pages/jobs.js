// Jobs: the live list (GET /v1/requests?job=true), one job's status and result (GET /v1/jobs/{id}), cancel.
import { api } from "../api.js";
import { h, put, fmt, badge, facts, problem } from "../dom.js";
import { liveList } from "./requests.js";

const ENDED = new Set(["completed", "failed", "cancelled", "expired"]);

export function jobsPage(root, ctx) {
  liveList(root, ctx, { title: "Jobs", job: true, linkTo: (id) => "#/jobs/" + encodeURIComponent(id) });
}

function resultText(result) {
  const choices = (result && result.choices) || [];
  return choices.map((c) => (c.message && typeof c.message.content === "string" ? c.message.content : JSON.stringify(c.message)))
    .join("\n\n");
}

export function jobPage(root, ctx, id) {
  const body = h("div", { id: "job-detail" });
  const note = h("div", { role: "status" });
  put(root, h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")), h("h1", { class: "mono" }, id), note, body);
  const stop = ctx.poll(async () => {
    let job;
    try {
      job = await api("/v1/jobs/" + encodeURIComponent(id));
    } catch (err) {
      put(body, problem(err));
      return;
    }
    const canCancel = ctx.me.role !== "viewer" && !ENDED.has(job.status);
    put(body,
      facts([["Status", badge(job.status)], ["Model", job.model], ["Created", fmt.time(job.created_at)],
        ["Started", fmt.time(job.started_at)], ["Completed", fmt.time(job.completed_at)],
        ["Error", job.error ? `${job.error.code}: ${job.error.message}` : undefined],
        ["Cost", job.result && job.result.switchyard ? fmt.usd(job.result.switchyard.cost_usd) : undefined]]),
      canCancel ? h("button", {
        id: "cancel-job", class: "danger", onclick: async () => {
          try {
            await api(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
            put(note, "Cancelled.");
          } catch (err) {
            put(note, problem(err));
          }
        },
      }, "Cancel job") : null,
      job.result ? h("section", {}, h("h2", {}, "Result"), h("pre", { class: "result" }, resultText(job.result))) : null,
      h("p", {}, h("a", { href: "#/requests/" + encodeURIComponent(id) }, "The request's trace →")));
    if (ENDED.has(job.status)) stop();
  }, 1500);
}
