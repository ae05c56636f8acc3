//! Benchmark stub; replaced by its owner.
fn main() {}
