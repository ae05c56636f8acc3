//! Examples live in this directory; run one with `cargo run -p agent-examples --example NAME`.
