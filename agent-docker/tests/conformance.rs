//! agent-core's executor conformance suite, on the real Docker engine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use agent_core::Executor;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_executor_passes_the_conformance_suite() {
    if skipped() {
        return;
    }
    let exec = connect(config("conformance")).await;
    agent_core::testing::executor_suite(Arc::new(exec.clone())).await;
    exec.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_sandboxes_pass_the_conformance_suite() {
    if skipped() {
        return;
    }
    let exec = connect(config("conformance-pool").with_warm_pool(2)).await;
    assert_eq!(exec.wait_warm(std::time::Duration::from_secs(60)).await, 2);
    agent_core::testing::executor_suite(Arc::new(exec.clone())).await;
    exec.shutdown().await.unwrap();
}
