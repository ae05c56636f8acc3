//! agent-llm
#![forbid(unsafe_code)]
#![warn(missing_docs)]
