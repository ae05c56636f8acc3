//! Test helpers: a fake executor and conformance suites (feature `test-util`).
