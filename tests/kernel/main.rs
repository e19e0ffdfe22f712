//! Integration tests: kernel. Real Python kernels (the `analysis` rootfs from the store,
//! see [`test_rootfs`]), driven through the Rust client; fake peers for the
//! malicious-kernel tests; the zygote forked and joined as root; sandboxed, pooled
//! kernels (real shells, the zygote in its own sandbox) as root.

mod cells;
mod cli;
mod limits;
mod malicious;
mod sandboxed;
mod zygote;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use dsbox_kernel::{CellResult, StandaloneConfig, StandaloneKernel};
use dsbox_rootfs::{EnsureOptions, Progress, Rootfs, Store};

/// The rootfs the kernel tests run on: the `analysis` profile (numpy, pandas,
/// matplotlib, scipy, ...) from the rootfs store, built on first use into a store under
/// the target dir (`$DSBOX_TEST_STORE` overrides it), profiles from the repo only.
pub fn test_rootfs() -> Rootfs {
    static ROOTFS: OnceLock<Rootfs> = OnceLock::new();
    ROOTFS
        .get_or_init(|| {
            let store = std::env::var_os("DSBOX_TEST_STORE")
                .map(PathBuf::from)
                .unwrap_or_else(|| target_dir().join("dsbox-kernel-tests/store"));
            let mut opts = EnsureOptions::new(Store::new(&store));
            opts.profiles_dir = None;
            dsbox_rootfs::ensure("analysis", &opts, &Progress::hidden()).unwrap_or_else(|e| {
                panic!(
                    "cannot build the `analysis` rootfs in {} for the kernel tests: {e}",
                    store.display()
                )
            })
        })
        .clone()
}

/// The Python of [`test_rootfs`] as seen from the host (its environment's interpreter),
/// for standalone kernels and zygotes outside sandboxes.
pub fn test_python() -> PathBuf {
    test_rootfs().env_dir_on_host().join("bin/python")
}

/// target/ (or $CARGO_TARGET_DIR): the test binary is target/<profile>/deps/<name>.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Default per-cell timeout in tests (generous: the machine is shared).
pub const CELL: Duration = Duration::from_secs(60);

pub async fn kernel() -> StandaloneKernel {
    StandaloneKernel::start(StandaloneConfig::new(test_python()))
        .await
        .expect("start a standalone kernel")
}

pub async fn run(kernel: &mut StandaloneKernel, code: &str) -> CellResult {
    kernel.execute(code, CELL).await.expect("execute")
}

/// This process's resident memory and its peak, in bytes (from /proc/self/status).
pub fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reset the peak RSS (VmHWM) to the current RSS.
pub fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", b"5").expect("reset VmHWM");
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
