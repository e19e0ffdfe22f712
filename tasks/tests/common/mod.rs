//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use dsbox_tasks::{DataRoot, SuiteRegistry};

/// The shared DSGym data: `$DSBOX_DSGYM_DATA`, else `<repo>/../shared/data/dsgym`.
/// `None` (with a one-line note on stderr) when it is not there; CI always has it.
pub fn shared_data(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("DSBOX_DSGYM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/dsgym")
        });
    if dir.join("task").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping {test}: DSGym data not found at {} (set DSBOX_DSGYM_DATA)",
            dir.display()
        );
        None
    }
}

/// The built-in registry over `root`, with the starter data in a fresh temp dir.
pub fn registry(root: PathBuf) -> (SuiteRegistry, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut reg = SuiteRegistry::builtin(DataRoot::at(root)).expect("built-in suites parse");
    reg.set_starter_dir(tmp.path().join("starter"));
    (reg, tmp)
}

/// A registry whose DSGym data root does not exist (starter and user suites only).
pub fn registry_without_data() -> (SuiteRegistry, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut reg = SuiteRegistry::builtin(DataRoot::at(tmp.path().join("no-such-root")))
        .expect("built-in suites parse");
    reg.set_starter_dir(tmp.path().join("starter"));
    (reg, tmp)
}
