// What the browser tests share: Debian's Chromium, launched headless with the flags it needs as
// root here, and reading the colour the noVNC viewer shows mid-screen.

import assert from "node:assert/strict";
import { chromium } from "playwright-core";

/** Headless Chromium (`CHROMIUM`, default /usr/bin/chromium). */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync",
    ],
  });
}

/**
 * Waits (at most `patience` ms) for the viewer in `frame` (a page or an iframe) to connect and
 * show `expect` ([r, g, b], within 8 each) mid-screen; returns the colour it shows.
 */
export async function screenColour(frame, expect, patience) {
  const near = (rgb) => rgb && rgb.every((v, i) => Math.abs(v - expect[i]) <= 8);
  await frame.waitForSelector('body[data-state="connected"]', { timeout: patience });
  const deadline = Date.now() + patience;
  let rgb = null;
  while (Date.now() < deadline) {
    rgb = await frame.evaluate(() => {
      const c = document.querySelector("#screen canvas");
      if (!c || !c.width || !c.height) return null;
      const d = c.getContext("2d").getImageData(Math.floor(c.width / 2), Math.floor(c.height / 2), 1, 1).data;
      return [d[0], d[1], d[2]];
    });
    if (near(rgb)) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.ok(rgb, "the viewer drew no canvas");
  assert.ok(near(rgb), `the screen shows ${rgb}, not ${expect}`);
  return rgb;
}
