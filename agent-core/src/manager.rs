//! The job manager.
