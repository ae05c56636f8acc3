// The server panel: GET / (Docker engine health, queue) and GET /info (capacity, defaults, LLM
// providers as the server has seen them), refreshed every few seconds.

import { api } from "./api.js";
import { ago, h, replace } from "./dom.js";

export function renderServer(main) {
  let stopped = false;
  const body = h("div", { id: "server-panel" }, h("p", { class: "muted" }, "Loading…"));
  replace(main,
    h("div", { class: "head" },
      h("div", {}, h("h1", {}, "Server"), h("div", { class: "sub", id: "server-version" }, "")),
      h("div", { class: "row" },
        h("a", { class: "button", href: "/docs", target: "_blank", rel: "noopener" }, "API docs"),
        h("a", { class: "button", href: "/metrics", target: "_blank", rel: "noopener" }, "Metrics"))),
    body);

  function stat(label, value, id) {
    return h("div", { class: "card stat" }, h("span", { class: "label" }, label),
      h("span", { class: "value", id }, String(value)));
  }

  async function load() {
    let health;
    let info = null;
    try {
      [health, info] = await Promise.all([api("/"), api("/info").catch(() => null)]);
    } catch (e) {
      if (!stopped) replace(body, h("p", { class: "alert" }, `The server does not answer: ${e.message}`));
      return;
    }
    if (stopped) return;
    document.getElementById("server-version").textContent = `containerized-agent ${health.version}`;
    const ex = health.executor;
    const cap = info && info.capacity;
    const providers = info ? info.llm_providers : health.llm_providers.map((name) => ({ name }));
    replace(body,
      h("div", { class: "grid" },
        h("div", { class: "card stat" }, h("span", { class: "label" }, "Docker engine"),
          h("span", { class: "value", id: "engine" }, h("span", { class: `badge ${ex.ok ? "succeeded" : "failed"}` }, ex.ok ? "answering" : "down")),
          ex.error ? h("span", { class: "small text-bad" }, ex.error) : null),
        stat("Queued", health.queued, "queued"),
        stat("Running", cap ? `${health.running} / ${cap.max_concurrent_jobs}` : health.running, "running"),
        stat("Sandboxes alive", cap ? cap.live_sandboxes : "—", "sandboxes"),
        stat("Warm pool", !cap ? "—" : !cap.warm_pool ? "off"
          : cap.warm_ready === null || cap.warm_ready === undefined ? `${cap.warm_pool} kept`
            : `${cap.warm_ready} / ${cap.warm_pool} ready`, "warm-pool")),
      h("section", { class: "card", "aria-labelledby": "llm-title" },
        h("h2", { id: "llm-title" }, "LLM providers"),
        providers.length === 0
          ? h("p", { class: "muted" }, "None configured: only explicit-steps jobs can run. Set ALCHEMYST_API_KEY, GEMINI_API_KEY or OPENAI_BASE_URL.")
          : h("div", { class: "table-wrap" }, h("table", { class: "jobs", "aria-label": "LLM providers" },
            h("thead", {}, h("tr", {},
              ["Order", "Provider", "Health", "Calls", "Errors", "Mean latency", "Last error"].map((c) => h("th", { scope: "col" }, c)))),
            h("tbody", {}, providers.map((p, i) => {
              const state = p.ok === undefined ? ["queued", "unknown"]
                : p.last_error_at && (!p.last_ok_at || p.last_error_at > p.last_ok_at) ? ["failed", "failing"]
                  : p.ok ? ["succeeded", "answering"] : ["queued", "not called yet"];
              return h("tr", {},
                h("td", { "data-label": "Order" }, String(i + 1)),
                h("td", { "data-label": "Provider" }, h("strong", {}, p.name)),
                h("td", { "data-label": "Health" }, h("span", { class: `badge ${state[0]}` }, state[1])),
                h("td", { "data-label": "Calls" }, p.ok === undefined ? "—" : String(p.ok)),
                h("td", { "data-label": "Errors" }, p.errors === undefined ? "—" : String(p.errors)),
                h("td", { "data-label": "Mean latency" }, p.mean_latency_ms ? `${p.mean_latency_ms} ms` : "—"),
                h("td", { "data-label": "Last error" }, p.last_error_at ? `${p.last_error_kind} · ${ago(p.last_error_at)}` : "—"));
            }))))),
      info ? h("section", { class: "card", "aria-labelledby": "defaults-title" },
        h("h2", { id: "defaults-title" }, "Job defaults and limits"),
        h("dl", { class: "kv" },
          h("dt", {}, "Image"), h("dd", { class: "mono" }, info.defaults.image || "—"),
          h("dt", {}, "Network"), h("dd", {}, `${info.defaults.network} (allowed: ${info.limits.networks.join(", ")})`),
          h("dt", {}, "Job timeout"), h("dd", {}, `${info.defaults.timeout_secs} s`),
          h("dt", {}, "Step timeout"), h("dd", {}, `${info.defaults.step_timeout_secs} s`),
          h("dt", {}, "Queue"), h("dd", {}, `up to ${info.capacity.max_queued_jobs} waiting`),
          h("dt", {}, "Login"), h("dd", {}, info.auth_required ? "API token required" : "open (no AGENT_API_TOKEN)"))) : null);
  }

  load();
  const timer = setInterval(load, 5000);
  return () => { stopped = true; clearInterval(timer); };
}
