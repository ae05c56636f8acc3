//! Test helpers (feature `test-util`): a fake executor and the conformance suites every
//! [`Executor`](crate::Executor), [`JobStore`](crate::JobStore) and
//! [`LlmProvider`](crate::LlmProvider) must pass.
//!
//! - [`FakeExecutor`] runs steps as plain local processes in a temporary directory. It is **not a
//!   sandbox** and isolates nothing: use it in tests only, never to run untrusted code.
//!   [`FakeExecutor::noop`] runs nothing at all, for benchmarks of the job manager.
//! - [`executor_suite`] checks an executor's behaviour (exit codes, streaming, timeouts,
//!   cancellation, output caps, files, path confinement, export, destroy).
//! - [`store_suite`] checks a job store (CRUD, listing, paging, events, retention queries,
//!   concurrency).
//! - [`llm_suite`] checks an LLM provider (plain, JSON-mode, multi-turn and streamed answers).
//! - [`collect_bytes`], [`tar_entries`], [`zip_entry`] and [`zip_text`] read back exports and
//!   packaged ZIPs.
//! - [`tunnels`]: echo servers inside a sandbox and on the host's loopback, for the tunnel tests
//!   and benchmark.
//! - [`MockLlm`](crate::llm::MockLlm) is a mockall mock of the LLM trait for unit tests.
//!
//! The suites panic with a message naming the failed check, so call them from a `#[tokio::test]`.

mod archives;
mod executor_suite;
mod fake_executor;
mod llm_suite;
mod store_suite;
pub mod tunnels;

pub use archives::{collect_bytes, tar_entries, zip_entry, zip_text, TarEntry};
pub use executor_suite::{executor_suite, Collected};
pub use fake_executor::FakeExecutor;
pub use llm_suite::llm_suite;
pub use store_suite::store_suite;
