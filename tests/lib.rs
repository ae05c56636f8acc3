//! Cross-crate end-to-end tests (the library path); the server's live in `agent-server/tests`.
