//! Test helpers (feature `test-util`): a fake executor and the conformance suites every
//! [`Executor`](crate::Executor) and every [`JobStore`](crate::JobStore) must pass.
//!
//! - [`FakeExecutor`] runs steps as plain local processes in a temporary directory. It is **not a
//!   sandbox** and isolates nothing: use it in tests only, never to run untrusted code.
//!   [`FakeExecutor::noop`] runs nothing at all, for benchmarks of the job manager.
//! - [`executor_suite`] checks an executor's behaviour (exit codes, streaming, timeouts,
//!   cancellation, output caps, files, path confinement, export, destroy).
//!   concurrency).
//!
//! The suites panic with a message naming the failed check, so call them from a `#[tokio::test]`.

mod executor_suite;
mod fake_executor;
mod store_suite;

pub use executor_suite::executor_suite;
pub use fake_executor::FakeExecutor;
pub use store_suite::store_suite;
