//! agent-docker
#![forbid(unsafe_code)]
#![warn(missing_docs)]
