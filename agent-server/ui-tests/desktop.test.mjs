// A job's live desktop in headless Chromium (Debian's), through a real agent-server: the noVNC
// viewer at a signed URL connects over the server's WebSocket relay and shows the job's screen,
// whose root window a step painted a known colour. Started by agent-server/tests/live_e2e.rs:
//   VIEWER_URL      the signed viewer URL (http://127.0.0.1:PORT/desktop/ID/?access=…)
//   EXPECT_RGB      the colour to find, "r,g,b"
//   SCREENSHOT      where to save a screenshot of the viewer
//   CHROMIUM        the browser (default /usr/bin/chromium)
// and, to check the dashboard's panel too:
//   DASHBOARD_URL   the server's base URL; AGENT_TOKEN its API token; JOB_ID the job;
//   DASHBOARD_SCREENSHOT where to save a screenshot of the job's page
// Prints `colour r,g,b` (and `dashboard colour r,g,b`) and exits 0 once the canvases show the
// colour; non-zero with the reason.

import assert from "node:assert/strict";
import { launchChromium, screenColour } from "./browser.mjs";

const URL_ = process.env.VIEWER_URL;
const EXPECT = (process.env.EXPECT_RGB || "").split(",").map(Number);
const PATIENCE = 90_000; // a guard against hangs, not a timing check
assert.ok(URL_, "VIEWER_URL is required");
assert.equal(EXPECT.length, 3, "EXPECT_RGB is r,g,b");

/** A page that records requests to any origin but `origin`, and page errors. */
async function newPage(origin) {
  const page = await browser.newPage({ viewport: { width: 1024, height: 700 } });
  const errors = [];
  page.on("request", (req) => {
    const u = req.url();
    if (!u.startsWith(origin) && !u.startsWith("data:") && !u.startsWith("blob:")) {
      errors.push(`request to another origin: ${u}`);
    }
  });
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  return { page, errors };
}

const browser = await launchChromium();
try {
  const viewer = await newPage(new URL(URL_).origin);
  await viewer.page.goto(URL_);
  // The token went into a cookie and out of the address bar.
  assert.ok(!viewer.page.url().includes("access="), `the token stays in the URL: ${viewer.page.url()}`);
  const rgb = await screenColour(viewer.page, EXPECT, PATIENCE);
  if (process.env.SCREENSHOT) await viewer.page.screenshot({ path: process.env.SCREENSHOT });
  assert.deepEqual(viewer.errors, []);
  console.log(`colour ${rgb.join(",")}`);

  // The dashboard's job page embeds the same viewer on a click of "Show desktop" (it asks for
  // its own signed URL).
  const base = process.env.DASHBOARD_URL;
  if (base) {
    assert.ok(process.env.AGENT_TOKEN && process.env.JOB_ID, "AGENT_TOKEN and JOB_ID go with DASHBOARD_URL");
    const dash = await newPage(base);
    await dash.page.goto(`${base}/ui/`);
    await dash.page.getByLabel("API token").fill(process.env.AGENT_TOKEN);
    await dash.page.getByRole("button", { name: "Log in" }).click();
    await dash.page.getByRole("heading", { name: "Jobs" }).waitFor({ timeout: PATIENCE });
    await dash.page.goto(`${base}/ui/#/jobs/${process.env.JOB_ID}`);
    await dash.page.getByRole("heading", { name: "Live sandbox" }).waitFor({ timeout: PATIENCE });
    // The job asked for a desktop only: no Jupyter button. The panel opens on a click.
    assert.equal(await dash.page.getByRole("button", { name: "Show Jupyter Lab" }).count(), 0);
    await dash.page.getByRole("button", { name: "Show desktop" }).click();
    const iframe = dash.page.locator("iframe.desktop-frame");
    await iframe.waitFor({ timeout: PATIENCE });
    const src = await iframe.getAttribute("src");
    assert.ok(src.includes(`/desktop/${process.env.JOB_ID}/`), `the panel shows ${src}`);
    assert.ok(!src.includes(process.env.AGENT_TOKEN), "the API token is never in a URL");
    const inner = await (await iframe.elementHandle()).contentFrame();
    assert.ok(inner, "the panel's viewer has no frame");
    const seen = await screenColour(inner, EXPECT, PATIENCE);
    if (process.env.DASHBOARD_SCREENSHOT) {
      await dash.page.screenshot({ path: process.env.DASHBOARD_SCREENSHOT, fullPage: true });
    }
    assert.deepEqual(dash.errors, []);
    console.log(`dashboard colour ${seen.join(",")}`);
  }
} finally {
  await browser.close();
}
