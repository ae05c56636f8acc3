//! The SQLite job store.
