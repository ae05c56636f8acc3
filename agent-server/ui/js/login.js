// The login form: trades the API token for the server's HttpOnly session cookie (POST /session).

import { api } from "./api.js";
import { h, replace } from "./dom.js";

export function renderLogin(main, { message, onDone }) {
  const error = h("div", { class: "field-error", id: "token-error", role: "alert" });
  const input = h("input", {
    type: "password", id: "token", name: "token", autocomplete: "current-password",
    required: true, "aria-describedby": "token-hint token-error",
  });
  const button = h("button", { type: "submit", class: "primary" }, "Log in");
  const form = h("form", { class: "card login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Log in"),
    message ? h("p", { class: "alert info", role: "status" }, message) : null,
    h("div", { class: "field" },
      h("label", { for: "token" }, "API token"),
      input,
      h("div", { class: "hint", id: "token-hint" },
        "The server's AGENT_API_TOKEN. It is exchanged for a login cookie and not stored in the browser."),
      error),
    button);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    input.removeAttribute("aria-invalid");
    button.disabled = true;
    try {
      const info = await api("/session", { method: "POST", body: { token: input.value } });
      input.value = "";
      onDone(info);
    } catch (e) {
      error.textContent = e.http === 401 ? "That is not the server's API token." : e.message;
      input.setAttribute("aria-invalid", "true");
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  replace(main, form);
  input.focus();
}
