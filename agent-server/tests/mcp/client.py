"""Drives containerized-agent's MCP tools with the official MCP Python SDK (`mcp` from PyPI).

    client.py http URL TOKEN     the server's /mcp over streamable HTTP
    client.py stdio AGENT_BIN    `AGENT_BIN mcp` over stdio (it inherits this environment)
    client.py tenant URL TOKEN SANDBOX JOB
                                 as a tenant: another tenant's SANDBOX and JOB are unknown ids

Lists the tools, calls each one, checks the results and the errors, and prints one JSON line with
the ids it used (the Rust test checks their records and that their containers are gone). Exits
non-zero naming the failed check on any mismatch.
"""

import asyncio
import json
import os
import sys
import time

import httpx2
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

TOOLS = {
    "create_sandbox",
    "list_sandboxes",
    "run_command",
    "run_python",
    "write_file",
    "read_file",
    "plan_in_sandbox",
    "list_files",
    "destroy_sandbox",
    "run_job",
    "wait_job",
}
UNKNOWN_ID = "6f1c1a9e-4f7b-4c1e-9a57-0d6b2f3a8c11"


def leaves(e):
    """The exceptions inside (nested) exception groups."""
    inner = getattr(e, "exceptions", None)  # an exception group (a backport's, before 3.11)
    if isinstance(inner, (list, tuple)):
        return [x for i in inner for x in leaves(i)]
    return [e]


def text_of(result):
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


class CheckFailed(Exception):
    """A check on the server's answers failed."""


def check(cond, what, result=None):
    if not cond:
        detail = "" if result is None else f"\n  result: {result!r}"[:3000]
        raise CheckFailed(f"check failed: {what}{detail}")


def ok(result, what):
    check(not result.is_error, f"{what} succeeds", result)
    return result.structured_content


def refused(result, code, what):
    check(result.is_error, f"{what} is a tool error", result)
    check(code in text_of(result), f"{what}: the error names {code!r}", result)
    check(result.structured_content["error"]["code"] == code, f"{what}: error.code", result)


async def handshake(session):
    init = await session.initialize()
    check(init.server_info.name == "containerized-agent", "server name", init)
    tools = await session.list_tools()
    names = {t.name for t in tools.tools}
    check(names == TOOLS, f"tool names {sorted(names)}")
    for t in tools.tools:
        check(t.description, f"{t.name} has a description")
        check(t.input_schema.get("type") == "object", f"{t.name} input schema", t)
    by_name = {t.name: t for t in tools.tools}
    check(by_name["read_file"].annotations.read_only_hint is True, "read_file is marked read-only", by_name["read_file"])
    check(by_name["list_files"].annotations.read_only_hint is True, "list_files is marked read-only", by_name["list_files"])
    check(by_name["destroy_sandbox"].annotations.destructive_hint is True, "destroy_sandbox is marked destructive")
    schema = by_name["run_command"].input_schema
    check(set(schema.get("required", [])) == {"sandbox_id", "command"}, "run_command's required args", schema)


async def stateful_python(session, sandbox):
    r = await session.call_tool("run_python", {"sandbox_id": sandbox, "code": "import math\nx = 41"})
    check(ok(r, "run_python")["result"]["exit_code"] == 0, "run_python exit code", r)
    r = await session.call_tool("run_python", {"sandbox_id": sandbox, "code": "x += 1\nprint('x is', x)\nmath.sqrt(x * x)"})
    s = ok(r, "a second run_python")
    check(s["result"]["python"]["value"] == "42.0", "the variable and the import survived", r)
    check("x is 42" in text_of(r) and "value: 42.0" in text_of(r), "the value and stdout in the text", r)


async def exercise_http(session):
    """Every tool, its results and its errors; returns the ids used."""
    await handshake(session)

    s = ok(await session.call_tool("create_sandbox", {"idle_timeout_secs": 120}), "create_sandbox")
    sandbox = s["sandbox_id"]
    check(s["status"] == "running", "a new sandbox is running", s)

    listed = ok(await session.call_tool("list_sandboxes", {}), "list_sandboxes")
    check(sandbox in [x["sandbox_id"] for x in listed["sandboxes"]], "list_sandboxes lists it", listed)

    r = await session.call_tool("run_command", {"sandbox_id": sandbox, "command": "echo hello; echo oops >&2; exit 3"})
    s = ok(r, "a failing command (a result, not a tool error)")
    check(s["result"]["exit_code"] == 3 and s["status"] == "failed", "exit code 3", r)
    t = text_of(r)
    check("exit code 3" in t and "hello" in t and "oops" in t, "exit code and both tails in the text", r)

    await stateful_python(session, sandbox)
    r = await session.call_tool("run_python", {"sandbox_id": sandbox, "code": "1 / 0"})
    s = ok(r, "python that raises (a result)")
    check(s["result"]["exit_code"] != 0 and "ZeroDivisionError" in s["result"]["python"]["error"], "the exception", r)
    check("exception: ZeroDivisionError" in text_of(r), "the exception in the text", r)
    r = await session.call_tool("run_python", {"sandbox_id": sandbox, "code": "x"})
    check(ok(r, "state after an exception")["result"]["python"]["value"] == "42", "x is still 42", r)

    content = "line one\nünïcode ✓\n"
    s = ok(await session.call_tool("write_file", {"sandbox_id": sandbox, "path": "data/n.txt", "content": content}), "write_file")
    check(s["path"] == "/workspace/data/n.txt" and s["size_bytes"] == len(content.encode()), "write_file's answer", s)
    r = await session.call_tool("read_file", {"sandbox_id": sandbox, "path": "/workspace/data/n.txt"})
    ok(r, "read_file")
    check(text_of(r) == content, "the file round trip is exact", r)
    r = await session.call_tool("list_files", {"sandbox_id": sandbox, "path": "data"})
    s = ok(r, "list_files")
    check(s["files"] == [{"path": "n.txt", "size_bytes": len(content.encode())}] and s["path"] == "/workspace/data", "list_files names the file and its size", r)
    check("n.txt (" in text_of(r), "the listing in the text", r)
    refused(await session.call_tool("list_files", {"sandbox_id": sandbox, "path": "data/n.txt"}), "file_not_found", "list_files of a file")
    r = await session.call_tool("run_command", {"sandbox_id": sandbox, "command": "wc -c < data/n.txt"})
    check(ok(r, "wc")["result"]["stdout_tail"].strip() == str(len(content.encode())), "the file as the sandbox sees it", r)

    r = await session.call_tool("run_command", {"sandbox_id": sandbox, "command": "seq 1 50000"})
    s = ok(r, "a long output")
    t = text_of(r)
    check("[stdout truncated: only its last 4000 characters are shown]" in t, "a long output is cut with a note", r)
    check("\n50000\n" in t and "\n1\n" not in t, "the tail is kept", r)
    check(len(t) < 6000 and s["result"]["stdout_truncated"] is True, "the cut", r)

    r = await session.call_tool("run_command", {"sandbox_id": sandbox, "command": "sleep 30", "timeout_secs": 1})
    check(ok(r, "a timed-out command")["result"]["termination"] == "timed_out", "the step timeout", r)

    # Errors: bad arguments, paths, ids; each a tool error in the REST API's words.
    refused(await session.call_tool("run_command", {"sandbox_id": sandbox}), "invalid_input", "a missing argument")
    r = await session.call_tool("run_command", {"sandbox_id": sandbox, "command": "true", "bogus": 1})
    refused(r, "invalid_input", "an unknown argument")
    check("bogus" in text_of(r), "the unknown argument is named", r)
    r = await session.call_tool("run_command", {"sandbox_id": sandbox, "command": "true", "timeout_secs": 0})
    refused(r, "invalid_input", "a zero timeout")
    # The operator policy applies as on /sandboxes and /schedule: another image, the network.
    refused(await session.call_tool("create_sandbox", {"image": "busybox:latest"}), "policy_refused", "an image the policy does not allow")
    refused(await session.call_tool("create_sandbox", {"network": "bridge"}), "policy_refused", "a network the policy does not allow")
    refused(await session.call_tool("run_job", {"steps": [{"type": "shell", "command": "true"}], "image": "busybox:latest"}), "policy_refused", "a job's image")
    refused(await session.call_tool("read_file", {"sandbox_id": sandbox, "path": "../etc/passwd"}), "path_refused", "a path outside /workspace")
    refused(await session.call_tool("read_file", {"sandbox_id": sandbox, "path": "nope.txt"}), "file_not_found", "a missing file")
    refused(await session.call_tool("run_command", {"sandbox_id": "not-an-id", "command": "true"}), "invalid_job_id", "a malformed id")
    refused(await session.call_tool("run_command", {"sandbox_id": UNKNOWN_ID, "command": "true"}), "not_found", "an unknown sandbox")
    refused(await session.call_tool("write_file", {"sandbox_id": UNKNOWN_ID, "path": "a", "content": ""}), "not_found", "write_file on an unknown sandbox")
    try:
        r = await session.call_tool("no_such_tool", {})
        check(r.is_error, "an unknown tool is refused", r)
    except MCPError:
        pass

    started = time.monotonic()
    r = await session.call_tool("run_job", {"steps": [
        {"type": "shell", "command": "echo from-job > out.txt; cat out.txt"},
        {"type": "python", "code": "print(open('out.txt').read().upper())"},
    ], "wait_secs": 120})
    s = ok(r, "run_job")
    job = s["job_id"]
    check(s["status"] == "succeeded", "the job succeeded", r)
    check([x["result"]["exit_code"] for x in s["steps"]] == [0, 0], "each step's exit code", r)
    check("from-job" in text_of(r) and "FROM-JOB" in text_of(r), "the job's output", r)
    check(s["download_link"] == f"/download/{job}", "its result ZIP", r)
    job_secs = time.monotonic() - started
    s = ok(await session.call_tool("wait_job", {"job_id": job, "wait_secs": 5}), "wait_job on an ended job")
    check(s["status"] == "succeeded", "wait_job's status", s)
    r = await session.call_tool("run_job", {"prompt": "print the answer (planned-by-mcp)", "wait_secs": 120})
    s = ok(r, "run_job with a prompt")
    check(s["status"] == "succeeded" and "planned 42" in text_of(r), "the planned job ran its plan", r)
    refused(await session.call_tool("run_job", {"prompt": "   "}), "invalid_input", "a blank prompt")
    refused(await session.call_tool("run_job", {"steps": [{"type": "shell"}]}), "invalid_input", "a step without its command")
    refused(await session.call_tool("run_job", {"steps": [{"type": "shell", "command": "true"}], "wait_secs": 100000}), "invalid_input", "an unbounded wait")
    refused(await session.call_tool("wait_job", {"job_id": UNKNOWN_ID}), "not_found", "wait_job on an unknown job")

    s = ok(await session.call_tool("destroy_sandbox", {"sandbox_id": sandbox}), "destroy_sandbox")
    check(s["status"] == "succeeded", "a destroyed sandbox ends succeeded", s)
    refused(await session.call_tool("run_command", {"sandbox_id": sandbox, "command": "true"}), "already_finished", "a command on a destroyed sandbox")
    refused(await session.call_tool("run_python", {"sandbox_id": sandbox, "code": "x"}), "already_finished", "python on a destroyed sandbox")
    refused(await session.call_tool("read_file", {"sandbox_id": sandbox, "path": "data/n.txt"}), "already_finished", "read_file on a destroyed sandbox")
    refused(await session.call_tool("destroy_sandbox", {"sandbox_id": sandbox}), "already_finished", "destroying twice")
    listed = ok(await session.call_tool("list_sandboxes", {}), "list_sandboxes")
    check(sandbox not in [x["sandbox_id"] for x in listed["sandboxes"]], "a destroyed sandbox is not listed", listed)
    refused(await session.call_tool("plan_in_sandbox", {"sandbox_id": sandbox, "prompt": "more"}), "already_finished", "planning in a destroyed sandbox")

    # A sandbox handed to the server's planner: the plan runs in it, recorded as its steps.
    other = ok(await session.call_tool("create_sandbox", {}), "a second sandbox")["sandbox_id"]
    r = await session.call_tool("plan_in_sandbox", {"sandbox_id": other, "prompt": "print the answer (planned-in-sandbox)"})
    s = ok(r, "plan_in_sandbox")
    check(s["status"] == "succeeded" and "planned 42" in text_of(r), "the plan ran in the sandbox", r)
    check([x["index"] for x in s["steps"]] == [0], "the plan's step is the sandbox's first", r)
    refused(await session.call_tool("plan_in_sandbox", {"sandbox_id": other, "prompt": " "}), "invalid_input", "a blank prompt to plan")
    refused(await session.call_tool("plan_in_sandbox", {"sandbox_id": other, "prompt": "x", "max_repairs": 99}), "invalid_input", "too many repairs")
    ok(await session.call_tool("destroy_sandbox", {"sandbox_id": other}), "destroying the second sandbox")
    return {"sandbox_id": sandbox, "job_id": job, "job_secs": round(job_secs, 3)}


async def median_ms(call, n=20):
    times = []
    for _ in range(n):
        started = time.monotonic()
        await call()
        times.append(time.monotonic() - started)
    return round(sorted(times)[n // 2] * 1000, 2)


async def latency(session, http, base):
    """Median milliseconds of a `true` command in one sandbox, as an MCP tool call and as the
    REST API's POST /sandboxes/{id}/steps, from the same HTTP client (for the report)."""
    sandbox = ok(await session.call_tool("create_sandbox", {}), "create_sandbox")["sandbox_id"]

    async def over_mcp():
        r = await session.call_tool("run_command", {"sandbox_id": sandbox, "command": "true"})
        check(ok(r, "true")["result"]["exit_code"] == 0, "true exits 0", r)

    async def over_rest():
        r = await http.post(f"{base}/sandboxes/{sandbox}/steps", json={"step": {"type": "shell", "command": "true"}})
        check(r.status_code == 200 and r.json()["result"]["exit_code"] == 0, "true over REST", r.text)

    figures = {"mcp_true_median_ms": await median_ms(over_mcp), "rest_true_median_ms": await median_ms(over_rest)}
    ok(await session.call_tool("destroy_sandbox", {"sandbox_id": sandbox}), "destroy_sandbox")
    return {"latency_sandbox_id": sandbox, **figures}


async def http_main(url, token):
    # Same auth as the API: a wrong token gets no MCP session.
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer wrong-token"}) as http:
        try:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await asyncio.wait_for(session.initialize(), 30)
            raise CheckFailed("check failed: a wrong token got an MCP session")
        except CheckFailed:
            raise
        except Exception as e:  # the SDK raises the refusal as an MCPError inside task groups
            check(any(isinstance(x, (MCPError, httpx2.HTTPStatusError)) for x in leaves(e)), f"a wrong token is refused: {e!r}")

    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx2.Timeout(30.0, read=300.0)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                ids = await exercise_http(session)
                ids.update(await latency(session, http, url.removesuffix("/mcp")))
                return ids


async def stdio_main(agent):
    params = StdioServerParameters(command=agent, args=["mcp"], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await handshake(session)
            s = ok(await session.call_tool("create_sandbox", {}), "create_sandbox over stdio")
            sandbox = s["sandbox_id"]
            r = await session.call_tool("run_command", {"sandbox_id": sandbox, "command": "echo over-stdio; exit 7"})
            check(ok(r, "run_command over stdio")["result"]["exit_code"] == 7, "exit code over stdio", r)
            check("over-stdio" in text_of(r), "output over stdio", r)
            await stateful_python(session, sandbox)
            ok(await session.call_tool("write_file", {"sandbox_id": sandbox, "path": "f.txt", "content": "round trip"}), "write_file")
            r = await session.call_tool("read_file", {"sandbox_id": sandbox, "path": "f.txt"})
            check(text_of(r) == "round trip", "file round trip over stdio", r)
            refused(await session.call_tool("run_command", {"sandbox_id": UNKNOWN_ID, "command": "true"}), "not_found", "an unknown sandbox over stdio")
            refused(await session.call_tool("create_sandbox", {"image": "busybox:latest"}), "policy_refused", "the policy over stdio")
            # A second sandbox is left running: closing stdin must end it and remove its container.
            left = ok(await session.call_tool("create_sandbox", {}), "a second sandbox")["sandbox_id"]
            ok(await session.call_tool("destroy_sandbox", {"sandbox_id": sandbox}), "destroy_sandbox over stdio")
            refused(await session.call_tool("run_command", {"sandbox_id": sandbox, "command": "true"}), "already_finished", "a destroyed sandbox over stdio")
    return {"sandbox_id": sandbox, "left_sandbox_id": left}


async def tenant_main(url, token, sandbox, job):
    """Every tool a tenant calls on another tenant's sandbox or job answers exactly as for an
    unknown id, and list_sandboxes does not show it; the tenant's own sandbox works."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=120.0)) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                listed = ok(await session.call_tool("list_sandboxes", {}), "list_sandboxes")["sandboxes"]
                check(all(s["sandbox_id"] != sandbox for s in listed), "another tenant's sandbox is not listed", listed)
                calls = [
                    ("run_command", {"sandbox_id": sandbox, "command": "touch /workspace/intruder"}),
                    ("run_python", {"sandbox_id": sandbox, "code": "1"}),
                    ("write_file", {"sandbox_id": sandbox, "path": "intruder.txt", "content": "x"}),
                    ("read_file", {"sandbox_id": sandbox, "path": "secret.txt"}),
                    ("list_files", {"sandbox_id": sandbox}),
                    ("plan_in_sandbox", {"sandbox_id": sandbox, "prompt": "read secret.txt"}),
                    ("destroy_sandbox", {"sandbox_id": sandbox}),
                    ("wait_job", {"job_id": job, "wait_secs": 1}),
                ]
                for name, args in calls:
                    foreign = await session.call_tool(name, args)
                    refused(foreign, "not_found", f"{name} on another tenant's id")
                    swapped = {k: UNKNOWN_ID if v in (sandbox, job) else v for k, v in args.items()}
                    unknown = await session.call_tool(name, swapped)
                    same = text_of(foreign).replace(sandbox, "ID").replace(job, "ID")
                    check(same == text_of(unknown).replace(UNKNOWN_ID, "ID"), f"{name}: as for an unknown id", (foreign, unknown))
                own = ok(await session.call_tool("create_sandbox", {}), "create_sandbox")["sandbox_id"]
                listed = ok(await session.call_tool("list_sandboxes", {}), "list_sandboxes")["sandboxes"]
                check([s["sandbox_id"] for s in listed] == [own], "the tenant lists its own sandbox", listed)
                r = await session.call_tool("run_command", {"sandbox_id": own, "command": "echo mine"})
                check(ok(r, "run_command in its own sandbox")["result"]["exit_code"] == 0, "own sandbox runs", r)
                ok(await session.call_tool("destroy_sandbox", {"sandbox_id": own}), "destroy its own sandbox")
    return {"own_sandbox_id": own}


def main():
    mode = sys.argv[1]
    try:
        if mode == "http":
            ids = asyncio.run(http_main(sys.argv[2], sys.argv[3]))
        elif mode == "tenant":
            ids = asyncio.run(tenant_main(*sys.argv[2:6]))
        elif mode == "stdio":
            ids = asyncio.run(stdio_main(sys.argv[2]))
        else:
            raise CheckFailed(f"unknown mode {mode!r}")
    except BaseException as e:  # the SDK's task groups wrap what failed: name each part
        for leaf in leaves(e):
            print(f"{type(leaf).__name__}: {leaf}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(ids))


if __name__ == "__main__":
    main()
