// The submit form: a prompt, explicit steps (a small editor) or a pasted plan, plus timeouts,
// network, image and environment. Validation is the server's: POST /schedule's error names the
// field at fault (`prompt`, `steps[1].command`, `timeout_secs`, …) and its message is shown
// next to that field.

import { api } from "./api.js";
import { h, replace } from "./dom.js";

const MODES = [
  ["prompt", "Prompt"],
  ["steps", "Steps"],
  ["json", "Plan JSON"],
];

let uid = 0;

export function renderSubmit(main, { query }) {
  let mode = MODES.some(([m]) => m === query.get("mode")) ? query.get("mode") : "prompt";
  let info = null;
  const stepList = [];
  const errors = new Map(); // field id -> error element

  function field(id, labelText, control, hint) {
    const err = h("div", { class: "field-error", id: `${id}-error`, role: "alert" });
    errors.set(id, { err, control });
    control.id = id;
    control.setAttribute("aria-describedby", `${hint ? `${id}-hint ` : ""}${id}-error`);
    return h("div", { class: "field" },
      h("label", { for: id }, labelText),
      control,
      hint ? h("div", { class: "hint", id: `${id}-hint` }, hint) : null,
      err);
  }

  // Prompt
  const prompt = h("textarea", { class: "prose", name: "prompt", rows: 4,
    placeholder: "e.g. count the primes below 1000 into primes.txt" });
  const promptPanel = h("div", { id: "panel-prompt", role: "tabpanel", "aria-labelledby": "tab-prompt" },
    field("f-prompt", "What should the agent do?", prompt, "An LLM plans the steps; they run in a fresh sandbox."));

  // Steps editor
  const stepsBox = h("div", { id: "step-editor" });
  const addButtons = h("div", { class: "row" },
    h("span", { class: "muted small" }, "Add a step:"),
    h("button", { type: "button", class: "small", onclick: () => addStep("shell") }, "+ Shell"),
    h("button", { type: "button", class: "small", onclick: () => addStep("python") }, "+ Python"),
    h("button", { type: "button", class: "small", onclick: () => addStep("write_file") }, "+ Write file"));
  const stepsError = h("div", { class: "field-error", id: "f-steps-error", role: "alert" });
  errors.set("f-steps", { err: stepsError, control: null });
  const stepsPanel = h("div", { id: "panel-steps", role: "tabpanel", "aria-labelledby": "tab-steps" },
    stepsBox, stepsError, addButtons);

  // Plan JSON
  const planJson = h("textarea", { name: "plan", rows: 10, spellcheck: "false",
    placeholder: '{"steps": [{"type": "shell", "command": "echo hello"}]}' });
  const jsonPanel = h("div", { id: "panel-json", role: "tabpanel", "aria-labelledby": "tab-json" },
    field("f-plan", "Plan", planJson, 'A plan file: {"steps": [...]} or a bare array of steps.'));

  // Options
  const timeout = h("input", { type: "number", min: "1", step: "1", inputmode: "numeric", name: "timeout_secs" });
  const stepTimeout = h("input", { type: "number", min: "1", step: "1", inputmode: "numeric", name: "step_timeout_secs" });
  const network = h("select", { name: "network" });
  const image = h("input", { type: "text", name: "image", autocomplete: "off", spellcheck: "false" });
  const env = h("textarea", { name: "env", rows: 3, spellcheck: "false", placeholder: "KEY=value, one per line" });
  const servicesBox = h("div", { id: "service-options" });
  const options = h("fieldset", {},
    h("legend", {}, "Sandbox"),
    h("div", { class: "grid" },
      field("f-timeout_secs", "Job timeout (s)", timeout),
      field("f-step_timeout_secs", "Step timeout (s)", stepTimeout),
      field("f-network", "Network", network)),
    field("f-image", "Image", image),
    field("f-env", "Environment", env, "Extra variables for every step."),
    servicesBox);

  const formError = h("div", { class: "alert", role: "alert", id: "form-error" });
  const submit = h("button", { type: "submit", class: "primary", id: "submit" }, "Submit job");
  const tabs = h("div", { class: "segmented", role: "tablist", "aria-label": "What to run" },
    MODES.map(([m, label]) => h("button", {
      type: "button", role: "tab", id: `tab-${m}`, "aria-controls": `panel-${m}`,
      onclick: () => setMode(m),
      onkeydown: (ev) => {
        const i = MODES.findIndex(([x]) => x === m);
        const d = ev.key === "ArrowRight" ? 1 : ev.key === "ArrowLeft" ? -1 : 0;
        if (d) {
          const next = MODES[(i + d + MODES.length) % MODES.length][0];
          setMode(next);
          document.getElementById(`tab-${next}`).focus();
        }
      },
    }, label)));
  const form = h("form", { class: "card", id: "submit-form", novalidate: true, "aria-labelledby": "submit-title" },
    h("div", { class: "row mb-l" }, tabs),
    promptPanel, stepsPanel, jsonPanel, options, formError,
    h("div", { class: "row" }, submit, h("a", { class: "button ghost", href: "#/jobs" }, "Cancel")));
  replace(main,
    h("div", { class: "head" }, h("div", {}, h("h1", { id: "submit-title" }, "New job"),
      h("div", { class: "sub" }, "Each job runs in its own hardened, throw-away sandbox."))),
    form);

  function setMode(m) {
    mode = m;
    for (const [x] of MODES) {
      const tab = document.getElementById(`tab-${x}`);
      tab.setAttribute("aria-selected", String(x === m));
      tab.tabIndex = x === m ? 0 : -1;
      document.getElementById(`panel-${x}`).hidden = x !== m;
    }
    if (m === "steps" && stepList.length === 0) addStep("shell");
  }

  function addStep(type, values = {}) {
    const n = ++uid;
    const typeSel = h("select", { "aria-label": "Step type" },
      [["shell", "Shell"], ["python", "Python"], ["write_file", "Write file"]].map(([v, l]) =>
        h("option", { value: v, selected: v === type }, l)));
    const main1 = h("textarea", { rows: 3, spellcheck: "false" });
    const path = h("input", { type: "text", spellcheck: "false", placeholder: "notes/hello.txt" });
    const description = h("input", { type: "text", placeholder: "optional" });
    const stepTimeoutInput = h("input", { type: "number", min: "1", step: "1", placeholder: "default" });
    const err = h("div", { class: "field-error", role: "alert", id: `s${n}-error` });
    const label1 = h("label", { for: `s${n}-main` });
    main1.id = `s${n}-main`;
    path.id = `s${n}-path`;
    description.id = `s${n}-desc`;
    stepTimeoutInput.id = `s${n}-timeout`;
    const pathField = h("div", { class: "field" }, h("label", { for: path.id }, "Path"), path);
    const heading = h("strong", {});
    const card = h("div", { class: "step-edit", role: "group", "aria-labelledby": `s${n}-heading` });
    heading.id = `s${n}-heading`;
    const rec = { card, typeSel, main: main1, path, description, timeout: stepTimeoutInput, err };
    const move = (d) => {
      const i = stepList.indexOf(rec);
      const j = i + d;
      if (j < 0 || j >= stepList.length) return;
      stepList.splice(i, 1);
      stepList.splice(j, 0, rec);
      redraw();
    };
    const controls = h("div", { class: "row" },
      h("button", { type: "button", class: "small ghost", "aria-label": "Move step up", onclick: () => move(-1) }, "↑"),
      h("button", { type: "button", class: "small ghost", "aria-label": "Move step down", onclick: () => move(1) }, "↓"),
      h("button", { type: "button", class: "small danger", "aria-label": "Remove step",
        onclick: () => { stepList.splice(stepList.indexOf(rec), 1); card.remove(); redraw(); } }, "Remove"));
    const sync = () => {
      const t = typeSel.value;
      label1.textContent = t === "shell" ? "Command" : t === "python" ? "Python code" : "Content";
      pathField.hidden = t !== "write_file";
      main1.placeholder = t === "shell" ? "echo hello" : t === "python" ? "print(sum(range(10)))" : "file content";
    };
    typeSel.addEventListener("change", sync);
    main1.setAttribute("aria-describedby", err.id);
    card.append(
      h("div", { class: "row top-row" }, h("div", { class: "row" }, heading, typeSel), controls),
      h("div", { class: "cols" },
        h("div", { class: "field" }, label1, main1),
        h("div", {},
          h("div", { class: "field" }, h("label", { for: description.id }, "Description"), description),
          h("div", { class: "field" }, h("label", { for: stepTimeoutInput.id }, "Timeout (s)"), stepTimeoutInput))),
      pathField, err);
    if (values.main) main1.value = values.main;
    if (values.path) path.value = values.path;
    sync();
    stepList.push(rec);
    stepsBox.append(card);
    redraw();
    main1.focus();
  }

  function redraw() {
    stepList.forEach((rec, i) => {
      rec.card.querySelector("strong").textContent = `Step ${i + 1}`;
      rec.card.dataset.index = String(i);
      stepsBox.append(rec.card);
    });
  }

  function collectSteps() {
    return stepList.map((rec) => {
      const t = rec.typeSel.value;
      const step = { type: t };
      if (t === "shell") step.command = rec.main.value;
      else if (t === "python") step.code = rec.main.value;
      else { step.path = rec.path.value; step.content = rec.main.value; }
      if (rec.description.value.trim()) step.description = rec.description.value.trim();
      if (rec.timeout.value.trim()) step.timeout_secs = Number(rec.timeout.value);
      return step;
    });
  }

  function clearErrors() {
    formError.textContent = "";
    for (const { err, control } of errors.values()) {
      err.textContent = "";
      if (control) control.removeAttribute("aria-invalid");
    }
    for (const rec of stepList) {
      rec.err.textContent = "";
      rec.main.removeAttribute("aria-invalid");
      rec.path.removeAttribute("aria-invalid");
    }
  }

  /** Puts the server's message next to the field it names; returns the element to focus. */
  function showError(e) {
    const f = e.field || "";
    const step = /^steps\[(\d+)\]/.exec(f);
    if (step && mode === "steps" && stepList[Number(step[1])]) {
      const rec = stepList[Number(step[1])];
      rec.err.textContent = e.message;
      const ctl = /\.path$/.test(f) ? rec.path : /\.timeout_secs$/.test(f) ? rec.timeout : rec.main;
      ctl.setAttribute("aria-invalid", "true");
      return ctl;
    }
    let id = null;
    if (f === "prompt") id = mode === "prompt" ? "f-prompt" : mode === "steps" ? "f-steps" : "f-plan";
    else if (f === "steps" || step) id = mode === "json" ? "f-plan" : "f-steps";
    else if (f.startsWith("env")) id = "f-env";
    else if (errors.has(`f-${f}`)) id = `f-${f}`;
    if (id) {
      const { err, control } = errors.get(id);
      err.textContent = e.message;
      if (control) { control.setAttribute("aria-invalid", "true"); return control; }
      return err;
    }
    formError.textContent = e.message;
    return formError;
  }

  function localError(field, message) {
    const e = { field, message };
    const el = showError(e);
    if (el && el.focus) el.focus();
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors();
    const body = {};
    if (mode === "prompt") {
      body.prompt = prompt.value;
    } else if (mode === "steps") {
      body.steps = collectSteps();
    } else {
      let plan;
      try {
        plan = JSON.parse(planJson.value);
      } catch (err) {
        localError("plan", `Not valid JSON: ${err.message}`);
        return;
      }
      if (Array.isArray(plan)) body.steps = plan;
      else if (plan && typeof plan === "object" && Array.isArray(plan.steps)) {
        body.steps = plan.steps;
        for (const k of ["prompt", "timeout_secs", "step_timeout_secs", "network", "image", "env"]) {
          if (plan[k] !== undefined) body[k] = plan[k];
        }
      } else {
        localError("plan", 'Expected {"steps": [...]} or an array of steps.');
        return;
      }
    }
    if (timeout.value.trim()) body.timeout_secs = Number(timeout.value);
    if (stepTimeout.value.trim()) body.step_timeout_secs = Number(stepTimeout.value);
    if (network.value) body.network = network.value;
    if (image.value.trim()) body.image = image.value.trim();
    const envLines = env.value.split("\n").map((l) => l.trim()).filter(Boolean);
    if (envLines.length) {
      body.env = {};
      for (const line of envLines) {
        const at = line.indexOf("=");
        if (at <= 0) {
          localError("env", `"${line}" is not KEY=value.`);
          return;
        }
        body.env[line.slice(0, at)] = line.slice(at + 1);
      }
    }
    const services = [...servicesBox.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.name);
    if (services.length) body.services = services;
    submit.disabled = true;
    try {
      const res = await api("/schedule", { method: "POST", body });
      location.hash = `#/jobs/${res.job_id}`;
    } catch (e) {
      const el = showError(e);
      if (el && el.focus) el.focus();
    } finally {
      submit.disabled = false;
    }
  });

  async function loadInfo() {
    try {
      info = await api("/info");
    } catch {
      info = null;
    }
    const networks = info ? info.limits.networks : ["none", "bridge"];
    const def = info ? info.defaults.network : "none";
    replace(network, networks.map((n) => h("option", { value: n, selected: n === def }, n === def ? `${n} (default)` : n)));
    if (info) {
      timeout.placeholder = `${info.defaults.timeout_secs} (default)`;
      stepTimeout.placeholder = `${info.defaults.step_timeout_secs} (default)`;
      timeout.max = String(info.limits.max_timeout_secs);
      stepTimeout.max = String(info.limits.max_step_timeout_secs || info.limits.max_timeout_secs);
      image.placeholder = info.defaults.image ? `${info.defaults.image} (default)` : "the server's default";
      // Desktop / Jupyter (issue 10): offered once the server lists them.
      const offered = Array.isArray(info.services) ? info.services : [];
      replace(servicesBox, offered.map((s) => h("label", { class: "row" },
        h("input", { type: "checkbox", name: s }), `Start ${s === "desktop" ? "a live desktop" : s === "jupyter" ? "Jupyter Lab" : s}`)));
    }
  }

  setMode(mode);
  loadInfo();
  prompt.focus();
  return () => {};
}
