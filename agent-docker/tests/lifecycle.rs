//! Reaper, shutdown, warm pool, concurrency and connection errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use agent_core::{
    Executor, JobId, JobSpec, ResourceLimits, RunStep, SandboxErrorKind, SandboxSpec, Termination,
};
use bollard::query_parameters::ListContainersOptionsBuilder;
use common::*;

async fn containers_in_scope(exec: &agent_docker::DockerExecutor) -> Vec<(String, String)> {
    let scope = exec.config().scope.clone().unwrap();
    let mut filters = std::collections::HashMap::new();
    filters.insert("label".to_string(), vec![format!("agent.scope={scope}")]);
    let list = exec
        .docker()
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    list.into_iter()
        .map(|c| (c.id.unwrap(), c.names.unwrap_or_default().join(",")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_dropped_executor_are_reaped() {
    if skipped() {
        return;
    }
    let cfg = config("reaper").with_warm_pool(1);
    let live_job = JobId::new();
    let dead_job = JobId::new();
    {
        let first = connect(cfg.clone()).await;
        assert_eq!(first.wait_warm(Duration::from_secs(60)).await, 1);
        let cold = first
            .create(&SandboxSpec::for_job(
                dead_job,
                &JobSpec::from_prompt("x").with_limits(ResourceLimits {
                    pids: 100,
                    ..Default::default()
                }),
            ))
            .await
            .unwrap();
        let warm = first
            .create(&SandboxSpec::for_job(live_job, &JobSpec::from_prompt("x")))
            .await
            .unwrap();
        // A crash: no destroy, no shutdown, no destructors.
        std::mem::forget(cold);
        std::mem::forget(warm);
        drop(first);
    }
    // Give the warm container's rename and the pool refill time to land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = connect(cfg.clone().with_warm_pool(0)).await;
    let before = containers_in_scope(&second).await;
    assert!(
        before.len() >= 2,
        "the dropped executor left its containers: {before:?}"
    );
    let mut live = HashSet::new();
    live.insert(live_job);
    let removed = second.reap(&live).await.unwrap();
    assert_eq!(
        removed,
        before.len() - 1,
        "all but the live job's container: {before:?}"
    );
    let after = containers_in_scope(&second).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(
        after[0].1.contains(&live_job.to_string()),
        "the live job's (renamed warm) container stays: {after:?}"
    );
    assert_eq!(second.reap(&HashSet::new()).await.unwrap(), 1);
    assert!(containers_in_scope(&second).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_removes_everything_this_executor_created() {
    if skipped() {
        return;
    }
    let exec = connect(config("shutdown").with_warm_pool(1)).await;
    assert_eq!(exec.wait_warm(Duration::from_secs(60)).await, 1);
    let a = exec
        .create(&SandboxSpec::for_job(
            JobId::new(),
            &JobSpec::from_prompt("x"),
        ))
        .await
        .unwrap();
    let b = exec
        .create(&SandboxSpec::for_job(
            JobId::new(),
            &JobSpec::from_prompt("x").with_limits(ResourceLimits {
                cpus: 0.5,
                ..Default::default()
            }),
        ))
        .await
        .unwrap();
    assert_eq!(
        exec.wait_warm(Duration::from_secs(60)).await,
        1,
        "the pool refills"
    );
    assert_eq!(
        exec.wait_warm(Duration::MAX).await,
        1,
        "a timeout too large for an Instant does not overflow"
    );
    assert!(containers_in_scope(&exec).await.len() >= 3);
    exec.shutdown().await.unwrap();
    assert!(containers_in_scope(&exec).await.is_empty());
    assert!(a
        .run_step(
            agent_core::StepRequest::new(
                0,
                agent_core::Step::shell("true"),
                Duration::from_secs(5)
            ),
            agent_core::executor::discard_output()
        )
        .await
        .is_err());
    let err = exec
        .create(&SandboxSpec::for_job(
            JobId::new(),
            &JobSpec::from_prompt("x"),
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind, SandboxErrorKind::Unavailable);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_hands_out_hardened_containers_once() {
    if skipped() {
        return;
    }
    let exec = connect(config("pool").with_warm_pool(2)).await;
    assert_eq!(exec.wait_warm(Duration::from_secs(60)).await, 2);
    let job = JobId::new();
    let sb = exec
        .create(&SandboxSpec::for_job(
            job,
            &JobSpec::from_prompt("x").with_env("JOBVAR", "j"),
        ))
        .await
        .unwrap();
    let (r, out, _) = sh(&*sb, "echo $JOBVAR; id -u; ls /sys/class/net").await;
    assert!(r.success());
    assert_eq!(out, "j\n1000\nlo\n");
    // It carries the pool label and gets the job's name.
    let mut named = false;
    for _ in 0..50 {
        let info = exec
            .docker()
            .inspect_container(
                sb.id(),
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .unwrap();
        assert_eq!(
            info.config
                .unwrap()
                .labels
                .unwrap()
                .get("agent.pool")
                .map(String::as_str),
            Some("true")
        );
        if info.name.as_deref() == Some(format!("/agent-{job}").as_str()) {
            named = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(named, "a taken warm container is renamed agent-<job_id>");
    // Used once: destroyed, never handed out again.
    let id = sb.id().to_string();
    sb.destroy().await.unwrap();
    for _ in 0..3 {
        let other = exec
            .create(&SandboxSpec::for_job(
                JobId::new(),
                &JobSpec::from_prompt("x"),
            ))
            .await
            .unwrap();
        assert_ne!(other.id(), id);
        other.destroy().await.unwrap();
    }
    // A job with other limits or the bridge network gets a cold container of its own.
    let custom = exec
        .create(&SandboxSpec::for_job(
            JobId::new(),
            &JobSpec::from_prompt("x").with_limits(ResourceLimits {
                memory_bytes: 256 << 20,
                ..Default::default()
            }),
        ))
        .await
        .unwrap();
    let info = exec
        .docker()
        .inspect_container(
            custom.id(),
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    assert_eq!(info.host_config.unwrap().memory, Some(256 << 20));
    custom.destroy().await.unwrap();
    exec.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sandboxes_run_at_once() {
    if skipped() {
        return;
    }
    let exec = connect(config("many").with_max_concurrent_creates(4)).await;
    let jobs = (0..8).map(|i| {
        let exec = exec.clone();
        async move {
            let sb = exec
                .create(&SandboxSpec::for_job(
                    JobId::new(),
                    &JobSpec::from_prompt("x"),
                ))
                .await?;
            let (r, out, _) = sh(&*sb, &format!("echo {i}")).await;
            sb.destroy().await?;
            assert_eq!(r.termination, Termination::Exited);
            assert_eq!(out, format!("{i}\n"));
            Ok::<_, agent_core::SandboxError>(())
        }
    });
    for r in futures::future::join_all(jobs).await {
        r.unwrap();
    }
    exec.shutdown().await.unwrap();
}

#[tokio::test]
async fn no_engine_is_a_clear_error() {
    let err = agent_docker::DockerConfig::default()
        .with_docker_host("unix:///nonexistent/docker.sock")
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind, SandboxErrorKind::Unavailable);
    let msg = err.to_string();
    assert!(
        msg.contains("no Docker engine answers") && msg.contains("dockerd"),
        "{msg}"
    );
    let err = agent_docker::DockerConfig::default()
        .with_docker_host("ftp://x")
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind, SandboxErrorKind::Invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_an_image_error() {
    if skipped() {
        return;
    }
    let exec = connect(config("image")).await;
    let err = exec
        .create(&SandboxSpec::for_job(
            JobId::new(),
            &JobSpec::from_prompt("x").with_image("containerized-agent-missing:nope"),
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind, SandboxErrorKind::Image, "{err}");
    exec.ensure_image().await.unwrap();
    exec.shutdown().await.unwrap();
}
