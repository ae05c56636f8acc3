//! Both job stores against the store conformance suite, plus SQLite-only checks.
#![cfg(feature = "test-util")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agent_core::store::memory::MemoryStore;
use agent_core::testing::store_suite;
use agent_core::JobStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_store_suite() {
    store_suite(|| async { Arc::new(MemoryStore::new()) as Arc<dyn JobStore> }).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let dir = Arc::new(dir);
    let n = std::sync::atomic::AtomicUsize::new(0);
    store_suite(|| {
        let path = dir
            .path()
            .join(format!(
                "db-{}",
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ))
            .join("agent.db");
        async move {
            Arc::new(agent_core::store::sqlite::SqliteStore::open(path).unwrap())
                as Arc<dyn JobStore>
        }
    })
    .await;
}
