// Small DOM and formatting helpers. Text always goes in as text nodes (never innerHTML), so job
// output, prompts and file contents cannot inject markup.

/** Creates an element: h("a", {href: "#", class: "x", onclick: fn}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out", "interrupted"]);

const LABELS = { timed_out: "timed out" };

/** A status badge. */
export function badge(status) {
  return h("span", { class: `badge ${status}` }, LABELS[status] || status);
}

/** "3 s", "4 min 2 s", "1 h 5 min". */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr} h ${m % 60} min`;
  return `${Math.floor(hr / 24)} d ${hr % 24} h`;
}

/** "12 s ago", "5 min ago", "3 h ago", else a date. */
export function ago(iso, now = Date.now()) {
  if (!iso) return "";
  const t = Date.parse(iso);
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400 * 2) return `${Math.floor(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

/** A job's run time: finished − started, or now − started while it runs. */
export function jobDuration(job, now = Date.now()) {
  if (!job.started_at) return null;
  const end = job.finished_at ? Date.parse(job.finished_at) : now;
  return end - Date.parse(job.started_at);
}

/** A local date and time with seconds. */
export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

/** "1.2 KiB". */
export function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** Terminal escape sequences and stray control characters removed (tabs and newlines kept). */
export function cleanText(text) {
  return text
    // eslint-disable-next-line no-control-regex
    .replace(/\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-Z\\-_]/g, "")
    // eslint-disable-next-line no-control-regex
    .replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g, "")
    .replace(/\r\n/g, "\n");
}

/** The first non-empty line of a text, cut at `max` characters. */
export function headline(text, max = 120) {
  const line = (text || "").split("\n").map((l) => l.trim()).find((l) => l) || "";
  return line.length > max ? `${line.slice(0, max)}…` : line;
}

/** What a step does in one line: its description, else its command, code or path. */
export function stepHeadline(step) {
  if (!step) return "";
  if (step.description && step.description.trim()) return headline(step.description);
  if (step.type === "shell") return headline(step.command);
  if (step.type === "python") return headline(step.code);
  if (step.type === "write_file") return `write ${step.path}`;
  return step.type;
}
