// Unit tests of the dashboard's pure helpers (node:test; run by agent-server/tests/dashboard_e2e.rs).

import assert from "node:assert/strict";
import test from "node:test";
import { cleanText, duration, headline, jobDuration, stepHeadline, bytes } from "../ui/js/dom.js";
import { requestedServices } from "../ui/js/job.js";
import { fileUrl } from "../ui/js/api.js";

test("terminal escapes and control characters are removed, text kept", () => {
  assert.equal(cleanText("\x1b[31mred\x1b[0m plain\r\n"), "red plain\n");
  assert.equal(cleanText("a\x07b\tc\x1b]0;title\x07d"), "ab\tcd");
  assert.equal(cleanText("héllo ✓"), "héllo ✓");
});

test("durations and sizes read naturally", () => {
  assert.equal(duration(250), "250 ms");
  assert.equal(duration(4_000), "4 s");
  assert.equal(duration(125_000), "2 min 5 s");
  assert.equal(duration(3_900_000), "1 h 5 min");
  assert.equal(duration(null), "");
  assert.equal(bytes(512), "512 B");
  assert.equal(bytes(1536), "1.5 KiB");
  assert.equal(bytes(5 * 1024 * 1024), "5.0 MiB");
  const job = { started_at: "2026-01-01T00:00:00Z", finished_at: "2026-01-01T00:00:03Z" };
  assert.equal(jobDuration(job), 3000);
  assert.equal(jobDuration({ started_at: null }), null);
});

test("a step is named by its description, else its command, code or path", () => {
  assert.equal(stepHeadline({ type: "shell", command: "\n  echo hi\nexit 1", description: " " }), "echo hi");
  assert.equal(stepHeadline({ type: "python", code: "print(1)", description: "count" }), "count");
  assert.equal(stepHeadline({ type: "write_file", path: "a/b.txt", content: "x" }), "write a/b.txt");
  assert.equal(headline("x".repeat(130)).length, 121);
});

test("file URLs encode each path segment, not the slashes", () => {
  assert.equal(fileUrl("j", "dir/my file#1.txt"), "/download/j/files/dir/my%20file%231.txt");
});

test("the services a job asked for are read from its status", () => {
  assert.deepEqual(requestedServices({}), []);
  assert.deepEqual(requestedServices({ services: ["desktop", { name: "jupyter" }] }), ["desktop", "jupyter"]);
  assert.deepEqual(requestedServices({ services: { desktop: {} } }), []);
});
