//! Benchmarks live in this directory; run them with `cargo bench -p agent-benches`.
