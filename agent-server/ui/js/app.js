// The dashboard's shell: a hash router (#/jobs, #/jobs/<id>, #/submit, #/server), the login
// check, and the header. Each view is a module exporting `render(main, params)`, which returns a
// function that stops whatever the view started (streams, timers).

import { api, UNAUTHORIZED } from "./api.js";
import { renderJobs } from "./jobs.js";
import { renderJob } from "./job.js";
import { renderSubmit } from "./submit.js";
import { renderServer } from "./server.js";
import { renderLogin } from "./login.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const logout = document.getElementById("logout");
let cleanup = () => {};
let session = { auth_required: false, authenticated: true };
let showingLogin = false;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query) };
}

function setCurrent(name) {
  for (const a of nav.querySelectorAll("a")) {
    if (a.dataset.nav === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function route({ focus = true } = {}) {
  cleanup();
  cleanup = () => {};
  showingLogin = false;
  const { parts, query } = parseHash();
  const [section = "jobs", id] = parts;
  let stop;
  if (section === "jobs" && id) {
    setCurrent("jobs");
    stop = renderJob(main, { id });
  } else if (section === "submit") {
    setCurrent("submit");
    stop = renderSubmit(main, { query });
  } else if (section === "server") {
    setCurrent("server");
    stop = renderServer(main);
  } else {
    setCurrent("jobs");
    stop = renderJobs(main, { query });
  }
  cleanup = typeof stop === "function" ? stop : () => {};
  if (focus) main.focus({ preventScroll: true });
}

function showLogin(message) {
  if (showingLogin) return;
  cleanup();
  cleanup = () => {};
  showingLogin = true;
  nav.hidden = true;
  logout.hidden = true;
  setCurrent(null);
  renderLogin(main, {
    message,
    onDone: (info) => {
      session = info;
      start();
    },
  });
}

async function start() {
  try {
    session = await api("/session");
  } catch (e) {
    session = { auth_required: false, authenticated: true };
  }
  if (session.auth_required && !session.authenticated) {
    showLogin();
    return;
  }
  nav.hidden = false;
  logout.hidden = !session.auth_required;
  route({ focus: false });
}

logout.addEventListener("click", async () => {
  try { await api("/session", { method: "DELETE" }); } catch { /* logged out either way */ }
  session = { auth_required: true, authenticated: false };
  showLogin("You are logged out.");
});

window.addEventListener("hashchange", () => {
  if (!showingLogin) route();
});

window.addEventListener(UNAUTHORIZED, () => {
  if (session.auth_required) showLogin("Your login has expired; log in again.");
});

start();
