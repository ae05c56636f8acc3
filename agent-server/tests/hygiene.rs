//! Small things an operator relies on: the output directory and the database are private to the
//! server's user, and a job's environment values (often credentials) come back in no response.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use serde_json::json;
use support::*;

const SECRET: &str = "s3cr3t-value-9f1c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_is_private_and_env_values_are_never_returned() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // An existing, world-readable directory is made private too.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = TestServer::start(&out, &ServerOptions::new(&unique_scope("hygiene")));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&out.join("jobs.sqlite3")), 0o600);

    let id = server
        .schedule(json!({
            "steps": [{"type": "shell", "command": "test -n \"$TOKEN\" && echo has-token"}],
            "env": {"TOKEN": SECRET}
        }))
        .await;
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded", "{st}");
    let mut seen = vec![
        st.to_string(),
        server.get_json("/jobs").await.1.to_string(),
        server.logs_text(&id).await,
    ];
    assert!(
        seen[2].contains("has-token"),
        "the job got its env: {}",
        seen[2]
    );
    let stream = server.get(&format!("/logs/{id}/stream")).await;
    seen.push(stream.text().await.unwrap());
    let mut zip = server.download(&id).await;
    for i in 0..zip.len() {
        let mut text = String::new();
        let _ = zip.by_index(i).unwrap().read_to_string(&mut text);
        seen.push(text);
    }
    for text in &seen {
        assert!(!text.contains(SECRET), "an env value came back: {text}");
    }
}
