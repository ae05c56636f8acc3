//! Result ZIPs in an S3-compatible bucket (`AGENT_ARTIFACTS=s3://bucket/prefix`), against a real
//! S3 server: moto's server mode (PyPI `moto[server]`, installed by scripts/setup-test-tools.sh)
//! on 127.0.0.1. Through the real `agent-server` binary and real Docker: a job's ZIP is uploaded
//! to the bucket (nothing stays in the local artifact directory), downloads and browses through
//! the server, and the retention sweep of a restarted server deletes it from the bucket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Instant;

use serde_json::json;
use support::*;

const BUCKET: &str = "agent-artifacts";
const PREFIX: &str = "team/zips";

/// moto's S3 server on a free port of 127.0.0.1, with one empty bucket.
async fn s3_server(dir: &std::path::Path) -> (Helper, String) {
    let port = free_port();
    let mut cmd = Command::new(test_tool("moto_server"));
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let mut moto = Helper::spawn(cmd, dir.join("moto.log"));
    let base = format!("http://127.0.0.1:{port}");
    moto.wait_ready(&base).await;
    let created = reqwest::Client::new()
        .put(format!("{base}/{BUCKET}"))
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "creating the bucket: {created:?}"
    );
    (moto, base)
}

/// The keys under `prefix` in the bucket, as S3's ListObjectsV2 tells them.
async fn keys(base: &str, prefix: &str) -> Vec<String> {
    let xml = reqwest::get(format!("{base}/{BUCKET}?list-type=2&prefix={prefix}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    xml.split("<Key>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_string()))
        .collect()
}

fn options(scope: &str, s3: &str) -> ServerOptions {
    ServerOptions::new(scope)
        .env("AGENT_ARTIFACTS", format!("s3://{BUCKET}/{PREFIX}"))
        .env("AWS_ENDPOINT", s3)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "moto-test-key")
        .env("AWS_SECRET_ACCESS_KEY", "moto-test-secret")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zips_go_to_the_bucket_download_through_the_server_and_retention_deletes_them() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let (moto, s3) = s3_server(dir.path()).await;
    let out = dir.path().join("out");
    let opts = options(&unique_scope("s3"), &s3);
    let mut server = TestServer::start(&out, &opts);

    // A job with a file bigger than one upload part (object_store's BufWriter uploads in
    // parts of 10 MiB), so the multipart path is what runs.
    let id = server
        .schedule(json!({"steps": [
            {"type": "shell", "command": "echo from-the-bucket > hello.txt"},
            {"type": "shell", "command": "head -c 12582912 /dev/urandom > big.bin"}
        ]}))
        .await;
    let status = server.wait_final(&id).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(
        keys(&s3, PREFIX).await,
        [format!("{PREFIX}/{id}.zip")],
        "the ZIP is in the bucket under the prefix"
    );
    let local_zips: Vec<_> = walk(&out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "zip"))
        .collect();
    assert!(
        local_zips.is_empty(),
        "ZIPs left on the host: {local_zips:?}"
    );

    // Downloaded through the server, streamed from the bucket.
    let mut zip = server.download(&id).await;
    assert_eq!(zip_file(&mut zip, "hello.txt"), "from-the-bucket\n");
    assert_eq!(
        zip.by_name("big.bin").unwrap().size(),
        12 << 20,
        "the big file came through whole"
    );
    // Browsing the ZIP reads it through a streamed copy.
    let (code, listing) = server.get_json(&format!("/download/{id}/files")).await;
    assert_eq!(code, 200, "{listing}");
    assert!(listing.to_string().contains("hello.txt"), "{listing}");
    let one = server.get(&format!("/download/{id}/files/hello.txt")).await;
    assert_eq!(one.status(), 200);
    assert_eq!(one.text().await.unwrap(), "from-the-bucket\n");
    assert_eq!(server.terminate(), Some(0), "{}", server.log_text());
    drop(server);

    // A server that keeps jobs for a tenth of a second sweeps this one at start-up: the record
    // and the object in the bucket go together.
    let server = TestServer::start(&out, &opts.clone().env("RETENTION_DAYS", "0.000001"));
    let start = Instant::now();
    loop {
        let (code, _) = server.get_json(&format!("/status/{id}")).await;
        if code == 404 && keys(&s3, PREFIX).await.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "retention did not remove the job and its ZIP (status {code}, keys {:?}):\n{}",
            keys(&s3, PREFIX).await,
            server.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let gone = server.get(&format!("/download/{id}")).await;
    assert_eq!(gone.status(), 404);
    let log = server.log_text();
    assert!(
        !log.contains("moto-test-secret"),
        "the secret key was logged:\n{log}"
    );
    drop(moto);
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}
