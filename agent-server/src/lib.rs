#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accept;
pub mod access;
mod answers;
pub mod api;
pub mod archive_browse;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod extract;
pub mod live;
pub mod logs;
pub mod mcp;
pub mod metrics;
pub mod openapi;
pub mod policy;
pub mod proxy;
pub mod relay;
pub mod routes;
pub mod sandbox_archive;
pub mod sandboxes;
pub mod server;
pub mod server_events;
pub mod server_info;
pub mod session;
pub mod tenants;
pub mod ui;
pub mod uploads;

pub use agent_core::SecretString;
pub use config::{LogFormat, ServerConfig};
pub use error::{ApiError, ErrorBody};
pub use routes::{app, ApiSettings, AppState};
pub use server::{build_state, serve, serve_on, ServeError};
