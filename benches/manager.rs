//! Job manager throughput: explicit one-step jobs on the no-op executor, submitted in bursts and
//! waited for, on the in-memory store and on SQLite. Reports jobs per second.
//!
//! Targets on a 2-core machine: ≥ 20,000 jobs/s in memory, ≥ 2,000 jobs/s on SQLite.
//!
//! `cargo bench -p agent-benches --bench manager`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::memory::MemoryStore;
use agent_core::store::sqlite::SqliteStore;
use agent_core::testing::FakeExecutor;
use agent_core::{JobSpec, JobStatus, JobStore, Step};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const BURST: usize = 500;

async fn start(store: Arc<dyn JobStore>, dir: &tempfile::TempDir) -> JobManager {
    JobManager::builder(Arc::new(FakeExecutor::noop()), store)
        .config(JobManagerConfig {
            max_concurrent_jobs: 64,
            artifact_dir: dir.path().join("artifacts"),
            retention: None,
            ..JobManagerConfig::default()
        })
        .start()
        .await
        .unwrap()
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

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("job_manager");
    group.throughput(Throughput::Elements(BURST as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));

    let mut report = Vec::new();
    for name in ["memory", "sqlite"] {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn JobStore> = match name {
            "memory" => Arc::new(MemoryStore::new()),
            _ => Arc::new(SqliteStore::open(dir.path().join("agent.db")).unwrap()),
        };
        let manager = rt.block_on(start(store, &dir));
        // Warm up, then one explicit measurement for the summary line.
        rt.block_on(burst(&manager, BURST));
        let elapsed = rt.block_on(burst(&manager, BURST * 4));
        report.push((name, (BURST * 4) as f64 / elapsed.as_secs_f64()));
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
        rt.block_on(manager.shutdown(Duration::from_secs(5)))
            .unwrap();
    }
    group.finish();
    println!(
        "\njob manager throughput (no-op executor, {} jobs per burst):",
        BURST * 4
    );
    for (name, rate) in report {
        let target = if name == "memory" { 20_000.0 } else { 2_000.0 };
        println!(
            "  {name:<7} {rate:>10.0} jobs/s   target ≥ {target:.0}   ({:.2}× target)",
            rate / target
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
