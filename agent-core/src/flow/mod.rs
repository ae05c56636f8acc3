//! The PocketFlow-style async Node/Flow engine.
