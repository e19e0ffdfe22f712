//! Integration tests: eval. Full episodes through the fake OpenAI-compatible server (real
//! HTTP on loopback) into real sandboxes (dsbox-runtime + the kernel program, a rootfs
//! built from a small profile), and the `dsbox eval` / `report` / `demo` commands.
//! They run as root (namespaces, cgroups).

mod cli;
mod episodes;
mod run;
mod sandbox;
mod shared_data;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use dsbox_agent::sandbox::{ColdConfig, ColdFactory};
use dsbox_rootfs::{EnsureOptions, Progress, Rootfs, Store};
use dsbox_tasks::{DataRoot, LoadedSuite, SuiteRegistry};

/// The rootfs of these tests: `eval-test` (numpy, pandas, matplotlib), built once into a
/// store under the target dir.
pub const ROOTFS: &str = "eval-test";

/// target/ (or $CARGO_TARGET_DIR): the test binary is target/<profile>/deps/<name>.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

pub fn work_dir() -> PathBuf {
    let d = target_dir().join("dsbox-eval-tests");
    std::fs::create_dir_all(&d).expect("create the eval test dir");
    d
}

/// The store holding the test rootfs, and the profiles dir naming its profile.
pub fn store_and_profiles() -> (PathBuf, PathBuf) {
    let base = work_dir();
    let profiles = base.join("profiles");
    std::fs::create_dir_all(&profiles).expect("profiles dir");
    std::fs::write(
        profiles.join(format!("{ROOTFS}.toml")),
        "description = \"dsbox eval tests\"\npackages = [\"numpy\", \"pandas\", \"matplotlib\"]\npreload = [\"pandas\", \"numpy\"]\n",
    )
    .expect("write the test profile");
    (base.join("store"), profiles)
}

/// The test rootfs (built on first use; `ensure` serialises concurrent builds).
pub fn rootfs() -> Rootfs {
    static ROOT: OnceLock<Rootfs> = OnceLock::new();
    ROOT.get_or_init(|| {
        require_root();
        let (store, profiles) = store_and_profiles();
        let mut opts = EnsureOptions::new(Store::new(store));
        opts.profiles_dir = Some(profiles);
        dsbox_rootfs::ensure(ROOTFS, &opts, &Progress::hidden())
            .unwrap_or_else(|e| panic!("building the test rootfs failed: {e}"))
    })
    .clone()
}

pub fn factory() -> Arc<ColdFactory> {
    Arc::new(ColdFactory::new(ColdConfig::from_rootfs(&rootfs())))
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the eval tests need root (sandboxes use namespaces and cgroups)"
    );
}

/// The DSGym data shipped beside the checkout (CI has it), if present.
pub fn dsgym_root() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("DSBOX_DSGYM_DATA").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/dsgym")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("task").is_dir())
}

/// A registry with the starter data in a per-test directory.
pub fn registry(starter: &Path) -> SuiteRegistry {
    let root = dsgym_root().unwrap_or_else(|| PathBuf::from("/nonexistent-dsgym"));
    let mut reg = SuiteRegistry::builtin(DataRoot::at(root)).expect("built-in suites");
    reg.set_starter_dir(starter);
    reg
}

pub fn starter_suite(starter: &Path) -> LoadedSuite {
    registry(starter)
        .load("starter")
        .expect("load the starter suite")
}

/// A scratch directory under the target dir (removed on drop).
pub fn scratch() -> tempfile::TempDir {
    let base = work_dir().join("scratch");
    std::fs::create_dir_all(&base).expect("scratch base");
    tempfile::tempdir_in(base).expect("scratch dir")
}
