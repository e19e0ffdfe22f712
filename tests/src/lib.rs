//! Shared helpers for dsbox's workspace-level integration tests: where the built binaries
//! are, and where the shared benchmark data lives.

use std::path::PathBuf;

/// The `dsbox` binary built by `cargo test --workspace` (cargo builds every binary of the
/// workspace before any test runs).
pub fn dsbox_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/dsbox
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let bin = profile_dir.join("dsbox");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so it gets built",
        bin.display()
    );
    bin
}
