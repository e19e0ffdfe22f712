//! Integration tests: kernel. Real Python kernels (a venv with numpy, pandas and
//! matplotlib, see [`test_python`]), driven through the Rust client; fake peers for the
//! malicious-kernel tests; the zygote forked and joined as root.

mod cells;
mod limits;
mod malicious;
mod zygote;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use dsbox_kernel::{CellResult, StandaloneConfig, StandaloneKernel};

/// The Python used by the kernel tests: a venv with numpy, pandas and matplotlib, made
/// once per target dir with uv. The one place to switch to a rootfs from the store later.
pub fn test_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let dir = target_dir().join("dsbox-test-python");
            let python = dir.join("bin/python");
            let ready = dir.join(".dsbox-ready");
            if ready.exists() {
                return python;
            }
            // Test binaries may run in parallel: one creates the venv, the others wait.
            let _lock = FileLock::acquire(&target_dir().join("dsbox-test-python.lock"));
            if ready.exists() {
                return python;
            }
            let _ = std::fs::remove_dir_all(&dir);
            run_setup(
                Command::new("uv")
                    .args(["venv", "-q", "-p", "/usr/bin/python3"])
                    .arg(&dir),
            );
            run_setup(
                Command::new("uv")
                    .args(["pip", "install", "-q", "--compile-bytecode", "--python"])
                    .arg(&python)
                    .args(["numpy", "pandas", "matplotlib"]),
            );
            std::fs::write(&ready, b"").expect("mark the test venv ready");
            python
        })
        .clone()
}

fn run_setup(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} ({e}): install uv (`pip install uv`) to create the test Python")
    });
    assert!(
        status.success(),
        "{cmd:?} failed ({status}): the kernel tests need a Python venv"
    );
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

/// An exclusive flock, released when dropped.
struct FileLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

impl FileLock {
    fn acquire(path: &Path) -> FileLock {
        let file = std::fs::File::create(path).expect("create the venv lock file");
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("lock the venv lock file");
        FileLock(lock)
    }
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
