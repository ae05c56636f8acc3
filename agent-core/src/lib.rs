//! # agent-core
//!
//! The heart of containerized-agent, with no Docker, HTTP or database client of its own:
//!
//! - [`flow`] — a PocketFlow-style async Node/Flow engine;
//! - [`job`] — the job model: [`JobId`], [`JobSpec`], [`Step`], [`JobStatus`], events;
//! - the traits backends implement: [`LlmProvider`], [`Executor`]/[`Sandbox`], [`JobStore`];
//! - [`agent`] — the agent flow: plan with the LLM, run steps in a sandbox, repair, package;
//! - [`manager`] — the job manager: queue, workers, cancel, timeouts, live events, retention.
//!
//! Backends: `agent-docker` (the Docker executor), `agent-llm` (Alchemyst, Gemini,
//! OpenAI-compatible), and the stores in [`store`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod archive;
pub mod error;
pub mod events;
pub mod executor;
pub mod flow;
pub mod job;
pub mod llm;
pub mod manager;
mod serde_duration;
pub mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use error::{Error, Result};
pub use executor::{Executor, OutputSink, Sandbox, SandboxError, SandboxErrorKind, StepRequest};
pub use job::{
    EventKind, Job, JobEvent, JobId, JobSpec, JobStatus, NetworkMode, OutputStream, Plan,
    ResourceLimits, Step, StepKind, StepRecord, StepResult, StepStatus, Termination, TokenUsage,
};
pub use llm::{ChatChunk, ChatRequest, ChatResponse, LlmError, LlmErrorKind, LlmProvider, Message};
pub use store::{JobFilter, JobPage, JobStore, StoreError, StoreErrorKind};
