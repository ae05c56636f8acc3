//! Tar-to-ZIP conversion of exported workspaces.
