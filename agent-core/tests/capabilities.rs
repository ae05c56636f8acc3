//! Capabilities decide: a job asking for what the executor cannot honour is refused at submit,
//! with the field named, and nothing is stored; the executor refuses such a sandbox too.
#![cfg(feature = "test-util")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agent_core::executor::Capabilities;
use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::memory::MemoryStore;
use agent_core::testing::FakeExecutor;
use agent_core::{
    Error, Executor, JobFilter, JobSpec, JobStatus, JobStore, NetworkMode, ResourceLimits,
    SandboxErrorKind, SandboxSpec, Step,
};

fn steps() -> JobSpec {
    JobSpec::from_steps(vec![Step::shell("true")])
}

#[tokio::test]
async fn jobs_the_executor_cannot_honour_are_refused_at_submit() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new());
    let manager = JobManager::builder(Arc::new(FakeExecutor::new()), store.clone())
        .config(JobManagerConfig::in_dir(dir.path()))
        .start()
        .await
        .unwrap();
    assert_eq!(manager.executor().capabilities(), Capabilities::NONE);

    let bridge = steps().with_network(NetworkMode::Bridge);
    match manager.submit(bridge).await {
        Err(Error::InvalidInput { field, message }) => {
            assert_eq!(field, "network");
            assert!(message.contains("network access"), "{message}");
        }
        other => panic!("a bridge network on the fake executor: {other:?}"),
    }
    let limited = steps().with_limits(ResourceLimits {
        memory_bytes: 256 << 20,
        ..ResourceLimits::default()
    });
    match manager.submit(limited).await {
        Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "limits"),
        other => panic!("custom limits on the fake executor: {other:?}"),
    }
    let page = store.list_jobs(&JobFilter::default()).await.unwrap();
    assert_eq!(page.total, 0, "nothing refused is stored");

    // What it can honour still runs.
    let id = manager.submit(steps()).await.unwrap();
    assert_eq!(manager.wait(id).await.unwrap().status, JobStatus::Succeeded);
}

#[test]
fn the_rules() {
    let bridge = SandboxSpec::new().with_network(NetworkMode::Bridge);
    let limited = SandboxSpec::new().with_limits(ResourceLimits {
        pids: 10,
        ..ResourceLimits::default()
    });
    for spec in [&bridge, &limited, &SandboxSpec::new()] {
        Capabilities::ISOLATED.check(spec).unwrap();
    }
    Capabilities::NONE.check(&SandboxSpec::new()).unwrap();
    assert!(Capabilities::NONE.check(&bridge).is_err());
    assert!(Capabilities::NONE.check(&limited).is_err());
    let no_network = Capabilities::ISOLATED.with_network(false);
    assert!(no_network.check(&bridge).is_err());
    no_network.check(&limited).unwrap();
    assert!(Capabilities::ISOLATED
        .with_resource_limits(false)
        .check(&limited)
        .is_err());
}

#[tokio::test]
async fn the_fake_executor_refuses_such_a_sandbox_itself() {
    let made = FakeExecutor::new()
        .create(&SandboxSpec::new().with_network(NetworkMode::Bridge))
        .await;
    let Err(err) = made else {
        panic!("the fake executor made a sandbox with a network")
    };
    assert_eq!(err.kind, SandboxErrorKind::Invalid);
}
