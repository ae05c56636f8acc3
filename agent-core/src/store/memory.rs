//! An in-memory job store.
