// The REST API, as the dashboard calls it: same origin, the login cookie (when the server has a
// token), and the X-Agent-CSRF header the server wants on every state-changing request made with
// that cookie.

/** An error answered by the API: `{"error":{"code","message","field"?,"status"?}}`. */
export class ApiError extends Error {
  constructor(http, body) {
    const detail = (body && body.error) || {};
    super(detail.message || `HTTP ${http}`);
    this.http = http;
    this.code = detail.code || "http_error";
    this.field = detail.field || null;
    this.jobStatus = detail.status || null;
  }
}

/** Raised (as an event on window) when the API answers 401: the page shows the login form. */
export const UNAUTHORIZED = "agent:unauthorized";

/** Calls the API; resolves to the parsed JSON (or the Response with `raw: true`). */
export async function api(path, { method = "GET", body, raw = false, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") headers["X-Agent-CSRF"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      signal,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, { error: { code: "network", message: "the server cannot be reached" } });
  }
  if (resp.status === 401) window.dispatchEvent(new CustomEvent(UNAUTHORIZED));
  if (raw && resp.ok) return resp;
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!resp.ok && !(path === "/" && resp.status === 503 && json)) {
    throw new ApiError(resp.status, json || { error: { message: text.slice(0, 300) || `HTTP ${resp.status}` } });
  }
  return json;
}

/** The URL of one file in a job's ZIP (each path segment encoded). */
export function fileUrl(jobId, path) {
  return `/download/${jobId}/files/${path.split("/").map(encodeURIComponent).join("/")}`;
}
