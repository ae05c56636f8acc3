// End-to-end test of the dashboard in headless Chromium (Debian's), against a real agent-server
// running real Docker jobs. Started by agent-server/tests/ui_e2e.rs, which starts the server with
// an API token and passes:
//   BASE_URL        http://127.0.0.1:PORT
//   AGENT_TOKEN     the server's API token
//   SCREENSHOT_DIR  where to save a screenshot of each main page
//   CHROMIUM        the browser (default /usr/bin/chromium)
// Exits non-zero (with the failing check) if anything is wrong.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { launchChromium } from "./browser.mjs";

const BASE = process.env.BASE_URL;
const TOKEN = process.env.AGENT_TOKEN;
const SHOTS = process.env.SCREENSHOT_DIR || "target/ui-screenshots";
const PATIENCE = 120_000; // upper bound for any wait (a guard against hangs, not a timing check)
assert.ok(BASE, "BASE_URL is required");
assert.ok(TOKEN, "AGENT_TOKEN is required");
mkdirSync(SHOTS, { recursive: true });

// Playwright gives every launch a fresh, temporary profile (the --user-data-dir of COMMON setups).
const browser = await launchChromium();

const results = [];
async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    results.push(name);
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    console.error(`FAIL ${name}\n${e.stack || e}`);
    throw e;
  }
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

// Anything the page loads from another origin is a failure (the dashboard is offline).
function guard(page, errors) {
  page.on("request", (req) => {
    const url = req.url();
    if (!url.startsWith(BASE) && !url.startsWith("data:") && !url.startsWith("blob:")) {
      errors.push(`request to another origin: ${url}`);
    }
  });
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error" && !/401|403|Unauthorized|Forbidden|409|422/.test(msg.text())) {
      errors.push(`console error: ${msg.text()}`);
    }
  });
}

/** Submits explicit steps through the form's step editor; returns the new job's id. */
async function submitSteps(page, steps, options = {}) {
  await page.goto(`${BASE}/ui/#/submit`);
  await page.getByRole("tab", { name: "Steps" }).click();
  const editors = page.locator(".step-edit");
  for (let i = 0; i < steps.length; i++) {
    const s = steps[i];
    if (i > 0 || (await editors.count()) === 0) {
      await page.getByRole("button", { name: `+ ${s.label}` }).click();
    }
    const card = editors.nth(i);
    await card.getByLabel("Step type").selectOption(s.type);
    if (s.path) await card.getByLabel("Path").fill(s.path);
    await card.locator("textarea").fill(s.text);
    if (s.description) await card.getByLabel("Description").fill(s.description);
  }
  if (options.timeout) await page.getByLabel("Job timeout (s)").fill(String(options.timeout));
  await page.getByRole("button", { name: "Submit job" }).click();
  await page.waitForURL(/#\/jobs\/[0-9a-f-]{36}$/, { timeout: PATIENCE });
  return page.url().split("/").pop();
}

async function waitStatus(page, status) {
  await page.locator(`#job-status[data-status="${status}"]`).waitFor({ timeout: PATIENCE });
}

let failures = 0;
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const errors = [];
  guard(page, errors);

  await check("without the token the API refuses and the page asks for a login", async () => {
    const r = await page.request.get(`${BASE}/jobs`);
    assert.equal(r.status(), 401);
    await page.goto(`${BASE}/`); // a browser asking for / lands on the dashboard
    assert.equal(new URL(page.url()).pathname, "/ui/");
    await page.getByLabel("API token").waitFor();
    await shot(page, "login");
    await page.getByLabel("API token").fill("not-the-token");
    await page.getByRole("button", { name: "Log in" }).click();
    await page.locator("#token-error").filter({ hasText: "not the server's API token" }).waitFor();
    assert.equal(await page.getByLabel("API token").getAttribute("aria-invalid"), "true");
    assert.equal((await context.cookies()).length, 0);
  });

  await check("logging in sets an HttpOnly SameSite=Strict session cookie that is not the token", async () => {
    await page.getByLabel("API token").fill(TOKEN);
    await page.getByRole("button", { name: "Log in" }).click();
    await page.getByRole("heading", { name: "Jobs" }).waitFor();
    const cookies = await context.cookies();
    assert.equal(cookies.length, 1);
    const [c] = cookies;
    assert.equal(c.name, "agent_session");
    assert.equal(c.httpOnly, true);
    assert.equal(c.sameSite, "Strict");
    assert.ok(!c.value.includes(TOKEN), "the cookie must not carry the token");
    assert.equal((await page.request.get(`${BASE}/jobs`)).status(), 200);
    // State-changing requests with the cookie need the CSRF header and our own origin.
    const noHeader = await page.evaluate(async () =>
      (await fetch("/schedule", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" })).status);
    assert.equal(noHeader, 403);
    const foreign = await page.request.post(`${BASE}/schedule`, {
      headers: { "X-Agent-CSRF": "1", Origin: "http://evil.example" }, data: { steps: [] },
    });
    assert.equal(foreign.status(), 403);
  });

  await check("the server's validation errors show next to the field", async () => {
    await page.goto(`${BASE}/ui/#/submit`);
    await page.getByRole("tab", { name: "Steps" }).click();
    await page.locator(".step-edit textarea").first().fill("echo never");
    await page.getByLabel("Job timeout (s)").fill("0");
    await page.getByRole("button", { name: "Submit job" }).click();
    const err = page.locator("#f-timeout_secs-error");
    await err.filter({ hasText: "timeout_secs" }).waitFor();
    assert.match(await err.textContent(), /at least 1/);
    assert.equal(await page.getByLabel("Job timeout (s)").getAttribute("aria-invalid"), "true");
    await page.getByLabel("Job timeout (s)").fill("");
    await page.getByRole("tab", { name: "Plan JSON" }).click();
    await page.getByRole("textbox", { name: "Plan", exact: true }).fill('{"steps":[{"type":"shell","description":"no command"}]}');
    await page.getByRole("button", { name: "Submit job" }).click();
    await page.locator("#f-plan-error").filter({ hasText: /command/ }).waitFor();
  });

  let okJob;
  const LINES = Array.from({ length: 8 }, (_, i) => `line-${i + 1}`);
  await check("a steps job submitted from the form streams its output live and succeeds", async () => {
    okJob = await submitSteps(page, [
      { label: "Write file", type: "write_file", path: "notes/hello.txt", text: "hello from the dashboard\n", description: "a note" },
      { label: "Shell", type: "shell", text: "for i in $(seq 1 8); do echo line-$i; sleep 0.6; done", description: "count slowly" },
      { label: "Python", type: "python", text: "print(open('notes/hello.txt').read().upper())" },
    ]);
    const out = page.locator("#output-1");
    await out.filter({ hasText: "line-2" }).waitFor({ timeout: PATIENCE });
    // Seen while the job still runs: the output arrived live, not at the end.
    const statusNow = await page.locator("#job-status").getAttribute("data-status");
    const textNow = await out.textContent();
    assert.ok(statusNow === "running" && !textNow.includes("line-8"),
      `expected to see early output of a running job, got ${statusNow} with ${JSON.stringify(textNow)}`);
    await shot(page, "job-running");
    // A reload in the middle: the page replays the stream, nothing is lost or shown twice.
    await page.reload();
    await waitStatus(page, "succeeded");
    assert.equal(await page.locator("#output-1").textContent(), LINES.map((l) => `${l}\n`).join(""));
    assert.match(await page.locator("#output-2").textContent(), /HELLO FROM THE DASHBOARD/);
    for (const i of [0, 1, 2]) {
      assert.equal(await page.locator(`#step-${i}`).getAttribute("data-status"), "succeeded");
    }
    assert.match(await page.locator("#step-1 .meta").textContent(), /exit 0/);
  });

  await check("the ZIP downloads with the job's files, and the page lists and shows them", async () => {
    const [download] = await Promise.all([
      page.waitForEvent("download", { timeout: PATIENCE }),
      page.locator("#download").click(),
    ]);
    const zipPath = join(SHOTS, `job-${okJob}.zip`);
    await download.saveAs(zipPath);
    const listing = JSON.parse(execFileSync("python3", ["-c",
      "import json,sys,zipfile; z=zipfile.ZipFile(sys.argv[1]); print(json.dumps({n: z.read(n).decode('utf-8','replace') for n in z.namelist() if not n.endswith('/')}))",
      zipPath]).toString());
    rmSync(zipPath);
    assert.equal(listing["notes/hello.txt"], "hello from the dashboard\n");
    assert.equal(JSON.parse(listing["result.json"]).status, "succeeded");
    const list = page.locator("#file-list");
    await list.waitFor({ timeout: PATIENCE });
    await list.getByRole("button", { name: /notes\/hello\.txt/ }).click();
    await page.locator("#file-content").filter({ hasText: "hello from the dashboard" }).waitFor();
    await shot(page, "job-succeeded");
  });

  await check("a failing step shows its stderr and exit code", async () => {
    const id = await submitSteps(page, [
      { label: "Shell", type: "shell", text: "echo some-stdout; echo broken-on-purpose >&2; exit 3" },
    ]);
    await waitStatus(page, "failed");
    const stderr = page.locator("#output-0 .stderr");
    await stderr.filter({ hasText: "broken-on-purpose" }).waitFor({ timeout: PATIENCE });
    assert.match(await page.locator("#output-0").textContent(), /some-stdout/);
    assert.match(await page.locator("#step-0 .meta").textContent(), /exit 3/);
    assert.equal(await page.locator("#step-0").getAttribute("data-status"), "failed");
    assert.ok(id);
    await shot(page, "job-failed");
  });

  if (process.env.LLM_MOCK === "1") {
    await check("a prompt job shows its plan, the repair round, the provider and the tokens", async () => {
      await page.goto(`${BASE}/ui/#/submit`);
      await page.getByLabel("What should the agent do?").fill("print planned, then repair it");
      await page.getByRole("button", { name: "Submit job" }).click();
      await page.waitForURL(/#\/jobs\/[0-9a-f-]{36}$/, { timeout: PATIENCE });
      await waitStatus(page, "succeeded");
      await page.locator('.round[data-attempt="0"]').filter({ hasText: "Plan" }).waitFor();
      await page.locator('.round[data-attempt="1"]').filter({ hasText: "Repair round 1" }).waitFor();
      assert.equal(await page.locator("#step-0").getAttribute("data-status"), "failed");
      assert.match(await page.locator("#output-0").textContent(), /planned/);
      assert.equal(await page.locator("#step-1").getAttribute("data-status"), "succeeded");
      assert.match(await page.locator("#output-1").textContent(), /repaired/);
      const facts = await page.locator("#job-facts").textContent();
      assert.match(facts, /alchemyst/);
      assert.match(facts, /Tokens\s*60 \(20 prompt \+ 40 completion\)/);
      assert.match(await page.locator("#job-title").textContent(), /print planned, then repair it/);
      await shot(page, "job-repaired");
    });
  }

  await check("a long job is cancelled from its page", async () => {
    await submitSteps(page, [{ label: "Shell", type: "shell", text: "echo started; sleep 600" }]);
    await page.locator("#output-0").filter({ hasText: "started" }).waitFor({ timeout: PATIENCE });
    await page.getByRole("button", { name: "Cancel job" }).click();
    await waitStatus(page, "cancelled");
    assert.equal(await page.getByRole("button", { name: "Cancel job" }).isHidden(), true);
  });

  await check("the jobs list shows new jobs and status changes without a reload", async () => {
    await page.goto(`${BASE}/ui/#/jobs`);
    await page.locator(`tr[data-job-id="${okJob}"]`).waitFor({ timeout: PATIENCE });
    await page.locator("#live[data-state=on]").waitFor({ timeout: PATIENCE });
    const before = await page.evaluate(() => performance.getEntriesByType("navigation").length);
    const r = await page.request.post(`${BASE}/schedule`, {
      headers: { "X-Agent-CSRF": "1" },
      data: { steps: [{ type: "shell", command: "sleep 1; echo listed", description: "appears live" }] },
    });
    assert.equal(r.status(), 202);
    const { job_id: id } = await r.json();
    await page.locator(`tr[data-job-id="${id}"][data-status="succeeded"]`).waitFor({ timeout: PATIENCE });
    assert.match(await page.locator(`tr[data-job-id="${id}"]`).textContent(), /appears live/);
    assert.equal(await page.evaluate(() => performance.getEntriesByType("navigation").length), before);
    // Filter by status.
    await page.getByRole("button", { name: "failed", exact: true }).click();
    await page.waitForURL(/status=failed/);
    await page.locator("tbody tr[data-status=failed]").first().waitFor();
    assert.equal(await page.locator("tbody tr[data-status=succeeded]").count(), 0);
    await page.getByRole("button", { name: "all", exact: true }).click();
    await page.locator(`tr[data-job-id="${okJob}"]`).waitFor();
    await shot(page, "jobs");
    // Pages of two: the second page holds the next two jobs, none of the first page's.
    await page.goto(`${BASE}/ui/#/jobs?per=2`);
    await page.locator("#jobs-range").filter({ hasText: /^1–2 of \d+$/ }).waitFor();
    const firstPage = await page.locator("tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.jobId));
    assert.equal(firstPage.length, 2);
    await page.getByRole("link", { name: "Older →" }).click();
    await page.locator("#jobs-range").filter({ hasText: /^3–4 of \d+$/ }).waitFor();
    await page.waitForFunction((ids) => [...document.querySelectorAll("tbody tr")]
      .every((r) => r.dataset.jobId && !ids.includes(r.dataset.jobId)), firstPage);
    assert.equal(await page.locator("tbody tr").count(), 2);
    await page.getByRole("link", { name: "← Newer" }).click();
    await page.locator("#jobs-range").filter({ hasText: /^1–2 of / }).waitFor();
  });

  await check("the server panel shows the engine, the queue and the providers", async () => {
    await page.goto(`${BASE}/ui/#/server`);
    await page.locator("#engine").filter({ hasText: "answering" }).waitFor({ timeout: PATIENCE });
    assert.match(await page.locator("#running").textContent(), /\d+ \/ \d+/);
    await page.getByRole("heading", { name: "LLM providers" }).waitFor();
    await shot(page, "server");
  });

  await check("the submit form", async () => {
    await page.goto(`${BASE}/ui/#/submit`);
    await page.getByRole("tab", { name: "Steps" }).click();
    await page.locator(".step-edit textarea").first().fill("echo hello > hello.txt");
    await page.getByRole("button", { name: "+ Python" }).click();
    await page.locator(".step-edit textarea").nth(1).fill("print(open('hello.txt').read())");
    await shot(page, "submit");
  });

  await check("on a phone, in dark mode, the job page is readable", async () => {
    const phone = await browser.newContext({
      viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, colorScheme: "dark", isMobile: true,
      storageState: await context.storageState(),
    });
    const p = await phone.newPage();
    guard(p, errors);
    await p.goto(`${BASE}/ui/#/jobs/${okJob}`);
    await waitStatus(p, "succeeded");
    const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `the page is ${overflow}px wider than the phone`);
    await shot(p, "job-phone-dark");
    await p.goto(`${BASE}/ui/#/jobs`);
    await p.locator(`tr[data-job-id="${okJob}"]`).waitFor();
    await shot(p, "jobs-phone-dark");
    await phone.close();
  });

  await check("the keyboard reaches the main controls", async () => {
    await page.goto(`${BASE}/ui/#/jobs`);
    await page.locator(`tr[data-job-id="${okJob}"]`).waitFor();
    const seen = new Set();
    for (let i = 0; i < 40; i++) {
      await page.keyboard.press("Tab");
      seen.add(await page.evaluate(() => {
        const el = document.activeElement;
        return el ? (el.getAttribute("aria-label") || el.textContent || "").trim().slice(0, 40) : "";
      }));
    }
    for (const want of ["Skip to content", "Jobs", "New job", "Server", "Log out", "all", "failed"]) {
      assert.ok(seen.has(want), `Tab never reached ${want}: ${[...seen].join(" | ")}`);
    }
  });

  await check("logging out drops the session", async () => {
    await page.getByRole("button", { name: "Log out" }).click();
    await page.getByLabel("API token").waitFor();
    assert.equal((await page.request.get(`${BASE}/jobs`)).status(), 401);
  });

  assert.deepEqual(errors, [], "the pages logged errors or reached another origin");
  await context.close();
} catch (e) {
  failures++;
} finally {
  await browser.close();
}
console.log(`${results.length} checks passed${failures ? ", 1 failed" : ""}`);
process.exit(failures ? 1 : 0);
