//! Docker executor benchmark: every figure is shown next to a baseline measured in the same run.
//!
//! ```text
//! cargo bench -p agent-benches --bench docker            # needs a Docker engine and the image
//! AGENT_BENCH_N=50 cargo bench -p agent-benches --bench docker
//! ```
//!
//! - step overhead: a `true` step through the supervisor vs `docker exec <same container> true`;
//! - cold sandbox: `create()` until ready to run vs `docker run --rm --network none IMAGE true`;
//! - warm pool: job accepted (`create()`) → first step (`true`) finished, with a ready pool;
//! - 32 sandboxes created at once, each running steps: failures and wall time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_benches::{after_warmup, bench_sandbox, docker_bench, median, ms, timed_docker};
use agent_core::executor::discard_output;
use agent_core::{Executor, JobId, JobSpec, RunStep, Sandbox, SandboxSpec, Step, StepRequest};
use agent_docker::DockerExecutor;

async fn true_step(sb: &dyn Sandbox) -> Duration {
    let t = Instant::now();
    let r = sb
        .run_step(
            StepRequest::new(0, Step::shell("true"), Duration::from_secs(30)),
            discard_output(),
        )
        .await
        .expect("run_step");
    let d = t.elapsed();
    assert!(r.success());
    d
}

fn row(name: &str, ours: Duration, base_name: &str, base: Duration, target: f64) {
    let ratio = ours.as_secs_f64() / base.as_secs_f64();
    println!(
        "| {name:<34} | {:>10} | {base_name:<44} | {:>10} | {ratio:>6.3}x | <= {target}x {} |",
        ms(ours),
        ms(base),
        if ratio <= target { "ok" } else { "MISSED" }
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some((n, config, exec)) = docker_bench("docker", 30).await else {
        return;
    };
    let image = config.image.clone();
    println!("# Docker executor benchmark (N = {n}, image {image})\n");
    println!(
        "| {:<34} | {:>10} | {:<44} | {:>10} | {:>7} | target |",
        "ours (median)", "", "baseline (median, same run)", "", "ratio"
    );
    println!("|{}|", "-".repeat(140));

    // 1. Per-step overhead vs docker exec, on the same container.
    let sb = bench_sandbox(&exec).await;
    for _ in 0..3 {
        true_step(&*sb).await;
        timed_docker(&["exec", sb.id(), "true"]).await;
    }
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..n {
        ours.push(true_step(&*sb).await);
        base.push(timed_docker(&["exec", sb.id(), "true"]).await);
    }
    row(
        "step overhead (`true` step)",
        median(ours),
        "`docker exec <same container> true`",
        median(base),
        0.2,
    );
    sb.destroy().await.expect("destroy");

    // 2. Cold sandbox ready to run vs docker run --rm.
    let (exec_ref, image_ref) = (&exec, image.as_str());
    let (ours, base): (Vec<_>, Vec<_>) = after_warmup(n, move || async move {
        let t = Instant::now();
        let sb = bench_sandbox(exec_ref).await;
        let d = t.elapsed();
        sb.destroy().await.expect("destroy");
        let b = timed_docker(&["run", "--rm", "--network", "none", image_ref, "true"]).await;
        (d, b)
    })
    .await
    .into_iter()
    .unzip();
    row(
        "cold sandbox create -> ready",
        median(ours),
        "`docker run --rm --network none IMAGE true`",
        median(base),
        0.8,
    );

    // 3. Warm pool: job accepted -> first step finished.
    let pool = DockerExecutor::connect(config.clone().with_warm_pool(2))
        .await
        .expect("pool executor");
    let mut warm = Vec::new();
    for _ in 0..n.min(20) {
        pool.wait_warm(Duration::from_secs(60)).await;
        let t = Instant::now();
        let sb = bench_sandbox(&pool).await;
        true_step(&*sb).await;
        warm.push(t.elapsed());
        sb.destroy().await.expect("destroy");
    }
    let warm = median(warm);
    println!(
        "| {:<34} | {:>10} | {:<44} | {:>10} | {:>7} | <= 15 ms {} |",
        "warm pool: accepted -> 1st step done",
        ms(warm),
        "(absolute target)",
        "",
        "",
        if warm <= Duration::from_millis(15) {
            "ok"
        } else {
            "MISSED"
        }
    );
    pool.shutdown().await.expect("pool shutdown");

    // 4. 32 sandboxes at once, each running steps.
    let t = Instant::now();
    let jobs = (0..32).map(|i| {
        let exec = exec.clone();
        async move {
            let sb: Arc<Box<dyn Sandbox>> = Arc::new(
                exec.create(&SandboxSpec::for_job(
                    JobId::new(),
                    &JobSpec::from_prompt("bench"),
                ))
                .await?,
            );
            let mut ok = true;
            for step in [
                Step::shell(format!("echo sandbox {i}")),
                Step::python(format!("print({i} * 2)")),
                Step::write_file("out.txt", "x"),
                Step::shell("cat out.txt && test -f out.txt"),
            ] {
                let r = sb
                    .run_step(
                        StepRequest::new(0, step, Duration::from_secs(120)),
                        discard_output(),
                    )
                    .await?;
                ok &= r.success();
            }
            sb.destroy().await?;
            Ok::<bool, agent_core::SandboxError>(ok)
        }
    });
    let results = futures::future::join_all(jobs).await;
    let wall = t.elapsed();
    let failures = results.iter().filter(|r| !matches!(r, Ok(true))).count();
    for r in &results {
        if let Err(e) = r {
            eprintln!("32-way failure: {e}");
        }
    }
    let t = Instant::now();
    let runs = (0..32).map(|_| {
        let image = image.clone();
        async move { timed_docker(&["run", "--rm", "--network", "none", &image, "true"]).await }
    });
    futures::future::join_all(runs).await;
    let base32 = t.elapsed();
    println!(
        "| {:<34} | {:>10} | {:<44} | {:>10} | {:>7} | 0 failures {} |",
        format!("32 sandboxes x 4 steps: {failures} failed"),
        ms(wall),
        "32 x `docker run --rm ... true` at once",
        ms(base32),
        format!("{:.3}x", wall.as_secs_f64() / base32.as_secs_f64()),
        if failures == 0 { "ok" } else { "MISSED" }
    );

    exec.shutdown().await.expect("shutdown");
}
