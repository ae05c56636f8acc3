//! End-to-end tests of the `agent` CLI: a local run in a real Docker sandbox, and the client
//! commands against a real `agent-server`, with their exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use support::*;

/// Writes `steps` as the plan file `name` in `dir`; returns its path.
fn steps_file(dir: &std::path::Path, name: &str, steps: serde_json::Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, steps.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

fn hello_plan() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plans/hello.json")
}

fn agent(cwd: &Path, scope: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(agent_binary());
    for k in [
        "ALCHEMYST_API_KEY",
        "ALCHEMYST_AI_API_KEY",
        "GEMINI_API_KEY",
        "OPENAI_BASE_URL",
        "AGENT_API_TOKEN",
        "AGENT_URL",
    ] {
        cmd.env_remove(k);
    }
    cmd.current_dir(cwd)
        .env("AGENT_IMAGE", image())
        .env("AGENT_DOCKER_SCOPE", scope)
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .expect("running agent")
}

/// `--url BASE --token TOKEN` followed by `extra`.
fn server_args(base: &str, token: &str, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--url".to_string(),
        base.to_string(),
        "--token".into(),
        token.into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn agent_run_executes_the_example_plan_locally_and_writes_the_zip() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let zip_path = dir.path().join("hello.zip");
    let plan = hello_plan();
    let out = agent(
        dir.path(),
        &unique_scope("cli-run"),
        &[
            "run",
            "--steps",
            plan.to_str().unwrap(),
            "--out",
            zip_path.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(
        code(&out),
        0,
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    assert_eq!(v["job"]["status"], "succeeded", "{v}");
    assert_eq!(v["zip"], zip_path.to_str().unwrap());
    let file = std::fs::File::open(&zip_path).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    for f in ["hello.txt", "report.json", "src/fib.py", "result.json"] {
        assert!(names.iter().any(|n| n == f), "{f} missing: {names:?}");
    }
    use std::io::Read;
    let mut report = String::new();
    zip.by_name("report.json")
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["fib"][14], 377);

    // Text mode: progress on stderr, the ZIP path on stdout.
    let out = agent(
        dir.path(),
        &unique_scope("cli-run-text"),
        &["run", "--steps", plan.to_str().unwrap()],
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(printed.ends_with(".zip"), "{printed}");
    assert!(dir.path().join(&printed).exists(), "{printed}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hello from Linux"), "{stderr}");
    assert!(stderr.contains("succeeded"), "{stderr}");

    // A failing step, stderr not a terminal: the final message says why.
    let failing = steps_file(
        dir.path(),
        "fail.json",
        json!([{"type": "shell", "command": "exit 3"}]),
    );
    let out = agent(
        dir.path(),
        &unique_scope("cli-run-fail"),
        &["run", "--steps", &failing],
    );
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.contains("failed") && last.contains("step 0 exited with code 3"),
        "{stderr}"
    );
}

#[test]
fn agent_run_exit_codes_for_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let scope = unique_scope("cli-usage");
    // A prompt with no LLM configured.
    let out = agent(dir.path(), &scope, &["run", "write a poem"]);
    assert_eq!(code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GEMINI_API_KEY"));
    // Neither a prompt nor steps.
    assert_eq!(code(&agent(dir.path(), &scope, &["run"])), 2);
    // A plan file that is not a plan.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"steps":[{"type":"shell"}]}"#).unwrap();
    let out = agent(
        dir.path(),
        &scope,
        &["run", "--steps", bad.to_str().unwrap()],
    );
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("command"));
    // Unknown flags.
    assert_eq!(code(&agent(dir.path(), &scope, &["run", "--bogus"])), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_client_commands_against_a_server() {
    require_docker();
    let scope = unique_scope("cli-client");
    let token = "cli-test-token";
    // A missing image the operator allows: the job is accepted and fails when it runs.
    let (dir, server) = TestServer::in_tempdir(
        &ServerOptions::new(&scope)
            .token(token)
            .env("AGENT_ALLOWED_IMAGES", "containerized-agent-missing:latest"),
    );
    let base = server.base.clone();
    let cwd = dir.path().to_path_buf();
    let run = move |args: Vec<String>| {
        let cwd = cwd.clone();
        let scope = scope.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                agent(&cwd, &scope, &args)
            })
            .await
            .unwrap()
        }
    };
    let with = |extra: &[&str]| server_args(&base, token, extra);
    let plan = hello_plan();
    let plan = plan.to_str().unwrap();

    // submit --wait follows the log and exits 0 when the job succeeds.
    let out = run(with(&["submit", "--steps", plan, "--wait"])).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from Linux"));

    // submit prints the id; status/jobs/logs/download work with it.
    let out = run(with(&["submit", "--steps", plan, "--json"])).await;
    assert_eq!(code(&out), 0);
    let id = stdout_json(&out)["job_id"].as_str().unwrap().to_string();
    server.wait_final(&id).await;
    let out = run(with(&["status", &id, "--json"])).await;
    assert_eq!(code(&out), 0);
    assert_eq!(stdout_json(&out)["status"], "succeeded");
    let out = run(with(&["status", &id])).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("succeeded"));
    let out = run(with(&["jobs", "--json"])).await;
    assert_eq!(stdout_json(&out)["total"], 2);
    let out = run(with(&["logs", &id])).await;
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote report.json"));
    let out = run(with(&["logs", "-f", &id])).await;
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("status succeeded"));
    let zip_path = dir.path().join("dl.zip");
    let out = run(with(&[
        "download",
        &id,
        "--out",
        zip_path.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let zip = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
    assert!(zip.file_names().any(|n| n == "result.json"));

    // A failing job: exit 1.
    let failing = steps_file(
        dir.path(),
        "fail.json",
        json!([{"type": "shell", "command": "exit 4"}]),
    );
    let out = run(with(&["submit", "--steps", &failing, "--wait"])).await;
    assert_eq!(code(&out), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or("")
            .contains("failed: step 0 exited with code 4"),
        "{stderr}"
    );

    // Cancel: a running job → 0; a finished one → 2 (409).
    let sleeper = steps_file(
        dir.path(),
        "sleep.json",
        json!([{"type": "shell", "command": "sleep 300"}]),
    );
    let out = run(with(&["submit", "--steps", &sleeper])).await;
    let sleeping = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = run(with(&["cancel", &sleeping])).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cancelled"));
    let out = run(with(&["cancel", &id])).await;
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already finished"));

    // Bad id → 2; unknown id → 4; no token → 2 (401); unreachable server → 3.
    assert_eq!(code(&run(with(&["status", "nope"])).await), 2);
    let out = run(with(&["status", "3f2b8c1e-9d4a-4c6b-8e2f-1a2b3c4d5e6f"])).await;
    assert_eq!(code(&out), 4);
    let out = run(vec!["--url".into(), server.base.clone(), "jobs".into()]).await;
    assert_eq!(code(&out), 2);
    let out = run(vec![
        "--url".into(),
        "http://127.0.0.1:9".into(),
        "jobs".into(),
    ])
    .await;
    assert_eq!(code(&out), 3);
    // Not a URL at all: a usage error, before anything is sent.
    let out = run(vec!["--url".into(), "not-a-url".into(), "jobs".into()]).await;
    assert_eq!(code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--url"));

    // A job that never had a sandbox has no archive: 6, not 4 ("no such job").
    let out = run(with(&[
        "submit",
        "--steps",
        plan,
        "--image",
        "containerized-agent-missing:latest",
        "--json",
    ]))
    .await;
    let no_zip = stdout_json(&out)["job_id"].as_str().unwrap().to_string();
    assert_eq!(server.wait_final(&no_zip).await["status"], "failed");
    let out = run(with(&["download", &no_zip])).await;
    assert_eq!(code(&out), 6, "{}", String::from_utf8_lossy(&out.stderr));

    // Terminal escapes in job output are removed by `agent logs`, kept with `--raw`.
    let escapes = steps_file(
        dir.path(),
        "escapes.json",
        json!([{"type": "shell", "command": r"printf '\033[31mred\033[0m \033]0;owned\007plain\n'"}]),
    );
    let out = run(with(&["submit", "--steps", &escapes, "--wait"])).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !out.stdout.contains(&0x1b),
        "submit --wait prints no escape"
    );
    let out = run(with(&["jobs", "--json"])).await;
    let escaped = stdout_json(&out)["jobs"][0]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    for follow in [false, true] {
        let mut args = vec!["logs", &escaped];
        if follow {
            args.push("-f");
        }
        let out = run(with(&args)).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.stdout.contains(&0x1b) && !out.stdout.contains(&0x07),
            "{text:?}"
        );
        assert!(text.contains("red plain"), "{text:?}");
        args.push("--raw");
        let out = run(with(&args)).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("\u{1b}[31mred"), "{text:?}");
    }
}

#[test]
fn the_cli_refuses_what_the_api_refuses() {
    let dir = tempfile::tempdir().unwrap();
    // No server listens there: the arguments are refused before any request.
    for args in [
        &[
            "submit",
            "--url",
            "http://127.0.0.1:9",
            "--network",
            "BRIDGE",
            "x",
        ][..],
        &["run", "--network", "Bridge", "x"][..],
    ] {
        let out = agent(dir.path(), &unique_scope("cli-args"), args);
        assert_eq!(
            code(&out),
            2,
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("expected \"none\" or \"bridge\""),
            "{stderr}"
        );
    }
}

/// Runs `agent` with `stdin` piped in.
fn agent_with_stdin(cwd: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(agent_binary())
        .current_dir(cwd)
        .env_remove("AGENT_API_TOKEN")
        .env_remove("AGENT_URL")
        .env("NO_COLOR", "1")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running agent");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sandbox_create_exec_cp_shell_ls_rm_against_a_server() {
    require_docker();
    let scope = unique_scope("cli-sandbox");
    let token = "cli-sandbox-token";
    let (dir, server) = TestServer::in_tempdir(&ServerOptions::new(&scope).token(token));
    let cwd = dir.path().to_path_buf();
    let base = server.base.clone();
    let with = |extra: &[&str]| server_args(&base, token, extra);
    let run = |args: Vec<String>| {
        let (cwd, scope) = (cwd.clone(), scope.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            agent(&cwd, &scope, &args)
        })
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    // `agent --url … --token … sandbox EXTRA…`
    let sandbox = |extra: &[&str]| {
        let args = [&["sandbox"], extra].concat();
        run(with(&args))
    };

    let out = sandbox(&["create", "--env", "GREETING=hi"]).await.unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(containers_of(&id).len(), 1);

    // exec: output printed, exit code mapped (0 / 1), state kept between calls.
    let out = sandbox(&["exec", &id, "echo $GREETING > g.txt; cat g.txt"])
        .await
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    let out = sandbox(&["exec", &id, "exit 3"]).await.unwrap();
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("exit code 3"),
        "{}",
        text(&out.stderr)
    );
    let out = sandbox(&["exec", &id, "--python", "--stateful", "x = 41"])
        .await
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = sandbox(&["exec", &id, "--python", "--stateful", "x + 1"])
        .await
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "42");

    // cp in and out, byte-exact.
    let local = dir.path().join("in.bin");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    std::fs::write(&local, &bytes).unwrap();
    let out = sandbox(&["cp", local.to_str().unwrap(), &format!("{id}:data/in.bin")])
        .await
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let back = dir.path().join("back.bin");
    let out = sandbox(&["cp", &format!("{id}:data/in.bin"), back.to_str().unwrap()])
        .await
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
    let out = sandbox(&["cp", "a", "b"]).await.unwrap();
    assert_eq!(code(&out), 2);

    // cp of a whole directory both ways: nested directories, a binary file, an empty one and a
    // unicode name, byte-exact.
    let tree = dir.path().join("tree");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a/b/c/deep.txt", b"deep\n".to_vec()),
        ("a/bin.dat", bytes[..1000].to_vec()),
        ("empty", Vec::new()),
        ("ünï/cødé ✓.txt", "ünï".as_bytes().to_vec()),
    ];
    for (name, content) in &files {
        let path = tree.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let out = sandbox(&["cp", tree.to_str().unwrap(), &format!("{id}:proj")])
        .await
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "/workspace/proj/ (4 files, 1010 bytes)"
    );
    let copy = dir.path().join("copy");
    let out = sandbox(&["cp", &format!("{id}:proj"), copy.to_str().unwrap()])
        .await
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    for (name, content) in &files {
        assert_eq!(&std::fs::read(copy.join(name)).unwrap(), content, "{name}");
    }
    // A link in the directory is refused by name; nothing of it is written.
    std::os::unix::fs::symlink("/etc/passwd", tree.join("ln")).unwrap();
    let out = sandbox(&["cp", tree.to_str().unwrap(), &format!("{id}:linked")])
        .await
        .unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("symbolic link"),
        "{}",
        text(&out.stderr)
    );
    let out = sandbox(&["exec", &id, "test ! -e linked"]).await.unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));

    // shell: each stdin line a step; the working files persist; exit codes reported in order.
    let args = with(&["sandbox", "shell", &id]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = agent_with_stdin(
        dir.path(),
        &args,
        "cat g.txt\nwc -c < data/in.bin\nfalse\n\necho done\n",
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n70000\ndone\n");
    let exits: Vec<String> = text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("[exit "))
        .map(str::to_string)
        .collect();
    assert_eq!(exits, ["[exit 0]", "[exit 0]", "[exit 1]", "[exit 0]"]);

    // ls shows it; rm destroys it and removes its container; a second rm is refused.
    let out = sandbox(&["ls", "--json"]).await.unwrap();
    assert_eq!(stdout_json(&out)["sandboxes"][0]["sandbox_id"], id.as_str());
    let out = sandbox(&["rm", &id]).await.unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(containers_of(&id).is_empty(), "container left after rm");
    let out = sandbox(&["rm", &id]).await.unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    let out = sandbox(&["exec", &id, "true"]).await.unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    let out = sandbox(&["exec", "00000000-0000-4000-8000-000000000000", "true"])
        .await
        .unwrap();
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
}
