// A job's page: GET /status/{id} for the record, the job's event stream GET /logs/{id}/stream for
// the plan, the steps and their output, live. The stream is replayed from the first event on
// every page load (so a reload shows everything once), the browser's EventSource resumes a
// dropped connection with Last-Event-ID, and any event at or below the last sequence number seen
// is ignored, so no line is lost or shown twice. Finished jobs offer the ZIP and its files.

import { api, ApiError, fileUrl } from "./api.js";
import {
  badge, bytes, cleanText, duration, h, headline, jobDuration, replace, stepHeadline, TERMINAL, when,
} from "./dom.js";

/** Characters of output kept on the page per step; past it the page points at the full log. */
const MAX_OUTPUT_CHARS = 2_000_000;
/** Bytes of a file shown in the viewer. */
const MAX_VIEW_BYTES = 512 * 1024;

/** The services a job asked for, when its status lists them by name. */
export function requestedServices(st) {
  if (!Array.isArray(st.services)) return [];
  return st.services.map((s) => (typeof s === "string" ? s : s && (s.name || s.service))).filter(Boolean);
}

export function renderJob(main, { id }) {
  let st = null;
  let stopped = false;
  let lastSeq = 0;
  let source = null;
  let finalSeen = false;
  const steps = new Map(); // index -> {el, status, badgeSlot, meta, out, chars, lastStream, lastNode}
  const rounds = []; // {attempt, el, list}
  const notes = [];

  const title = h("h1", { id: "job-title" }, "Job");
  const sub = h("div", { class: "sub mono" }, id);
  const statusSlot = h("span", { id: "job-status", role: "status", "aria-live": "polite" });
  const cancelBtn = h("button", { type: "button", class: "danger", id: "cancel", hidden: true }, "Cancel job");
  const downloadLink = h("a", { class: "button primary", id: "download", hidden: true, download: "" }, "Download ZIP");
  const logLink = h("a", { class: "button", href: `/logs/${id}`, target: "_blank", rel: "noopener" }, "Raw log");
  const alert = h("div", { class: "alert", role: "alert" });
  const facts = h("dl", { class: "facts", id: "job-facts" });
  const errorBox = h("div", { class: "error-box", id: "job-error", hidden: true });
  const services = h("section", { class: "card", id: "services", hidden: true, "aria-labelledby": "services-title" });
  const planningPre = h("pre", { class: "code", id: "planning", tabindex: "0", "aria-label": "Planner output" });
  const planning = h("details", { class: "card", id: "planner", hidden: true },
    h("summary", {}, h("strong", {}, "Planner output")), planningPre);
  const stepsBox = h("section", { id: "steps", "aria-labelledby": "steps-title" },
    h("h2", { id: "steps-title" }, "Steps"));
  const noSteps = h("p", { class: "muted", id: "no-steps" }, "Waiting for the first step…");
  stepsBox.append(noSteps);
  const notesList = h("ul", { class: "notes" });
  const notesBox = h("section", { class: "card", hidden: true, "aria-labelledby": "notes-title" },
    h("h2", { id: "notes-title" }, "Notes"), notesList);
  const filesBox = h("section", { class: "card", id: "files", hidden: true, "aria-labelledby": "files-title" });

  replace(main,
    h("div", { class: "head" },
      h("div", { class: "grow" }, h("div", { class: "row" }, statusSlot, title), sub),
      h("div", { class: "row" }, cancelBtn, downloadLink, logLink)),
    alert,
    h("section", { class: "card", "aria-label": "Summary" }, facts, errorBox),
    services, planning, stepsBox, notesBox, filesBox);

  cancelBtn.addEventListener("click", async () => {
    cancelBtn.disabled = true;
    try {
      await api(`/cancel/${id}`, { method: "POST" });
      await refresh();
    } catch (e) {
      alert.textContent = `Cancel failed: ${e.message}`;
    } finally {
      cancelBtn.disabled = false;
    }
  });

  function drawFacts(withServices = true) {
    if (!st) return;
    replace(statusSlot, badge(st.status));
    statusSlot.dataset.status = st.status;
    let name = st.prompt;
    if (!name && steps.size) {
      const first = stepHeadline(steps.get(Math.min(...steps.keys())).step);
      name = steps.size > 1 ? `${first} + ${steps.size - 1} more step${steps.size > 2 ? "s" : ""}` : first;
    }
    name = name || "Explicit steps";
    title.textContent = headline(name, 140);
    document.title = `${headline(name, 60)} · containerized-agent`;
    const rows = [
      ["Status", st.status.replace("_", " ")],
      ["Provider", st.provider || (st.prompt ? "—" : "none (explicit steps)")],
    ];
    if (st.usage && st.usage.total_tokens) {
      rows.push(["Tokens", `${st.usage.total_tokens} (${st.usage.prompt_tokens} prompt + ${st.usage.completion_tokens} completion)`]);
    }
    rows.push(["Submitted", when(st.created_at)]);
    if (st.started_at) rows.push(["Started", when(st.started_at)]);
    if (st.finished_at) rows.push(["Finished", when(st.finished_at)]);
    const d = jobDuration(st);
    if (d !== null) rows.push(["Duration", duration(d)]);
    if (st.prompt) rows.push(["Prompt", st.prompt, "wide"]);
    replace(facts, rows.map(([k, v, cls]) => h("div", { class: cls }, h("dt", {}, k), h("dd", {}, v))));
    errorBox.hidden = !st.error;
    errorBox.textContent = st.error || "";
    cancelBtn.hidden = TERMINAL.has(st.status);
    downloadLink.hidden = !st.download_link;
    if (st.download_link) downloadLink.href = st.download_link;
    if (withServices) drawServices();
  }

  // The live sandbox ---------------------------------------------------------------------------
  // A job that asked for a desktop or Jupyter gets a card while its sandbox runs or is kept:
  // a button per service opens its panel (an embedded viewer or Lab, at a signed URL asked for
  // on the click: `POST /access/{id}`) and closes it again. Once the sandbox is gone the card
  // says so, and why (`sandbox_ended`).
  const SERVICES = {
    desktop: { label: "desktop", tab: "Open the desktop in a new tab", title: "The job's live desktop (noVNC)" },
    jupyter: { label: "Jupyter Lab", tab: "Open Jupyter Lab in a new tab", title: "The job's Jupyter Lab" },
  };
  const ENDED = {
    expired: "its keep-alive ran out",
    released: "it was released",
    server_stopped: "the server stopped",
    server_restarted: "the server restarted (a kept sandbox is not taken over by a new server)",
  };
  const panels = {}; // service -> {button, newTab, box}
  const sandboxState = h("p", { class: "muted", id: "sandbox-state", role: "status" });
  const panelButtons = h("div", { class: "row mb" });
  const panelBoxes = h("div", {});

  async function togglePanel(name) {
    const p = panels[name];
    if (p.box.firstChild) {
      closePanel(name);
      return;
    }
    p.button.disabled = true;
    try {
      const { url } = await api(`/access/${id}`, { method: "POST", body: { service: name } });
      if (stopped) return;
      p.box.replaceChildren(h("iframe", {
        class: `service-frame ${name}-frame`, src: url, title: SERVICES[name].title,
        allow: "clipboard-read; clipboard-write",
      }));
      p.box.hidden = false;
      p.button.textContent = `Hide ${SERVICES[name].label}`;
      p.button.setAttribute("aria-expanded", "true");
      // A new tab gets its own signed URL on its click too.
      p.newTab.hidden = false;
    } catch (e) {
      alert.textContent = `Could not open the ${SERVICES[name].label}: ${e.message}`;
    } finally {
      p.button.disabled = false;
    }
  }

  function closePanel(name) {
    const p = panels[name];
    p.box.replaceChildren();
    p.box.hidden = true;
    p.newTab.hidden = true;
    p.button.textContent = `Show ${SERVICES[name].label}`;
    p.button.setAttribute("aria-expanded", "false");
  }

  async function openInNewTab(name) {
    // Opened in the click (a pop-up blocker allows that), pointed at the signed URL once known.
    const tab = window.open("", "_blank");
    if (tab) tab.opener = null;
    try {
      const { url } = await api(`/access/${id}`, { method: "POST", body: { service: name } });
      if (tab) tab.location = url;
    } catch (e) {
      if (tab) tab.close();
      alert.textContent = `Could not open the ${SERVICES[name].label}: ${e.message}`;
    }
  }

  function drawServices() {
    const wanted = requestedServices(st).filter((n) => n in SERVICES);
    if (stopped || wanted.length === 0) {
      services.hidden = true;
      return;
    }
    const up = !TERMINAL.has(st.status) || Boolean(st.sandbox);
    if (!up && !st.sandbox_ended) {
      services.hidden = true;
      return;
    }
    if (!services.firstChild) {
      for (const name of wanted) {
        const box = h("div", { class: "service-panel", id: `${name}-panel`, hidden: true });
        const button = h("button", {
          type: "button", class: "primary", id: `show-${name}`, "aria-expanded": "false",
          "aria-controls": `${name}-panel`, onclick: () => togglePanel(name),
        }, `Show ${SERVICES[name].label}`);
        const newTab = h("button", {
          type: "button", hidden: true, onclick: () => openInNewTab(name),
        }, SERVICES[name].tab);
        panels[name] = { button, newTab, box };
        panelButtons.append(button, newTab);
        panelBoxes.append(box);
      }
      replace(services, h("h2", { id: "services-title" }, "Live sandbox"), sandboxState, panelButtons, panelBoxes);
    }
    services.hidden = false;
    if (up) {
      sandboxState.textContent = st.sandbox && st.sandbox.state === "kept"
        ? `The steps ended; the sandbox is kept until ${when(st.keep_alive_until || st.sandbox.expires_at)}.`
        : "The sandbox is running.";
      sandboxState.dataset.state = st.sandbox ? st.sandbox.state : "running";
    } else {
      const why = ENDED[st.sandbox_ended.reason] || st.sandbox_ended.reason;
      sandboxState.textContent = `The sandbox is gone: ${why} (${when(st.sandbox_ended.at)}).`;
      sandboxState.dataset.state = "gone";
      sandboxState.dataset.reason = st.sandbox_ended.reason;
    }
    panelButtons.hidden = !up;
    for (const name of Object.keys(panels)) {
      if (!up) closePanel(name);
    }
  }

  async function refresh() {
    try {
      st = await api(`/status/${id}`);
      alert.textContent = "";
      drawFacts();
      reconcile();
      if (TERMINAL.has(st.status) && st.download_link && filesBox.hidden) loadFiles();
    } catch (e) {
      if (e instanceof ApiError && e.http === 404) {
        alert.textContent = `No job ${id}.`;
        stop();
      } else {
        alert.textContent = `Could not load the job: ${e.message}`;
      }
    }
  }

  // Steps -------------------------------------------------------------------------------------

  function round(attempt, summary, provider) {
    let r = rounds.find((x) => x.attempt === attempt);
    if (!r) {
      const list = h("div", { class: "round-steps" });
      const label = attempt === 0 ? "Plan" : `Repair round ${attempt}`;
      const headEl = h("div", { class: "round", dataset: { attempt: String(attempt) } },
        h("h3", {}, label), h("span", { class: "line" }),
        provider ? h("span", { class: "muted small" }, `by ${provider}`) : null);
      const summaryEl = h("p", { class: "muted small round-summary" });
      const el = h("div", { class: "round-block" }, headEl, summaryEl, list);
      r = { attempt, el, list, summaryEl };
      rounds.push(r);
      stepsBox.append(el);
    }
    if (summary) r.summaryEl.textContent = summary;
    return r;
  }

  function currentRound() {
    return rounds.length ? rounds[rounds.length - 1] : round(0);
  }

  function stepCard(index, step, status, target) {
    const badgeSlot = h("span", {}, badge(status));
    const meta = h("span", { class: "meta" });
    const out = h("pre", {
      class: "output", id: `output-${index}`, tabindex: "0", "aria-label": `Output of step ${index + 1}`,
      "aria-live": "off",
    });
    const source = step.type === "shell" ? step.command : step.type === "python" ? step.code : step.content;
    const sourceLabel = step.type === "shell" ? "Command" : step.type === "python" ? "Code" : `Content of ${step.path}`;
    const el = h("details", { class: "step", open: true, id: `step-${index}`, dataset: { index: String(index), status } },
      h("summary", {},
        h("span", { class: "index" }, `#${index + 1}`),
        h("span", { class: "kind" }, step.type),
        h("span", { class: "title" }, stepHeadline(step)),
        badgeSlot, meta),
      h("div", { class: "body" },
        h("details", { class: "source" }, h("summary", { class: "small muted" }, sourceLabel),
          h("pre", { class: "code" }, source || "")),
        h("div", { class: "output-label" }, h("span", {}, "Output"), h("span", { class: "stream-note" })),
        out));
    const rec = { el, step, status, badgeSlot, meta, out, chars: 0, lastStream: null, lastNode: null, index };
    steps.set(index, rec);
    target.list.append(el);
    noSteps.hidden = true;
    return rec;
  }

  function setStepStatus(rec, status) {
    rec.status = status;
    rec.el.dataset.status = status;
    replace(rec.badgeSlot, badge(status));
  }

  function setStepResult(rec, result) {
    const bits = [];
    if (result.exit_code !== undefined && result.exit_code !== null) bits.push(`exit ${result.exit_code}`);
    if (result.duration_ms !== undefined && result.duration_ms !== null) bits.push(duration(result.duration_ms));
    if (result.termination && result.termination !== "exited") bits.push(result.termination.replace("_", " "));
    replace(rec.meta, bits.map((b) => h("span", {}, b)));
  }

  function appendOutput(rec, stream, text) {
    if (rec.chars >= MAX_OUTPUT_CHARS) return;
    let clean = cleanText(text);
    if (rec.chars + clean.length > MAX_OUTPUT_CHARS) {
      clean = clean.slice(0, MAX_OUTPUT_CHARS - rec.chars);
      rec.el.querySelector(".stream-note").append("output cut here on the page; ",
        h("a", { href: `/logs/${id}`, target: "_blank", rel: "noopener" }, "the raw log has it all"));
    }
    rec.chars += clean.length;
    const atBottom = rec.out.scrollTop + rec.out.clientHeight >= rec.out.scrollHeight - 4;
    if (rec.lastStream === stream && rec.lastNode) {
      rec.lastNode.appendData(clean);
    } else {
      const node = document.createTextNode(clean);
      if (stream === "stderr") rec.out.append(h("span", { class: "stderr" }, node));
      else rec.out.append(node);
      rec.lastNode = node;
      rec.lastStream = stream;
    }
    if (atBottom) rec.out.scrollTop = rec.out.scrollHeight;
  }

  function pendingPlaceholders(plan) {
    // Steps of a plan that have not started yet, numbered after the ones that did.
    for (const r of rounds) {
      for (const el of [...r.list.querySelectorAll('.step[data-status="pending"]')]) {
        steps.delete(Number(el.dataset.index));
        el.remove();
      }
    }
    const r = round(plan.attempt, plan.summary, plan.provider);
    let next = steps.size ? Math.max(...steps.keys()) + 1 : 0;
    for (const step of plan.steps) stepCard(next++, step, "pending", r);
  }

  function reconcile() {
    // The stored record is authoritative for statuses (e.g. steps a repair replaced: skipped).
    if (!st) return;
    for (const view of st.steps) {
      const rec = steps.get(view.index);
      if (!rec) continue;
      if (rec.status !== view.status) setStepStatus(rec, view.status);
      if (view.exit_code !== null || view.duration_ms !== null) setStepResult(rec, view);
    }
    if (TERMINAL.has(st.status)) {
      for (const rec of steps.values()) {
        if (rec.status === "pending") setStepStatus(rec, "skipped");
      }
    }
  }

  function onEvent(ev) {
    let data;
    try { data = JSON.parse(ev.data); } catch { return; }
    const seq = Number(ev.lastEventId || data.seq || 0);
    if (seq && seq <= lastSeq) return; // already shown
    if (seq) lastSeq = seq;
    switch (ev.type) {
      case "status":
        if (st) {
          st.status = data.status;
          if (data.error) st.error = data.error;
          drawFacts();
        }
        if (TERMINAL.has(data.status)) {
          finalSeen = true;
          if (source) source.close();
          document.getElementById("live").textContent = "";
          refresh();
        } else if (data.status === "running" && st && !st.started_at) {
          refresh();
        }
        break;
      case "planning":
        planning.hidden = false;
        planningPre.append(document.createTextNode(cleanText(data.text)));
        break;
      case "plan":
        planning.open = false;
        pendingPlaceholders(data);
        break;
      case "step_started": {
        let rec = steps.get(data.index);
        if (!rec) rec = stepCard(data.index, data.step, "running", currentRound());
        setStepStatus(rec, "running");
        if (st && !st.started_at) refresh();
        break;
      }
      case "output": {
        const rec = steps.get(data.index);
        if (rec) appendOutput(rec, data.stream, data.text);
        break;
      }
      case "step_finished": {
        const rec = steps.get(data.index);
        if (rec) {
          const r = data.result;
          setStepStatus(rec, r.termination === "exited" && r.exit_code === 0 ? "succeeded" : "failed");
          setStepResult(rec, r);
        }
        break;
      }
      case "log":
        notes.push(data.message);
        notesBox.hidden = false;
        notesList.append(h("li", {}, h("span", { class: "mono small" }, new Date(data.at).toLocaleTimeString()), " ", data.message));
        break;
      default:
        break;
    }
  }

  function follow() {
    const live = document.getElementById("live");
    source = new EventSource(`/logs/${id}/stream`);
    for (const name of ["status", "planning", "plan", "step_started", "output", "step_finished", "log"]) {
      source.addEventListener(name, onEvent);
    }
    source.addEventListener("open", () => {
      if (!finalSeen) { live.textContent = "live"; live.dataset.state = "on"; }
    });
    source.addEventListener("error", () => {
      if (finalSeen || stopped) return;
      live.textContent = "reconnecting…";
      live.dataset.state = "off";
    });
  }

  // Files -------------------------------------------------------------------------------------

  async function loadFiles() {
    filesBox.hidden = false;
    replace(filesBox, h("h2", { id: "files-title" }, "Files"), h("p", { class: "muted" }, "Reading the ZIP…"));
    let listing;
    try {
      listing = await api(`/download/${id}/files`);
    } catch (e) {
      replace(filesBox, h("h2", { id: "files-title" }, "Files"), h("p", { class: "muted" }, e.message));
      return;
    }
    const viewer = h("div", { class: "viewer", id: "file-viewer" },
      h("p", { class: "muted" }, "Choose a file to view it."));
    const list = h("ul", { id: "file-list", "aria-label": "Files in the ZIP" },
      listing.files.map((f) => h("li", {},
        h("button", {
          type: "button", dataset: { path: f.path },
          onclick: (ev) => view(f, ev.currentTarget, viewer),
        }, h("span", { class: "path" }, f.path), h("span", { class: "size" }, bytes(f.size))))));
    replace(filesBox,
      h("div", { class: "row between mb" },
        h("h2", { id: "files-title", class: "flush" }, "Files"),
        h("span", { class: "muted small" },
          `${listing.total} file${listing.total === 1 ? "" : "s"}${listing.truncated ? ` (first ${listing.files.length} listed)` : ""}`)),
      h("div", { class: "files" }, list, viewer));
  }

  async function view(file, button, viewer) {
    for (const b of button.closest("ul").querySelectorAll("button")) b.removeAttribute("aria-current");
    button.setAttribute("aria-current", "true");
    const url = fileUrl(id, file.path);
    replace(viewer, h("p", { class: "muted" }, `Loading ${file.path}…`));
    try {
      const resp = await api(url, { raw: true });
      const text = (resp.headers.get("content-type") || "").startsWith("text/");
      const header = h("div", { class: "row between mb-s" },
        h("strong", { class: "mono" }, file.path),
        h("a", { class: "button small", href: url, download: file.path.split("/").pop() }, "Download file"));
      if (!text) {
        resp.body && resp.body.cancel();
        replace(viewer, header, h("p", { class: "muted" }, `A binary file of ${bytes(file.size)}.`));
        return;
      }
      const reader = resp.body.getReader();
      const chunks = [];
      let got = 0;
      while (got < MAX_VIEW_BYTES) {
        const { done, value } = await reader.read();
        if (done) break;
        chunks.push(value);
        got += value.length;
      }
      const cut = got >= MAX_VIEW_BYTES && file.size > MAX_VIEW_BYTES;
      if (cut) reader.cancel();
      const all = new Uint8Array(Math.min(got, MAX_VIEW_BYTES));
      let at = 0;
      for (const c of chunks) {
        const part = c.subarray(0, Math.min(c.length, all.length - at));
        all.set(part, at);
        at += part.length;
        if (at >= all.length) break;
      }
      const content = new TextDecoder("utf-8", { fatal: false }).decode(all);
      replace(viewer, header,
        h("pre", { class: "output", id: "file-content", tabindex: "0", "aria-label": `Content of ${file.path}` }, content),
        cut ? h("p", { class: "muted small" }, `The first ${bytes(MAX_VIEW_BYTES)} of ${bytes(file.size)}; download the file for the rest.`) : null);
    } catch (e) {
      replace(viewer, h("p", { class: "alert" }, e.message));
    }
  }

  function stop() {
    stopped = true;
    if (source) source.close();
    clearInterval(ticker);
    const live = document.getElementById("live");
    if (live) live.textContent = "";
  }

  let ticks = 0;
  const ticker = setInterval(() => {
    ticks += 1;
    if (st && !TERMINAL.has(st.status) && st.started_at) drawFacts(false);
    // A finished job's sandbox changes with no status event (kept, then gone): look again.
    else if (st && TERMINAL.has(st.status) && st.sandbox && ticks % 3 === 0) refresh();
  }, 1000);
  refresh().then(() => { if (!stopped) follow(); });
  return stop;
}
