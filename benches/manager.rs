//! Job manager throughput: explicit one-step jobs on the no-op executor, submitted in bursts and
//! waited for, on the in-memory store and on SQLite. Reports jobs per second.
//!
//! Targets on a 2-core machine: ≥ 20,000 jobs/s in memory, ≥ 2,000 jobs/s on SQLite.
//!
//! Every job writes its ZIP, so the disk's file-creation rate bounds the result. The files go
//! under Cargo's target directory, not `/tmp`, and no directory is removed until the end of the
//! run (on ext4, mass deletion slows the next creations down for a while).
//!
//! `cargo bench -p agent-benches --bench manager`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::manager::JobManager;
use agent_core::store::memory::MemoryStore;
use agent_core::store::sqlite::SqliteStore;
use agent_core::testing::FakeExecutor;
use agent_core::{JobSpec, JobStatus, JobStore, Step};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const BURST: usize = 500;

async fn start(store: Arc<dyn JobStore>, dir: &tempfile::TempDir) -> JobManager {
    agent_benches::bench_manager(Arc::new(FakeExecutor::noop()), store, dir.path(), 64).await
}

/// Submits `n` jobs at once and waits for all of them.
async fn burst(manager: &JobManager, n: usize) -> Duration {
    let spec = JobSpec::from_steps(vec![Step::shell("true")]);
    let t = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(manager.submit(spec.clone()).await.unwrap());
    }
    for id in ids {
        let job = manager.wait(id).await.unwrap();
        assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    }
    t.elapsed()
}

/// A directory on the project's disk for the bench's files.
fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Median throughput of `rounds` bursts.
async fn median_rate(manager: &JobManager, rounds: usize) -> f64 {
    let mut rates = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        rates.push(BURST as f64 / burst(manager, BURST).await.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("job_manager");
    group.throughput(Throughput::Elements(BURST as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));

    // Every directory lives until the end of the run: on ext4, deleting thousands of files makes
    // the next file creations slow for a while, which would penalise the store measured next.
    let mut dirs = Vec::new();
    let mut report = Vec::new();
    for name in ["memory", "sqlite"] {
        let dir = bench_dir();
        let store: Arc<dyn JobStore> = match name {
            "memory" => Arc::new(MemoryStore::new()),
            _ => Arc::new(SqliteStore::open(dir.path().join("agent.db")).unwrap()),
        };
        let manager = rt.block_on(start(store, &dir));
        rt.block_on(burst(&manager, BURST));
        group.bench_with_input(BenchmarkId::new("noop_jobs", name), &manager, |b, m| {
            b.to_async(&rt).iter_custom(|iters| {
                let m = m.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += burst(&m, BURST).await;
                    }
                    total
                }
            })
        });
        report.push((name, rt.block_on(median_rate(&manager, 7))));
        rt.block_on(manager.shutdown(Duration::from_secs(5)))
            .unwrap();
        dirs.push(dir);
    }
    group.finish();
    println!(
        "\njob manager throughput (no-op executor, each job writes its ZIP; median of 7 bursts of {BURST} jobs)"
    );
    for (name, rate) in report {
        let target = if name == "memory" { 20_000.0 } else { 2_000.0 };
        println!(
            "  {name:<7} {rate:>8.0} jobs/s   target ≥ {target:.0} ({:.2}× target)",
            rate / target
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
