//! Building the agent image when it is missing.

use std::process::Stdio;

use agent_core::{SandboxError, SandboxErrorKind};
use bollard::Docker;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The offline build script (`images/agent/build-offline.sh`): debootstrap + `docker import`.
pub const BUILD_OFFLINE_SCRIPT: &str = include_str!("../../images/agent/build-offline.sh");

fn progress(line: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::info!(target: "agent_docker::image", "{line}");
    } else {
        eprintln!("[agent-image] {line}");
    }
}

pub(crate) async fn ensure_image(
    docker: &Docker,
    image: &str,
    host: &str,
    build_lock: &tokio::sync::Mutex<()>,
) -> Result<(), SandboxError> {
    let _guard = build_lock.lock().await;
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => {
            return Err(SandboxError::new(
                SandboxErrorKind::Unavailable,
                format!("could not inspect image {image:?}: {e}"),
            )
            .with_source(e))
        }
    }
    progress(&format!(
        "image {image:?} is missing; building it offline (debootstrap + docker import, ~1 minute)"
    ));
    let dir = tempfile::tempdir().map_err(|e| {
        SandboxError::new(
            SandboxErrorKind::Image,
            "cannot create a temporary directory",
        )
        .with_source(e)
    })?;
    let script = dir.path().join("build-offline.sh");
    tokio::fs::write(&script, BUILD_OFFLINE_SCRIPT)
        .await
        .map_err(|e| {
            SandboxError::new(SandboxErrorKind::Image, "cannot write the build script")
                .with_source(e)
        })?;
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&script)
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if host.starts_with("unix://") || host.starts_with("tcp://") {
        cmd.env("DOCKER_HOST", host);
    }
    let mut child = cmd.spawn().map_err(|e| {
        SandboxError::new(
            SandboxErrorKind::Image,
            "cannot run bash for the image build",
        )
        .with_source(e)
    })?;
    let mut tasks = Vec::new();
    if let Some(out) = child.stdout.take() {
        tasks.push(tokio::spawn(forward(BufReader::new(out))));
    }
    if let Some(err) = child.stderr.take() {
        tasks.push(tokio::spawn(forward(BufReader::new(err))));
    }
    let status = child.wait().await.map_err(|e| {
        SandboxError::new(SandboxErrorKind::Image, "the image build did not run").with_source(e)
    })?;
    let mut last = Vec::new();
    for t in tasks {
        if let Ok(lines) = t.await {
            last.extend(lines);
        }
    }
    if !status.success() {
        return Err(SandboxError::new(
            SandboxErrorKind::Image,
            format!(
                "building image {image:?} failed ({status}); it needs root, debootstrap and a Debian \
                 mirror (see images/agent/build-offline.sh), or build images/agent/Dockerfile where \
                 a registry is reachable. Last output: {}",
                last.join(" | ")
            ),
        ));
    }
    docker.inspect_image(image).await.map_err(|e| {
        SandboxError::new(
            SandboxErrorKind::Image,
            format!("image {image:?} still missing after the build: {e}"),
        )
    })?;
    progress(&format!("image {image:?} built"));
    Ok(())
}

/// Forwards lines as progress; returns the last few.
async fn forward<R: tokio::io::AsyncBufRead + Unpin>(reader: R) -> Vec<String> {
    let mut lines = reader.lines();
    let mut last = std::collections::VecDeque::new();
    while let Ok(Some(line)) = lines.next_line().await {
        progress(&line);
        if last.len() == 3 {
            last.pop_front();
        }
        last.push_back(line);
    }
    last.into()
}
