//! Helpers for the integration tests in `tests/tests/`: where the built binaries and the
//! project's files are.

use std::path::PathBuf;

pub mod cluster;
pub mod kube;
pub mod otlp;
pub mod partition;
pub mod pki;
pub mod seaweedfs;

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

/// `tests/data/tiny_run.toml`: the demo's shape on the tiny Qwen2 fixture (seconds on a CPU).
pub fn tiny_spec() -> PathBuf {
    repo_root().join("tests/data/tiny_run.toml")
}

/// (ran, already committed) from the summary line `pspace run` ends with on stderr.
pub fn summary_counts(stderr: &str) -> (usize, usize) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("done: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stderr}"));
    let inside = line
        .split('(')
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_default();
    let numbers: Vec<usize> = inside
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 2, "summary line: {line}");
    (numbers[0], numbers[1])
}
