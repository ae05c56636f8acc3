//! The error type of agent-core.

use crate::executor::SandboxError;
use crate::job::{JobId, JobStatus};
use crate::llm::LlmError;
use crate::store::StoreError;

/// `Result` with agent-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in agent-core's public API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input was refused; `field` names what was wrong.
    #[error("invalid {field}: {message}")]
    InvalidInput {
        /// The offending field (dotted path, e.g. `steps[2].command`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A string that is not a job id.
    #[error("invalid job id {input:?}: {reason}")]
    InvalidJobId {
        /// The input (shortened).
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// No job with this id.
    #[error("job {0} not found")]
    JobNotFound(JobId),
    /// A status change that the lifecycle does not allow.
    #[error("a job cannot go from {from} to {to}")]
    InvalidTransition {
        /// Current status.
        from: JobStatus,
        /// Requested status.
        to: JobStatus,
    },
    /// The job already finished; the operation needs a live one.
    #[error("job {job_id} already finished with status {status}")]
    AlreadyFinished {
        /// The job.
        job_id: JobId,
        /// Its final status.
        status: JobStatus,
    },
    /// The plan from the LLM could not be used.
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    /// The job needs an LLM but none is configured.
    #[error(
        "this job needs an LLM provider (it has a prompt and no steps) but none is configured"
    )]
    NoLlm,
    /// The queue is full: too many jobs are waiting; try again later.
    #[error("the job queue is full ({limit} jobs waiting); try again later")]
    QueueFull {
        /// The configured limit of waiting jobs.
        limit: usize,
    },
    /// Every sandbox slot is taken (running jobs and live sandboxes count alike); try again later.
    #[error("all {limit} sandbox slots are in use (running jobs and live sandboxes count alike); try again later")]
    AtCapacity {
        /// The configured number of concurrent sandboxes.
        limit: usize,
    },
    /// The job manager is shutting down and accepts no more jobs.
    #[error("the job manager is shutting down")]
    ShuttingDown,
    /// Too little free space where jobs, logs and ZIPs are stored: new jobs are refused until
    /// some is freed.
    #[error(
        "only {free_bytes} bytes free on the file system of {path} (at least {min_free_bytes} \
         needed); no job is accepted until space is freed"
    )]
    InsufficientStorage {
        /// The directory checked.
        path: String,
        /// Bytes free there.
        free_bytes: u64,
        /// The configured threshold.
        min_free_bytes: u64,
    },
    /// The directories where jobs, logs and ZIPs are stored hold more than the configured cap
    /// ([`JobManagerConfig::max_stored_bytes`](crate::manager::JobManagerConfig::max_stored_bytes)):
    /// new jobs are refused until retention (or an operator) removes old ones.
    #[error(
        "{path} holds {stored_bytes} bytes, over this server's cap of {max_stored_bytes}; no job \
         is accepted until old jobs are removed (by retention)"
    )]
    StorageCapReached {
        /// The directories measured.
        path: String,
        /// Bytes they hold.
        stored_bytes: u64,
        /// The cap.
        max_stored_bytes: u64,
    },
    /// An LLM provider failed.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// The executor or a sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The job store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A flow ran more node transitions (node runs) than its limit allows; not about a job's
    /// steps.
    #[error("flow exceeded its limit of {limit} node transitions (an endless loop?)")]
    TransitionLimitExceeded {
        /// The limit ([`Flow::with_transition_limit`](crate::flow::Flow::with_transition_limit)).
        limit: usize,
    },
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The operation ran past its deadline.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Local I/O (artifacts, temporary files) failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The artifact store failed.
    #[error("{context}: {source}")]
    Artifact {
        /// What was being done.
        context: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Anything else, with its cause.
    #[error("{message}")]
    Other {
        /// What failed.
        message: String,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// An [`Error::InvalidInput`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Io`] with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// An [`Error::Other`] without a source.
    pub fn other(message: impl Into<String>) -> Self {
        Error::Other {
            message: message.into(),
            source: None,
        }
    }

    /// Prefixes the field of an [`Error::InvalidInput`] (`command` → `steps[2].command`).
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Error::InvalidInput { field, message } => Error::InvalidInput {
                field: format!("{prefix}.{field}"),
                message,
            },
            other => other,
        }
    }

    /// Whether this failed for want of disk space ([`Error::InsufficientStorage`], a full
    /// store, or an I/O error `StorageFull`/`ENOSPC` anywhere in its causes).
    pub fn is_storage_full(&self) -> bool {
        match self {
            Error::InsufficientStorage { .. } => true,
            Error::Store(e) if e.kind == crate::store::StoreErrorKind::Full => true,
            _ => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
                while let Some(e) = cause {
                    if let Some(io) = e.downcast_ref::<std::io::Error>() {
                        if io.kind() == std::io::ErrorKind::StorageFull {
                            return true;
                        }
                    }
                    cause = e.source();
                }
                false
            }
        }
    }

    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Llm(e) => e.is_retryable(),
            Error::Sandbox(e) => e.is_retryable(),
            Error::Store(e) => e.is_retryable(),
            Error::Io { .. }
            | Error::Artifact { .. }
            | Error::Timeout(_)
            | Error::QueueFull { .. }
            | Error::InsufficientStorage { .. }
            | Error::StorageCapReached { .. }
            | Error::AtCapacity { .. } => true,
            _ => false,
        }
    }
}
