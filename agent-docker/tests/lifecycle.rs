//! Reaper, shutdown, warm pool, concurrency and connection errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use agent_core::{
    Executor, JobId, JobSpec, ResourceLimits, RunStep, SandboxErrorKind, SandboxSpec, Termination,
};
use agent_docker::LABEL_OWNER;
use bollard::query_parameters::ListContainersOptionsBuilder;
use common::*;

/// The engine's containers of `exec`'s scope.
async fn summaries_in_scope(
    exec: &agent_docker::DockerExecutor,
) -> Vec<bollard::models::ContainerSummary> {
    let scope = exec.config().scope.clone().unwrap();
    let mut filters = std::collections::HashMap::new();
    filters.insert("label".to_string(), vec![format!("agent.scope={scope}")]);
    exec.docker()
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap()
}

/// The ids and names of the engine's containers of `exec`'s scope.
async fn containers_in_scope(exec: &agent_docker::DockerExecutor) -> Vec<(String, String)> {
    summaries_in_scope(exec)
        .await
        .into_iter()
        .map(|c| (c.id.unwrap(), c.names.unwrap_or_default().join(",")))
        .collect()
}

/// Not a test of its own: the owner that `a_reaper_removes_only_containers_whose_owner_is_gone`
/// kills with SIGKILL. It runs only when that test starts this binary with
/// `AGENT_TEST_OWNER_SCOPE` set: it makes a cold sandbox for job `AGENT_TEST_DEAD_JOB` and a warm
/// one (renamed from the pool) for `AGENT_TEST_LIVE_JOB`, says so, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_process_for_the_reaper_test() {
    let Ok(scope) = std::env::var("AGENT_TEST_OWNER_SCOPE") else {
        return;
    };
    let job = |var: &str| -> JobId { std::env::var(var).unwrap().parse().unwrap() };
    let cfg = agent_docker::DockerConfig::from_env()
        .with_scope(scope)
        .with_label("containerized-agent.test", "1")
        .with_warm_pool(1);
    let owner = connect(cfg).await;
    assert_eq!(owner.wait_warm(Duration::from_secs(60)).await, 1);
    let cold = owner
        .create(
            &SandboxSpec::new()
                .with_job(job("AGENT_TEST_DEAD_JOB"))
                .with_limits(ResourceLimits {
                    pids: 100,
                    ..Default::default()
                }),
        )
        .await
        .unwrap();
    let warm = owner
        .create(&SandboxSpec::new().with_job(job("AGENT_TEST_LIVE_JOB")))
        .await
        .unwrap();
    let (r, _, _) = sh(&*cold, "true").await;
    assert!(r.success());
    // The pool has refilled: no container is half made when the owner is killed.
    assert_eq!(owner.wait_warm(Duration::from_secs(60)).await, 1);
    println!("OWNER-READY {} {}", owner.instance_id(), warm.id());
    tokio::time::sleep(Duration::from_secs(600)).await;
}

async fn state_of(exec: &agent_docker::DockerExecutor, id: &str) -> Option<String> {
    match exec
        .docker()
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        Ok(c) => Some(
            c.state
                .and_then(|s| s.status)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        ),
        Err(_) => None,
    }
}

async fn labels_of(exec: &agent_docker::DockerExecutor, id: &str) -> HashMap<String, String> {
    inspect(exec, id)
        .await
        .config
        .and_then(|c| c.labels)
        .unwrap_or_default()
}

/// Two servers on one engine (same scope, as with the default configuration): the second's
/// start-up reap leaves the first's running sandboxes alone, and removes those of an owner killed
/// with SIGKILL — which stop by themselves once their owner's attach is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaper_removes_only_containers_whose_owner_is_gone() {
    if skipped() {
        return;
    }
    let cfg = config("owners");
    let scope = cfg.scope.clone().unwrap();
    let live_job = JobId::new();
    let dead_job = JobId::new();

    // The first server: alive, with a sandbox of a job the second server does not know.
    let first = connect(cfg.clone()).await;
    let busy = first.create(&SandboxSpec::new()).await.unwrap();
    assert_eq!(
        labels_of(&first, busy.id()).await.get(LABEL_OWNER),
        Some(&first.instance_id().to_string()),
        "every container names its owner"
    );

    // A third owner in a process of its own, killed with SIGKILL.
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "owner_process_for_the_reaper_test",
            "--nocapture",
        ])
        .env("AGENT_TEST_OWNER_SCOPE", &scope)
        .env("AGENT_TEST_DEAD_JOB", dead_job.to_string())
        .env("AGENT_TEST_LIVE_JOB", live_job.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("OWNER-READY ") {
                return rest.to_string();
            }
        }
        panic!("the owner process ended before it was ready")
    })
    .await
    .expect("the owner process gets ready");
    let (dead_owner, _warm_id) = ready.split_once(' ').unwrap();
    assert_ne!(dead_owner, first.instance_id());
    child.start_kill().unwrap(); // SIGKILL: no destructor, no shutdown
    child.wait().await.unwrap();

    let theirs: Vec<String> = containers_in_scope(&first)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| *id != busy.id())
        .collect();
    assert!(
        theirs.len() >= 3,
        "the killed owner left a cold, a warm and a pool container: {theirs:?}"
    );
    for id in &theirs {
        assert_eq!(
            labels_of(&first, id)
                .await
                .get(LABEL_OWNER)
                .map(String::as_str),
            Some(dead_owner)
        );
    }
    // Its containers stop by themselves (bounded wait): the engine closed their supervisors'
    // stdin when the owner's attach went away.
    let mut stopped = false;
    for _ in 0..600 {
        let mut running = 0;
        for id in &theirs {
            if state_of(&first, id).await.as_deref() == Some("running") {
                running += 1;
            }
        }
        if running == 0 {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stopped, "a dead owner's containers keep running");

    // The second server starts and reaps, sparing the jobs it will resume.
    let second = connect(cfg.clone()).await;
    assert_ne!(second.instance_id(), first.instance_id());
    // It sees whose jobs' sandboxes other instances made (restart recovery settles those of
    // its own store's finished jobs): the dead owner's two jobs and the first server's one.
    let jobs = second.sandbox_jobs().await.unwrap();
    assert!(
        jobs.contains(&dead_job) && jobs.contains(&live_job),
        "{jobs:?}"
    );
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    let mut live = HashSet::new();
    live.insert(live_job);
    let removed = second.reap(&live).await.unwrap();
    assert_eq!(
        removed,
        theirs.len() - 1,
        "all of the dead owner's containers but the live job's"
    );
    let left: Vec<(String, String)> = containers_in_scope(&second).await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter()
            .any(|(_, name)| name.contains(&live_job.to_string())),
        "the live job's (renamed warm) container stays: {left:?}"
    );
    // The first server's sandbox was never touched: it still runs steps.
    assert_eq!(
        state_of(&first, busy.id()).await.as_deref(),
        Some("running")
    );
    let (r, out, _) = sh(&*busy, "echo still-here").await;
    assert!(r.success() && out == "still-here\n", "{r:?} {out}");

    assert_eq!(second.reap(&HashSet::new()).await.unwrap(), 1);
    let left = containers_in_scope(&second).await;
    assert_eq!(left.len(), 1, "only the first server's sandbox: {left:?}");
    assert_eq!(left[0].0, busy.id());
    let (r, _, _) = sh(&*busy, "true").await;
    assert!(r.success());
    busy.destroy().await.unwrap();
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    assert!(containers_in_scope(&second).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_removes_everything_this_executor_created() {
    let Some(exec) = docker(config("shutdown").with_warm_pool(1)).await else {
        return;
    };
    assert_eq!(exec.wait_warm(Duration::from_secs(60)).await, 1);
    let a = sandbox(&exec, &JobSpec::from_prompt("x")).await;
    let b = sandbox(
        &exec,
        &JobSpec::from_prompt("x").with_limits(ResourceLimits {
            cpus: 0.5,
            ..Default::default()
        }),
    )
    .await;
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

/// A server stopped just after it started: its executor is shut down while the pool's first
/// containers are being made, then the process ends (here: the runtime is dropped, so nothing
/// the executor left running goes on).
#[test]
fn a_shutdown_while_the_pool_fills_leaves_no_container() {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let server = runtime();
    let scope = server.block_on(async {
        let exec = docker(
            config("early-shutdown")
                .with_warm_pool(2)
                .with_prepared_pool(1),
        )
        .await?;
        // Let the refill send its first creates to the engine.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(exec.warm_ready() < 2, "the pool was still filling");
        exec.shutdown().await.unwrap();
        exec.config().scope.clone()
    });
    drop(server);
    let Some(scope) = scope else {
        return;
    };
    runtime().block_on(async {
        let docker = bollard::Docker::connect_with_local_defaults().unwrap();
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![format!("agent.scope={scope}")]);
        let list = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        // Nothing is left, nor appears later (a create the engine was still doing).
        for pause in [Duration::ZERO, Duration::from_secs(2)] {
            tokio::time::sleep(pause).await;
            let left: Vec<_> = docker
                .list_containers(Some(list.clone()))
                .await
                .unwrap()
                .into_iter()
                .map(|c| (c.names, c.state))
                .collect();
            assert!(left.is_empty(), "left behind: {left:?}");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_containers_run_nothing_until_taken_then_start_hardened_once() {
    let Some(exec) = docker(config("prepared").with_prepared_pool(2)).await else {
        return;
    };
    exec.wait_warm(Duration::from_secs(60)).await;
    assert_eq!(exec.prepared_ready(), 2);
    assert_eq!(exec.warm_ready(), 0);
    // Made ahead but not started: no process runs in them.
    let waiting = pool_containers(&exec).await;
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    assert!(
        waiting.iter().all(|(_, state)| state == "created"),
        "{waiting:?}"
    );

    let (_, sb) = pooled_job(&exec).await;
    assert!(
        waiting.iter().any(|(id, _)| id == sb.id()),
        "the job took a prepared container"
    );
    let info = inspect(&exec, sb.id()).await;
    let hc = info.host_config.unwrap();
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(hc.network_mode.as_deref(), Some("none"));
    // Used once; its replacement is prepared (not started) once it is gone.
    let id = sb.id().to_string();
    sb.destroy().await.unwrap();
    exec.wait_warm(Duration::from_secs(60)).await;
    assert_eq!(exec.prepared_ready(), 2);
    let now = pool_containers(&exec).await;
    assert!(
        now.iter()
            .all(|(other, state)| other != &id && state == "created"),
        "{now:?}"
    );
    exec.shutdown().await.unwrap();
    assert!(
        pool_containers(&exec).await.is_empty(),
        "shutdown removes them"
    );
}

/// A job's sandbox with a variable of its own, checked to see it, as the non-root user, with
/// no network but loopback.
async fn pooled_job(exec: &agent_docker::DockerExecutor) -> (JobId, Box<dyn agent_core::Sandbox>) {
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
    (job, sb)
}

/// The ids and states of the engine's containers of `exec`'s scope.
async fn pool_containers(exec: &agent_docker::DockerExecutor) -> Vec<(String, String)> {
    summaries_in_scope(exec)
        .await
        .into_iter()
        .map(|c| {
            (
                c.id.unwrap_or_default(),
                c.state.map(|s| s.to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_cancelled_midway_leaves_no_container() {
    let Some(exec) = docker(config("cancelled-create").with_prepared_pool(1)).await else {
        return;
    };
    exec.wait_warm(Duration::from_secs(60)).await;
    // Cut off at points spread over a container's making (create, attach, start, ready),
    // cold and from the prepared pool alike; one that finished in time is destroyed.
    for ms in [5u64, 20, 40, 70, 100, 150, 220, 300, 400] {
        let spec = SandboxSpec::for_job(JobId::new(), &JobSpec::from_prompt("x"));
        if let Ok(made) = tokio::time::timeout(Duration::from_millis(ms), exec.create(&spec)).await
        {
            made.unwrap().destroy().await.unwrap();
        }
        // Labels keep a spec off the pool.
        let mut cold = SandboxSpec::for_job(JobId::new(), &JobSpec::from_prompt("x"));
        cold.labels.insert("cold".into(), "1".into());
        if let Ok(made) = tokio::time::timeout(Duration::from_millis(ms), exec.create(&cold)).await
        {
            made.unwrap().destroy().await.unwrap();
        }
    }
    // Only the prepared pool's own container stays (bounded wait for the removals).
    exec.wait_warm(Duration::from_secs(60)).await;
    let mut left = Vec::new();
    for _ in 0..200 {
        left = pool_containers(&exec).await;
        if left.len() <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        left.len() <= 1,
        "cancelled creates left containers: {left:?}"
    );
    exec.shutdown().await.unwrap();
    assert!(pool_containers(&exec).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_hands_out_hardened_containers_once() {
    let Some(exec) = docker(config("pool").with_warm_pool(2)).await else {
        return;
    };
    assert_eq!(exec.wait_warm(Duration::from_secs(60)).await, 2);
    let (job, sb) = pooled_job(&exec).await;
    // It carries the pool label and gets the job's name.
    let mut named = false;
    for _ in 0..50 {
        let info = inspect(&exec, sb.id()).await;
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
        let other = sandbox(&exec, &JobSpec::from_prompt("x")).await;
        assert_ne!(other.id(), id);
        other.destroy().await.unwrap();
    }
    // A job with other limits or the bridge network gets a cold container of its own.
    let custom = sandbox(
        &exec,
        &JobSpec::from_prompt("x").with_limits(ResourceLimits {
            memory_bytes: 256 << 20,
            ..Default::default()
        }),
    )
    .await;
    let info = inspect(&exec, custom.id()).await;
    assert_eq!(info.host_config.unwrap().memory, Some(256 << 20));
    custom.destroy().await.unwrap();
    exec.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sandboxes_run_at_once() {
    let Some(exec) = docker(config("many").with_max_concurrent_creates(4)).await else {
        return;
    };
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
    let refused = |host: &'static str| async move {
        agent_docker::DockerConfig::default()
            .with_docker_host(host)
            .build()
            .await
            .unwrap_err()
    };
    let err = refused("unix:///nonexistent/docker.sock").await;
    assert_eq!(err.kind, SandboxErrorKind::Unavailable);
    let msg = err.to_string();
    assert!(
        msg.contains("no Docker engine answers") && msg.contains("dockerd"),
        "{msg}"
    );
    assert_eq!(refused("ftp://x").await.kind, SandboxErrorKind::Invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_an_image_error() {
    let Some(exec) = docker(config("image")).await else {
        return;
    };
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
