//! A full disk, for real: the output directory (SQLite database, ZIPs) is a tiny tmpfs the test
//! mounts (it runs as root, like CI) and fills with a file of its own.
//!
//! What must hold: below the free-space threshold `POST /schedule` answers 507
//! `insufficient_storage` (admission control), a write that fails for want of space is a 507 with
//! the same code (not a 500), a job whose result cannot be stored never stays `running` (the
//! watchdog finishes it as failed once it can write), service is normal once space is freed, and
//! nothing stored before is lost. With `AGENT_MAX_OUTPUT_BYTES`, an output directory over its
//! cap refuses new jobs and sandboxes (507 `storage_cap_reached`) until old ones go.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs (the test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Fills the file system with `filler` until no byte is left, then gives `leave` bytes
    /// back.
    fn fill(&self, leave: u64) {
        let path = self.dir.join("filler");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let chunk = vec![0x5a_u8; 64 << 10];
        let mut small = vec![0x5a_u8; 4096];
        loop {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        // The last bytes, page by page.
        while f.write_all(&small).is_ok() {}
        small.truncate(1);
        while f.write_all(&small).is_ok() {}
        let _ = f.flush();
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(leave)).unwrap();
    }

    fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// A body of about `bytes` (many steps), so that storing it needs fresh pages.
fn big_job(bytes: usize) -> Value {
    let command = format!("echo {}", "x".repeat(4000));
    let steps: Vec<Value> = (0..bytes / 4000)
        .map(|_| json!({"type": "shell", "command": command}))
        .collect();
    json!({ "steps": steps })
}

/// A server whose output directory is `out/` on a new 24 MiB tmpfs at `dir/name`, refusing new
/// jobs below `min_free_mb` MiB free.
fn server_on_tmpfs(dir: &Path, name: &str, min_free_mb: &str) -> (Tmpfs, TestServer) {
    let fs = Tmpfs::mount(&dir.join(name), "24m");
    let opts = ServerOptions::new(&unique_scope(&format!("disk-full-{name}")))
        .env("AGENT_MIN_FREE_MB", min_free_mb);
    let server = TestServer::start(&fs.dir.join("out"), &opts);
    (fs, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_output_dir_is_a_clear_507_and_no_job_is_left_running() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();

    // Admission control: below AGENT_MIN_FREE_MB, new jobs are refused before anything is written.
    let (fs, server) = server_on_tmpfs(dir.path(), "guarded", "4");
    let before = server.kept_job().await;

    fs.fill(1 << 20);
    let resp = server.post("/schedule", &shell_job("true")).await;
    assert_eq!(resp.status(), 507);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "insufficient_storage", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("free"),
        "{v}"
    );
    let (code, health) = server.get_json("/").await;
    assert_eq!(code, 200, "reads still work: {health}");
    // What was stored is still served.
    server.assert_kept(&before).await;
    fs.free();
    let after = server.schedule(shell_job("echo again > again.txt")).await;
    assert_eq!(server.wait_final(&after).await["status"], "succeeded");
    drop(server);
    drop(fs);

    // No threshold: the writes themselves fail.
    let (fs, server) = server_on_tmpfs(dir.path(), "raw", "0");
    let before = server.kept_job().await;

    // A job whose ZIP (and perhaps its final status) cannot be written.
    let running = server
        .schedule(shell_job(
            "head -c 4000000 /dev/urandom > big.bin; touch started; sleep 2",
        ))
        .await;
    server
        .wait_for(&running, "running", |v| v["status"] == "running")
        .await;
    fs.fill(0);
    // A new job cannot be stored: 507 with its own code, not 500.
    let (code, v) = server.post_json("/schedule", &big_job(600_000)).await;
    assert_eq!(code, 507, "{v}");
    assert_eq!(v["error"]["code"], "insufficient_storage", "{v}");

    // The manager is done with the job; whatever the store says, it is not `succeeded`.
    let start = Instant::now();
    while server.metric("agent_jobs_running").await > 0.0 {
        assert!(start.elapsed() < PATIENCE, "the job never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let st = server.status(&running).await;
    assert_ne!(st["status"], "succeeded", "{st}");
    let unsettled = server.metric("agent_jobs_unsettled").await;
    println!(
        "while full: the job is {} in the store, {unsettled} unsettled",
        st["status"]
    );

    // Space back: the watchdog finishes it as failed; service is normal.
    fs.free();
    let st = server.wait_final(&running).await;
    assert_eq!(st["status"], "failed", "{st}");
    let error = st["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        error.contains("space") || error.contains("full"),
        "the error says why: {st}"
    );
    let after = server.schedule(shell_job("echo again > again.txt")).await;
    assert_eq!(server.wait_final(&after).await["status"], "succeeded");
    let mut zip = server.download(&after).await;
    assert_eq!(zip_file(&mut zip, "again.txt"), "again\n");

    // Nothing stored before was lost.
    server.assert_kept(&before).await;
    drop(server);
}

/// `POST /schedule` until it answers `code` (the cap is measured every 2 s), bounded.
async fn schedule_until(server: &TestServer, code: u16) -> Value {
    let start = Instant::now();
    loop {
        let (got, v) = server.post_json("/schedule", &shell_job("true")).await;
        if got == code {
            return v;
        }
        assert!(got == 202 || got == 507, "{got}: {v}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never {code}: {got} {v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_dir_over_its_cap_refuses_new_jobs_until_old_ones_go() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let opts = ServerOptions::new(&unique_scope("disk-cap"))
        .env("AGENT_MIN_FREE_MB", "0")
        .env("AGENT_MAX_OUTPUT_BYTES", "3000000");
    let server = TestServer::start(&out, &opts);

    // A job whose ZIP (4 MB of random bytes) takes the directory over its 3 MB cap.
    let big = server
        .schedule(shell_job("head -c 4000000 /dev/urandom > big.bin"))
        .await;
    assert_eq!(server.wait_final(&big).await["status"], "succeeded");
    let zip_path = out.join("artifacts").join(format!("{big}.zip"));
    assert!(zip_path.metadata().unwrap().len() > 3_000_000);

    // New jobs and sandboxes are refused with their own code, naming the cap.
    let v = schedule_until(&server, 507).await;
    assert_eq!(v["error"]["code"], "storage_cap_reached", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("cap of 3000000"), "{v}");
    let (code, v) = server.post_json("/sandboxes", &json!({})).await;
    assert_eq!(code, 507, "{v}");
    assert_eq!(v["error"]["code"], "storage_cap_reached", "{v}");
    // What is stored is still served.
    let mut zip = server.download(&big).await;
    assert_eq!(zip.by_name("big.bin").unwrap().size(), 4_000_000);

    // Once the big ZIP goes (an operator, or retention), jobs are taken again.
    std::fs::remove_file(&zip_path).unwrap();
    let v = schedule_until(&server, 202).await;
    let id = v["job_id"].as_str().unwrap();
    assert_eq!(server.wait_final(id).await["status"], "succeeded");
}
