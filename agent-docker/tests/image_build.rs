//! The agent image is built automatically (offline: debootstrap + `docker import`) the first time
//! it is missing. Heavy (about a minute, needs root and debootstrap), so it runs when
//! `AGENT_TEST_IMAGE_BUILD=1` — which `.ci/run` sets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agent_core::{Executor, JobId, JobSpec, OutputStream, RunStep, SandboxSpec, Step};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_built_automatically_then_used() {
    if std::env::var("AGENT_TEST_IMAGE_BUILD").as_deref() != Ok("1") {
        eprintln!("set AGENT_TEST_IMAGE_BUILD=1 to run the image build test (CI does)");
        return;
    }
    if skipped() {
        return;
    }
    let image = format!("containerized-agent:autobuild-test-{}", std::process::id());
    let exec = connect(
        config("image-build")
            .with_image(image.clone())
            .with_auto_build_image(true),
    )
    .await;
    let docker = exec.docker().clone();
    assert!(
        docker.inspect_image(&image).await.is_err(),
        "the test image must not exist yet"
    );

    // Creating a sandbox finds the image missing, builds it, and goes on.
    let sandbox = exec
        .create(&SandboxSpec::for_job(
            JobId::new(),
            &JobSpec::from_prompt("build"),
        ))
        .await
        .expect("a sandbox on the freshly built image");
    let out = Collected::default();
    let result = sandbox
        .run_step(
            agent_core::StepRequest::new(
                0,
                Step::shell("id -un; python3 -c 'import venv, pip; print(\"ok\")'; git --version; curl --version | head -1; test -d /workspace"),
                std::time::Duration::from_secs(60),
            ),
            out.sink(),
        )
        .await
        .unwrap();
    assert!(
        result.success(),
        "{result:?} {}",
        out.text(OutputStream::Stderr)
    );
    let stdout = out.text(OutputStream::Stdout);
    assert!(stdout.starts_with("agent\nok\ngit version"), "{stdout}");
    sandbox.destroy().await.unwrap();
    exec.shutdown().await.unwrap();
    docker
        .remove_image(
            &image,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await
        .unwrap();
}
