// A job's live desktop in headless Chromium (Debian's), through a real agent-server: the noVNC
// viewer at a signed URL connects over the server's WebSocket relay and shows the job's screen,
// whose root window a step painted a known colour. Started by agent-server/tests/live_e2e.rs:
//   VIEWER_URL      the signed viewer URL (http://127.0.0.1:PORT/desktop/ID/?access=…)
//   EXPECT_RGB      the colour to find, "r,g,b"
//   SCREENSHOT      where to save a screenshot of the viewer
//   CHROMIUM        the browser (default /usr/bin/chromium)
// Prints `colour r,g,b` and exits 0 once the canvas shows the colour; non-zero with the reason.

import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const URL_ = process.env.VIEWER_URL;
const EXPECT = (process.env.EXPECT_RGB || "").split(",").map(Number);
const PATIENCE = 90_000; // a guard against hangs, not a timing check
assert.ok(URL_, "VIEWER_URL is required");
assert.equal(EXPECT.length, 3, "EXPECT_RGB is r,g,b");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1024, height: 700 } });
  const errors = [];
  const origin = new URL(URL_).origin;
  page.on("request", (req) => {
    const u = req.url();
    if (!u.startsWith(origin) && !u.startsWith("data:") && !u.startsWith("blob:")) {
      errors.push(`request to another origin: ${u}`);
    }
  });
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  await page.goto(URL_);
  // The token went into a cookie and out of the address bar.
  assert.ok(!page.url().includes("access="), `the token stays in the URL: ${page.url()}`);
  await page.waitForSelector('body[data-state="connected"]', { timeout: PATIENCE });
  const deadline = Date.now() + PATIENCE;
  let rgb = null;
  while (Date.now() < deadline) {
    rgb = await page.evaluate(() => {
      const c = document.querySelector("#screen canvas");
      if (!c || !c.width || !c.height) return null;
      const d = c.getContext("2d").getImageData(Math.floor(c.width / 2), Math.floor(c.height / 2), 1, 1).data;
      return [d[0], d[1], d[2]];
    });
    if (rgb && rgb.every((v, i) => Math.abs(v - EXPECT[i]) <= 8)) break;
    await page.waitForTimeout(200);
  }
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });
  assert.ok(rgb, "the viewer drew no canvas");
  assert.ok(rgb.every((v, i) => Math.abs(v - EXPECT[i]) <= 8), `the screen shows ${rgb}, not ${EXPECT}`);
  assert.deepEqual(errors, []);
  console.log(`colour ${rgb.join(",")}`);
} finally {
  await browser.close();
}
