#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod archive;
pub mod artifacts;
pub mod error;
pub mod events;
pub mod executor;
pub mod flow;
pub mod inputs;
pub mod job;
pub mod llm;
pub mod manager;
pub mod schema;
pub mod secret;
mod serde_duration;
pub mod store;
pub mod supervisor;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use agent::step::{RunStep, StepRequest};
pub use error::{Error, Result};
pub use executor::{
    ExecRequest, Executor, OutputSink, Sandbox, SandboxError, SandboxErrorKind, SandboxSpec,
    ServiceEndpoint,
};
pub use job::{
    EventKind, Job, JobEvent, JobId, JobSpec, JobStatus, KeepSandbox, KeptSandbox, LiveSettings,
    NetworkMode, OutputStream, Plan, PythonOutcome, ResourceLimits, SandboxEnd, SandboxEndReason,
    Service, Step, StepKind, StepRecord, StepResult, StepStatus, Termination, TokenUsage,
};
pub use llm::{ChatChunk, ChatRequest, ChatResponse, LlmError, LlmErrorKind, LlmProvider, Message};
pub use secret::SecretString;
pub use store::{JobFilter, JobPage, JobStore, StoreError, StoreErrorKind};
