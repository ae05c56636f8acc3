#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attach;
mod config;
mod executor;
mod image;
mod sandbox;
pub mod services;
mod sockets;

pub use config::{
    DockerConfig, SeccompProfile, TunnelSockets, DEFAULT_DESKTOP_IMAGE, DEFAULT_IMAGE,
};
pub use executor::{
    DockerExecutor, LABEL_JOB_ID, LABEL_MANAGED, LABEL_OWNER, LABEL_POOL, LABEL_SCOPE,
};
pub use image::BUILD_OFFLINE_SCRIPT;
pub use sandbox::DockerSandbox;

/// The supervisor's Python source, as run inside every container (for inspection and audits).
pub const SUPERVISOR_SOURCE: &str = agent_core::supervisor::SOURCE;
