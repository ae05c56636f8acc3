//! agent-core's executor conformance suite, on the real Docker engine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use agent_core::Executor;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_executor_passes_the_conformance_suite() {
    let Some(exec) = docker(config("conformance")).await else {
        return;
    };
    agent_core::testing::executor_suite(Arc::new(exec.clone())).await;
    exec.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_sandboxes_pass_the_conformance_suite() {
    let Some(exec) = docker(config("conformance-pool").with_warm_pool(2)).await else {
        return;
    };
    assert_eq!(exec.wait_warm(std::time::Duration::from_secs(60)).await, 2);
    agent_core::testing::executor_suite(Arc::new(exec.clone())).await;
    exec.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_pool_sandboxes_pass_the_conformance_suite() {
    let Some(exec) = docker(config("conformance-prepared").with_prepared_pool(2)).await else {
        return;
    };
    exec.wait_warm(std::time::Duration::from_secs(60)).await;
    assert_eq!(exec.prepared_ready(), 2);
    agent_core::testing::executor_suite(Arc::new(exec.clone())).await;
    exec.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_follow_the_configuration() {
    let Some(exec) = docker(config("caps")).await else {
        return;
    };
    let caps = exec.capabilities();
    assert!(
        caps.isolated && caps.resource_limits && caps.network,
        "{caps:?}"
    );
    let closed = connect(config("caps-closed").with_allow_bridge_network(false)).await;
    assert!(!closed.capabilities().network);
    let bridge = agent_core::SandboxSpec::new().with_network(agent_core::NetworkMode::Bridge);
    assert!(closed.capabilities().check(&bridge).is_err());
    // The executor itself refuses it too (for callers that skip the manager).
    let err = match closed.create(&bridge).await {
        Ok(_) => panic!("a bridge sandbox on an executor that does not allow it"),
        Err(e) => e,
    };
    assert_eq!(err.kind, agent_core::SandboxErrorKind::Invalid);
    exec.shutdown().await.unwrap();
    closed.shutdown().await.unwrap();
}
