//! Helpers for the integration tests in `tests/tests/`: where the built binaries and the
//! project's files are.

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The release `pspace` launcher that `make setup` builds (the tests exercise the real binary).
pub fn pspace_bin() -> PathBuf {
    repo_root().join("target/release/pspace")
}
