//! Example stub; replaced by its owner.
fn main() {}
