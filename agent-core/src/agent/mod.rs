//! The agent flow: plan, execute, repair, compile results.
