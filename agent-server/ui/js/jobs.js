// The jobs list: GET /jobs (filter by status, paging), kept current by the server-wide status
// stream GET /events (each change re-reads the page), ages and durations ticking locally.

import { api } from "./api.js";
import { ago, badge, duration, h, jobDuration, replace } from "./dom.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "timed_out", "interrupted"];
const PAGE = 25;
const MAX_PAGE = 200;

export function renderJobs(main, { query }) {
  const status = STATUSES.includes(query.get("status")) ? query.get("status") : "";
  const page = Math.max(1, parseInt(query.get("page") || "1", 10) || 1);
  // Page size: ?per=N in the address (default 25).
  const per = Math.min(MAX_PAGE, Math.max(1, parseInt(query.get("per") || String(PAGE), 10) || PAGE));
  const live = document.getElementById("live");
  let jobs = [];
  let total = 0;
  let stopped = false;
  let pending = null;
  let inflight = false;
  let again = false;

  const filters = h("div", { class: "segmented", role: "group", "aria-label": "Filter by status" },
    ["", ...STATUSES].map((s) => h("button", {
      type: "button",
      "aria-pressed": String(s === status),
      onclick: () => { location.hash = link(s, 1); },
    }, s ? s.replace("_", " ") : "all")));
  const body = h("tbody");
  const table = h("table", { class: "jobs", "aria-label": "Jobs" },
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Status"),
      h("th", { scope: "col" }, "Job"),
      h("th", { scope: "col" }, "Provider"),
      h("th", { scope: "col" }, "Steps"),
      h("th", { scope: "col" }, "Age"),
      h("th", { scope: "col" }, "Duration"))),
    body);
  const pager = h("div", { class: "pager" });
  const error = h("div", { class: "alert", role: "alert" });
  replace(main,
    h("div", { class: "head" },
      h("div", {}, h("h1", {}, "Jobs"), h("div", { class: "sub", id: "jobs-count" }, "")),
      h("a", { class: "button primary", href: "#/submit" }, "New job")),
    h("div", { class: "card" },
      h("div", { class: "row mb" }, filters),
      error,
      h("div", { class: "table-wrap" }, table),
      pager));

  function link(s, p) {
    const q = new URLSearchParams();
    if (s) q.set("status", s);
    if (p > 1) q.set("page", String(p));
    if (per !== PAGE) q.set("per", String(per));
    const qs = q.toString();
    return `#/jobs${qs ? `?${qs}` : ""}`;
  }

  function draw() {
    const now = Date.now();
    if (jobs.length === 0) {
      replace(body, h("tr", {}, h("td", { colspan: 6, class: "empty" },
        status ? `No ${status.replace("_", " ")} jobs.` : "No jobs yet. ",
        status ? null : h("a", { href: "#/submit" }, "Submit one."))));
    } else {
      replace(body, jobs.map((j) => {
        const title = j.prompt || j.first_step || "(no steps)";
        return h("tr", { dataset: { jobId: j.job_id, status: j.status } },
          h("td", { "data-label": "Status" }, badge(j.status)),
          h("td", {},
            h("a", { class: "job-title", href: `#/jobs/${j.job_id}` }, title),
            h("span", { class: "job-id" }, j.job_id.slice(0, 8)),
            j.error && j.status !== "cancelled" ? h("div", { class: "small text-bad" }, j.error.slice(0, 160)) : null),
          h("td", { "data-label": "Provider", class: "small" }, j.provider || (j.prompt ? "—" : "explicit steps")),
          h("td", { "data-label": "Steps", class: "small" }, String(j.steps)),
          h("td", { "data-label": "Age", class: "small nowrap", title: j.created_at }, ago(j.created_at, now)),
          h("td", { "data-label": "Duration", class: "small nowrap" }, duration(jobDuration(j, now))));
      }));
    }
    const first = total === 0 ? 0 : (page - 1) * per + 1;
    const last = Math.min(total, page * per);
    document.getElementById("jobs-count").textContent =
      `${total} job${total === 1 ? "" : "s"}${status ? ` ${status.replace("_", " ")}` : ""}`;
    replace(pager,
      h("span", { class: "muted small", id: "jobs-range", "aria-live": "polite" }, total ? `${first}–${last} of ${total}` : ""),
      h("div", { class: "row" },
        h("a", { class: "button small", href: link(status, page - 1), hidden: page <= 1 }, "← Newer"),
        h("a", { class: "button small", href: link(status, page + 1), hidden: last >= total }, "Older →")));
  }

  async function load() {
    if (inflight) { again = true; return; }
    inflight = true;
    try {
      const q = new URLSearchParams({ limit: String(per), offset: String((page - 1) * per) });
      if (status) q.set("status", status);
      const res = await api(`/jobs?${q}`);
      if (stopped) return;
      jobs = res.jobs;
      total = res.total;
      error.textContent = "";
      draw();
    } catch (e) {
      if (!stopped) error.textContent = `Could not load the jobs: ${e.message}`;
    } finally {
      inflight = false;
      if (again && !stopped) { again = false; load(); }
    }
  }

  function soon() {
    if (pending) return;
    pending = setTimeout(() => { pending = null; load(); }, 250);
  }

  const events = new EventSource("/events");
  events.addEventListener("open", () => {
    live.textContent = "live";
    live.dataset.state = "on";
    load();
  });
  events.addEventListener("status", soon);
  events.addEventListener("lagged", soon);
  events.addEventListener("error", () => {
    live.textContent = "reconnecting…";
    live.dataset.state = "off";
  });
  const ticker = setInterval(() => { if (jobs.some((j) => !j.finished_at)) draw(); }, 1000);
  load();

  return () => {
    stopped = true;
    events.close();
    clearInterval(ticker);
    clearTimeout(pending);
    live.textContent = "";
  };
}
