// The dashboard's live-sandbox panels in headless Chromium (Debian's), with a real job on a real
// agent-server: a user logs in, picks the job in the list, opens its desktop with a click and
// sees the colour a step painted on the noVNC canvas inside the panel, opens Jupyter Lab with a
// click and sees Lab load in its panel, then the job's sandbox is released (the API, as another
// client would) and the page says the sandbox is gone. Started by
// agent-server/tests/live_e2e.rs:
//   BASE_URL        the server (http://127.0.0.1:PORT)
//   AGENT_TOKEN     its API token
//   JOB_ID          a finished job kept with services ["desktop", "jupyter"]
//   EXPECT_RGB      the colour its step painted the desktop's root window, "r,g,b"
//   SCREENSHOT_DIR  where to save dashboard-desktop-panel.png, dashboard-jupyter-panel.png and
//                   dashboard-sandbox-gone.png
//   CHROMIUM        the browser (default /usr/bin/chromium)
// Prints `dashboard colour r,g,b`, `jupyter lab <title>` and `sandbox gone released`, and exits
// 0; non-zero with the reason.

import assert from "node:assert/strict";
import { join } from "node:path";
import { launchChromium, screenColour } from "./browser.mjs";

const BASE = process.env.BASE_URL;
const TOKEN = process.env.AGENT_TOKEN;
const JOB = process.env.JOB_ID;
const SHOTS = process.env.SCREENSHOT_DIR;
const EXPECT = (process.env.EXPECT_RGB || "").split(",").map(Number);
const PATIENCE = 120_000; // a guard against hangs, not a timing check
assert.ok(BASE && TOKEN && JOB && SHOTS, "BASE_URL, AGENT_TOKEN, JOB_ID and SCREENSHOT_DIR are required");
assert.equal(EXPECT.length, 3, "EXPECT_RGB is r,g,b");

/** The frame of the iframe `selector` once it has loaded a page of `path` (no token left). */
async function frameAt(page, selector, path) {
  const iframe = page.locator(selector);
  await iframe.waitFor({ timeout: PATIENCE });
  const src = await iframe.getAttribute("src");
  assert.ok(src.startsWith(path) && src.includes("access="), `the panel loads ${src}`);
  assert.ok(!src.includes(TOKEN), "the API token is never in a URL");
  const frame = await (await iframe.elementHandle()).contentFrame();
  assert.ok(frame, `${selector} has no frame`);
  const deadline = Date.now() + PATIENCE;
  while (Date.now() < deadline && !new URL(frame.url(), BASE).pathname.startsWith(path)) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const at = new URL(frame.url(), BASE);
  assert.ok(at.pathname.startsWith(path), `the panel is at ${frame.url()}`);
  // The signed URL set the access cookie and redirected to the bare path.
  assert.ok(!at.search.includes("access="), `the token stays in the panel's URL: ${frame.url()}`);
  return frame;
}

const browser = await launchChromium();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const elsewhere = [];
  const errors = [];
  page.on("request", (req) => {
    const u = req.url();
    if (!u.startsWith(BASE) && !u.startsWith("data:") && !u.startsWith("blob:") && !u.startsWith("about:")) {
      elsewhere.push(u);
    }
  });
  page.on("pageerror", (e) => errors.push(e.message));

  // Log in, and pick the job in the list.
  await page.goto(`${BASE}/ui/`);
  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("heading", { name: "Jobs" }).waitFor({ timeout: PATIENCE });
  await page.locator(`tr[data-job-id="${JOB}"] a.job-title`).click();
  await page.waitForURL(`**/ui/#/jobs/${JOB}`, { timeout: PATIENCE });
  await page.getByRole("heading", { name: "Live sandbox" }).waitFor({ timeout: PATIENCE });
  await page.locator('#sandbox-state[data-state="kept"]').waitFor({ timeout: PATIENCE });
  // Nothing is embedded before the user asks.
  assert.equal(await page.locator("iframe").count(), 0, "a panel opened by itself");

  // The desktop, by a click.
  const showDesktop = page.getByRole("button", { name: "Show desktop" });
  assert.equal(await showDesktop.getAttribute("aria-expanded"), "false");
  await showDesktop.click();
  const desktop = await frameAt(page, "iframe.desktop-frame", `/desktop/${JOB}/`);
  const rgb = await screenColour(desktop, EXPECT, PATIENCE);
  assert.equal(await page.getByRole("button", { name: "Hide desktop" }).getAttribute("aria-expanded"), "true");
  await page.screenshot({ path: join(SHOTS, "dashboard-desktop-panel.png"), fullPage: true });
  console.log(`dashboard colour ${rgb.join(",")}`);

  // The same desktop in a tab of its own (a signed URL of its own, asked for on the click).
  const [tab] = await Promise.all([
    page.context().waitForEvent("page", { timeout: PATIENCE }),
    page.getByRole("button", { name: "Open the desktop in a new tab" }).click(),
  ]);
  await tab.waitForURL((u) => u.pathname === `/desktop/${JOB}/` && !u.search.includes("access="), { timeout: PATIENCE });
  await tab.waitForSelector('body[data-state="connected"]', { timeout: PATIENCE });
  await tab.close();

  // Jupyter Lab, by a click: Lab's shell comes up in the panel, through the server's proxy.
  await page.getByRole("button", { name: "Show Jupyter Lab" }).click();
  const lab = await frameAt(page, "iframe.jupyter-frame", `/jupyter/${JOB}/lab`);
  await lab.waitForSelector("#jp-main-dock-panel", { state: "attached", timeout: PATIENCE });
  // The file browser lists the workspace (the step wrote painted.txt there).
  await lab.getByText("painted.txt").first().waitFor({ timeout: PATIENCE });
  const title = await lab.title();
  assert.match(title, /JupyterLab/, `the Jupyter panel shows ${title}`);
  await page.locator("iframe.jupyter-frame").scrollIntoViewIfNeeded();
  await page.screenshot({ path: join(SHOTS, "dashboard-jupyter-panel.png"), fullPage: true });
  console.log(`jupyter lab ${title}`);

  // Closing a panel removes its viewer.
  await page.getByRole("button", { name: "Hide desktop" }).click();
  assert.equal(await page.locator("iframe.desktop-frame").count(), 0, "the desktop panel stays");
  assert.equal(await page.getByRole("button", { name: "Show desktop" }).getAttribute("aria-expanded"), "false");

  // Released by another client: the page notices, closes the panels and says why.
  const resp = await fetch(`${BASE}/release/${JOB}`, {
    method: "POST",
    headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
    body: "{}",
  });
  assert.equal(resp.status, 200, await resp.text());
  const gone = page.locator('#sandbox-state[data-state="gone"]');
  await gone.waitFor({ timeout: PATIENCE });
  assert.equal(await gone.getAttribute("data-reason"), "released");
  assert.match(await gone.textContent(), /gone: it was released/);
  assert.equal(await page.locator("iframe").count(), 0, "a panel outlived the sandbox");
  assert.equal(await page.getByRole("button", { name: "Show desktop" }).isVisible(), false);
  await page.screenshot({ path: join(SHOTS, "dashboard-sandbox-gone.png"), fullPage: true });
  console.log("sandbox gone released");

  assert.deepEqual(elsewhere, [], "requests to another origin");
  assert.deepEqual(errors, [], "page errors");
} finally {
  await browser.close();
}
