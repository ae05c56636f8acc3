//! Whole-job benchmark: a one-step job (`true`) from `submit` to its final status, through the
//! job manager on a SQLite store and the Docker executor — what a user waits for, next to the
//! component figures of `docker.rs`. Every ratio is against a baseline measured in the same run.
//!
//! ```text
//! cargo bench -p agent-benches --bench job     # needs a Docker engine and the image
//! AGENT_BENCH_N=40 cargo bench -p agent-benches --bench job
//! RUST_LOG=agent_core=debug,agent_docker=debug cargo bench -p agent-benches --bench job  # + logs
//! ```
//!
//! - warm job: a ready warm pool of 1 (refilled between jobs, as for a newcomer's first job),
//!   `submit` → `wait` returns the finished job. Goal: p50 ≤ 30 ms.
//! - cold job: no pool, the same job, vs `docker run --rm --network none IMAGE true`, the two
//!   interleaved; each round waits until the job's container is removed (that removal runs after
//!   the status is published) so it does not overlap the baseline. Goal: ≤ 0.7×.
//! - job on a prepared container: a pool of 1 container created ahead but not started (it runs
//!   no process), the job starts it; vs `docker run --rm` again, interleaved. Goal: ≤ 0.7×.
//! - where the warm job's time goes: `step_finished` and the final status as offsets from the
//!   job's creation, from its stored events.
//! - the memory an idle warm container holds (its cgroup's usage), for the default pool size.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_benches::{after_warmup, docker_bench, load_average, percentile};
use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::sqlite::SqliteStore;
use agent_core::{EventKind, Job, JobSpec, JobStatus, Step};
use agent_docker::DockerExecutor;

/// How long a round waits for the warm pool to refill.
const WARM_WAIT: Duration = Duration::from_secs(60);
/// How long a manager's shutdown may take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn docker_cli(args: &[&str]) -> (Duration, String) {
    let t = Instant::now();
    let out = tokio::process::Command::new("docker")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .await
        .expect("the docker CLI");
    assert!(out.status.success(), "docker {args:?} failed");
    (
        t.elapsed(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn manager(exec: DockerExecutor, dir: &tempfile::TempDir) -> JobManager {
    let store = SqliteStore::open(dir.path().join("agent.db")).unwrap();
    let workers = JobManagerConfig::default().max_concurrent_jobs;
    agent_benches::bench_manager(Arc::new(exec), Arc::new(store), dir.path(), workers).await
}

/// Submits a one-step `true` job and waits for its final status.
async fn one_job(manager: &JobManager) -> (Duration, Job) {
    let spec = JobSpec::from_steps(vec![Step::shell("true")]);
    let t = Instant::now();
    let id = manager.submit(spec).await.unwrap();
    let job = manager.wait(id).await.unwrap();
    let d = t.elapsed();
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    (d, job)
}

/// Waits until the manager counts no sandbox (removals run after the status is published).
async fn settled(manager: &JobManager) {
    for _ in 0..3000 {
        if manager.stats().live_sandboxes == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("sandboxes were not removed: {:?}", manager.stats());
}

/// `step_finished` and the final status, in ms after the job's creation.
async fn offsets(manager: &JobManager, job: &Job) -> (f64, f64) {
    let events = manager.events(job.id, 0, 1000).await.unwrap();
    let at = |pred: &dyn Fn(&EventKind) -> bool| {
        events
            .iter()
            .find(|e| pred(&e.kind))
            .map(|e| (e.at - job.created_at).num_microseconds().unwrap_or(0) as f64 / 1e3)
            .unwrap_or(f64::NAN)
    };
    (
        at(&|k| matches!(k, EventKind::StepFinished { .. })),
        at(&|k| matches!(k, EventKind::Status { status, .. } if status.is_terminal())),
    )
}

/// The memory (cgroup v1 or v2 usage, MiB) of the idle warm containers of `scope`.
async fn idle_pool_memory(scope: &str) -> Vec<f64> {
    let (_, ids) = docker_cli(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=agent.scope={scope}"),
        "--filter",
        "label=agent.pool",
    ])
    .await;
    let mut out = Vec::new();
    for id in ids.lines().filter(|l| !l.is_empty()) {
        let candidates = [
            format!("/sys/fs/cgroup/memory/docker/{id}/memory.usage_in_bytes"),
            format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.current"),
        ];
        for path in candidates {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(bytes) = text.trim().parse::<f64>() {
                    out.push(bytes / (1 << 20) as f64);
                    break;
                }
            }
        }
    }
    out
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `RUST_LOG=agent_core=debug,agent_docker=debug`: where a job's time goes, on stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let Some((n, config, plain)) = docker_bench("job", 30).await else {
        return;
    };
    let scope = config.scope.clone().unwrap_or_default();
    let image = config.image.clone();
    let load = load_average();
    println!("# Whole-job benchmark (N = {n}, image {image}; load average at start: {load})");

    // 1. Warm: a pool of 1, refilled before each job.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let pool = DockerExecutor::connect(config.clone().with_warm_pool(1))
        .await
        .expect("pool executor");
    let warm_manager = manager(pool.clone(), &dir).await;
    let (pool_ref, manager_ref) = (&pool, &warm_manager);
    let rounds = after_warmup(n, move || async move {
        pool_ref.wait_warm(WARM_WAIT).await;
        let (d, job) = one_job(manager_ref).await;
        settled(manager_ref).await;
        let (s, f) = offsets(manager_ref, &job).await;
        (d, s, f)
    })
    .await;
    let mut warm: Vec<Duration> = rounds.iter().map(|r| r.0).collect();
    let mut step_done: Vec<f64> = rounds.iter().map(|r| r.1).collect();
    let mut published: Vec<f64> = rounds.iter().map(|r| r.2).collect();
    pool.wait_warm(WARM_WAIT).await;
    let memory = idle_pool_memory(&scope).await;
    warm_manager.shutdown(SHUTDOWN_GRACE).await.unwrap();
    let warm_p50 = percentile(&mut warm, 0.5);
    let warm_p90 = percentile(&mut warm, 0.9);
    step_done.sort_by(f64::total_cmp);
    published.sort_by(f64::total_cmp);

    // 2. Cold: no pool, interleaved with `docker run --rm`.
    let cold_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cold_manager = manager(plain.clone(), &cold_dir).await;
    let (manager_ref, image_ref) = (&cold_manager, image.as_str());
    let (mut cold, mut base): (Vec<_>, Vec<_>) = after_warmup(n, move || async move {
        let (d, _) = one_job(manager_ref).await;
        settled(manager_ref).await;
        let (b, _) = docker_cli(&["run", "--rm", "--network", "none", image_ref, "true"]).await;
        (d, b)
    })
    .await
    .into_iter()
    .unzip();
    cold_manager.shutdown(SHUTDOWN_GRACE).await.unwrap();
    let cold_p50 = percentile(&mut cold, 0.5);
    let base_p50 = percentile(&mut base, 0.5);
    let ratio = cold_p50.as_secs_f64() / base_p50.as_secs_f64();

    // 3. Prepared: one container created ahead but not started (no process, no memory),
    //    refilled before each job, interleaved with `docker run --rm` again.
    let prepared_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let prepared = DockerExecutor::connect(config.clone().with_prepared_pool(1))
        .await
        .expect("prepared-pool executor");
    let prepared_manager = manager(prepared.clone(), &prepared_dir).await;
    let (prepared_ref, manager_ref) = (&prepared, &prepared_manager);
    let (mut started, mut base2): (Vec<_>, Vec<_>) = after_warmup(n, move || async move {
        prepared_ref.wait_warm(WARM_WAIT).await;
        let (d, _) = one_job(manager_ref).await;
        settled(manager_ref).await;
        // The replacement is made before the baseline runs, not beside it.
        prepared_ref.wait_warm(WARM_WAIT).await;
        let (b, _) = docker_cli(&["run", "--rm", "--network", "none", image_ref, "true"]).await;
        (d, b)
    })
    .await
    .into_iter()
    .unzip();
    prepared_manager.shutdown(SHUTDOWN_GRACE).await.unwrap();
    let started_p50 = percentile(&mut started, 0.5);
    let base2_p50 = percentile(&mut base2, 0.5);
    let prepared_ratio = started_p50.as_secs_f64() / base2_p50.as_secs_f64();
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };

    println!();
    println!("| figure | ours | baseline (same run) | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| warm job, submit → final status (pool 1) | p50 {:.1} ms, p90 {:.1} ms | (absolute) | | p50 ≤ 30 ms {} |",
        ms(warm_p50),
        ms(warm_p90),
        verdict(warm_p50 <= Duration::from_millis(30))
    );
    println!(
        "| cold job, submit → final status | p50 {:.1} ms | `docker run --rm --network none IMAGE true` p50 {:.1} ms | {ratio:.3}× | ≤ 0.7× {} |",
        ms(cold_p50),
        ms(base_p50),
        verdict(ratio <= 0.7)
    );
    println!(
        "| job on a prepared container (created ahead, not started: `AGENT_PREPARED_POOL`) | p50 {:.1} ms | `docker run --rm --network none IMAGE true` p50 {:.1} ms | {prepared_ratio:.3}× | ≤ 0.7× {} |",
        ms(started_p50),
        ms(base2_p50),
        verdict(prepared_ratio <= 0.7)
    );
    let mid = step_done.len() / 2;
    println!(
        "| warm job: step_finished / final status after creation (event times, p50) | {:.1} ms / {:.1} ms | | | |",
        step_done[mid], published[mid]
    );
    match memory.as_slice() {
        [] => println!("| idle warm container memory | (no cgroup file found) | | | |"),
        m => println!(
            "| idle warm container memory (cgroup usage) | {:.1} MiB each ({} read) | | | |",
            m.iter().sum::<f64>() / m.len() as f64,
            m.len()
        ),
    }
}
