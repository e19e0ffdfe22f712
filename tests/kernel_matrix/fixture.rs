//! The matrix's fixture: decides whether this host is a pure cgroup v2 host the tests can
//! run on (else every test returns early after one note on stderr), and gives the test
//! process a cgroup layout of its own, the way a service manager would:
//!
//! ```text
//! <cgroup2 mount>/dsbox-kernel-matrix-<pid>/    the "slice" (+memory +pids +cpu)
//!     runtime/                                  the test process: the library runtime
//!         dsbox-runtime/                        ...where the runtime moves itself
//!         dsbox/<sandbox id>/                   the sandboxes it starts
//!     cli-<n>/                                  one per `dsbox` command a test runs
//! ```
//!
//! Everything else on the host is left alone: the slice is removed by the next run once
//! this process is gone (a VM run throws the whole machine away anyway).

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dsbox_runtime::spec::{Mount, SandboxSpec};
use dsbox_runtime::{Sandbox, SpawnOptions, Stdio};
use dsbox_tests::PROBE_INSIDE;

/// `DSBOX_KERNEL_MATRIX=require`: a host that cannot run the matrix is a failure, not a
/// skip (set by tests/kernel_matrix/run-in-vm.sh inside the VM).
pub const REQUIRE_ENV: &str = "DSBOX_KERNEL_MATRIX";
/// The landlock ABI the runner expects this kernel to offer (the VM's 6.1 kernel: 2).
pub const EXPECT_ABI_ENV: &str = "DSBOX_MATRIX_LANDLOCK_ABI";
const SLICE_PREFIX: &str = "dsbox-kernel-matrix-";

/// What the tests need to know about the host and the layout made for them.
#[derive(Debug)]
pub struct Matrix {
    /// Mount point of the cgroup2 hierarchy.
    pub mount: PathBuf,
    /// The slice's cgroup path ("/dsbox-kernel-matrix-<pid>").
    pub slice: PathBuf,
    /// The test process's own cgroup path when it became the runtime ("<slice>/runtime").
    pub own: PathBuf,
    /// The landlock ABI of this kernel.
    pub landlock_abi: u32,
    /// Run by the VM runner: extra checks that only hold on a machine of our own.
    pub required: bool,
    next_cli: AtomicU32,
}

static MATRIX: OnceLock<Result<Matrix, String>> = OnceLock::new();

/// The fixture, or `None` (after one note on stderr) when this host cannot run the matrix.
/// Must be the first thing every test calls: it moves the process into its own cgroup
/// before the runtime detects (and caches) its cgroup.
pub fn matrix() -> Option<&'static Matrix> {
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "require");
    let m = MATRIX.get_or_init(|| {
        let r = setup(required);
        if let Err(why) = &r
            && !required
        {
            // Straight to fd 2: libtest captures eprintln! of passing tests, and this note
            // is the only sign that the target ran nothing.
            let _ = writeln!(
                std::io::stderr(),
                "kernel_matrix: skipped: {why}. These tests run on a pure cgroup v2 kernel: \
                 `./dev test-vm` runs them in ../shared/tools/vm-run (see docs/kernel-matrix.md)"
            );
        }
        r
    });
    match m {
        Ok(m) => Some(m),
        Err(why) if required => panic!("kernel_matrix: {REQUIRE_ENV}=require but: {why}"),
        Err(_) => None,
    }
}

fn setup(required: bool) -> Result<Matrix, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (the tests create cgroups and namespaces)".into());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mut v2_mount = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split_whitespace().collect();
        let r: Vec<&str> = right.split_whitespace().collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        match r[0] {
            "cgroup" => {
                let v1 = r[2]
                    .split(',')
                    .find(|o| matches!(*o, "memory" | "pids" | "cpu"));
                if let Some(ctrl) = v1 {
                    return Err(format!(
                        "this host mounts a cgroup v1 hierarchy ({ctrl} at {}), so it is not a pure cgroup v2 host",
                        l[4]
                    ));
                }
            }
            // A cgroup2 mount whose root offers the controllers (vm-run also leaves a
            // stale one under its shadowed sysfs; it has no readable cgroup.controllers).
            "cgroup2" if v2_mount.is_none() && l[3] == "/" => {
                let mount = PathBuf::from(l[4]);
                let ctrls =
                    std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
                if ["memory", "pids", "cpu"]
                    .iter()
                    .all(|c| ctrls.split_whitespace().any(|x| x == *c))
                {
                    v2_mount = Some(mount);
                }
            }
            _ => {}
        }
    }
    let mount = v2_mount.ok_or(
        "no cgroup2 hierarchy with the memory, pids and cpu controllers is mounted at its root",
    )?;
    enable(&mount, &["memory", "pids", "cpu"])?;
    sweep_stale_slices(&mount);
    let name = format!("{SLICE_PREFIX}{}", std::process::id());
    let slice_dir = mount.join(&name);
    std::fs::create_dir(&slice_dir)
        .map_err(|e| format!("cannot create {}: {e}", slice_dir.display()))?;
    enable(&slice_dir, &["memory", "pids", "cpu"])?;
    let runtime_dir = slice_dir.join("runtime");
    std::fs::create_dir(&runtime_dir)
        .map_err(|e| format!("cannot create {}: {e}", runtime_dir.display()))?;
    // Writing our pid moves every thread of the test process (cgroup.procs is per process).
    std::fs::write(
        runtime_dir.join("cgroup.procs"),
        std::process::id().to_string(),
    )
    .map_err(|e| {
        format!(
            "cannot move the test process into {}: {e}",
            runtime_dir.display()
        )
    })?;
    let slice = PathBuf::from("/").join(&name);
    let own = slice.join("runtime");
    let now = own_cgroup();
    if now != own {
        return Err(format!(
            "moved into {} but /proc/self/cgroup says {}",
            own.display(),
            now.display()
        ));
    }
    // Start (and destroy) one shell now: the runtime moves itself into its leaf and
    // enables the controllers in its own cgroup before any test forks children there
    // (a child still in that cgroup would make enabling them fail with EBUSY).
    let warm_up = SandboxSpec::builder()
        .with_memory(16 << 20)
        .build()
        .map_err(|e| e.to_string())?;
    Sandbox::spawn(&warm_up, SpawnOptions::default())
        .and_then(Sandbox::destroy)
        .map_err(|e| format!("the first sandbox failed: {e}"))?;
    Ok(Matrix {
        mount,
        slice,
        own,
        landlock_abi: dsbox_runtime::landlock::kernel_abi(),
        required,
        next_cli: AtomicU32::new(0),
    })
}

/// Enable controllers in `dir`'s cgroup.subtree_control (only those missing).
fn enable(dir: &Path, ctrls: &[&str]) -> Result<(), String> {
    let file = dir.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&file).unwrap_or_default();
    for c in ctrls {
        if !current.split_whitespace().any(|x| x == *c) {
            std::fs::write(&file, format!("+{c}"))
                .map_err(|e| format!("cannot enable {c} in {}: {e}", file.display()))?;
        }
    }
    Ok(())
}

/// Remove the slices of earlier runs whose process is gone.
fn sweep_stale_slices(mount: &Path) {
    for entry in std::fs::read_dir(mount).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(SLICE_PREFIX) else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let _ = std::fs::write(entry.path().join("cgroup.kill"), "1");
        remove_tree(&entry.path());
    }
}

/// rmdir a cgroup subtree, leaves first (retrying while killed tasks exit).
pub fn remove_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// This process's cgroup path in the unified hierarchy ("0::<path>").
pub fn own_cgroup() -> PathBuf {
    cgroup_of("self").unwrap_or_default()
}

/// The unified-hierarchy cgroup of process `pid` ("self" for us), if it exists.
pub fn cgroup_of(pid: &str) -> Option<PathBuf> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(PathBuf::from)
}

impl Matrix {
    /// Host directory of cgroup path `cg`.
    pub fn dir(&self, cg: &Path) -> PathBuf {
        self.mount.join(cg.strip_prefix("/").unwrap_or(cg))
    }

    /// Where the library runtime (this process) puts its sandboxes.
    pub fn sandbox_parent_dir(&self) -> PathBuf {
        self.dir(&self.own).join("dsbox")
    }

    /// A fresh empty cgroup `<slice>/<prefix>-<n>` (the own cgroup of one command).
    pub fn new_cgroup(&self, prefix: &str) -> PathBuf {
        let n = self.next_cli.fetch_add(1, Ordering::Relaxed);
        let cg = self.slice.join(format!("{prefix}-{n}"));
        std::fs::create_dir(self.dir(&cg)).expect("create a cgroup for a command");
        cg
    }

    /// `dsbox <args>` started as the only process of a fresh cgroup of its own, like a
    /// service; returns the command (not started) and that cgroup.
    pub fn dsbox_command(&self, args: &[&str]) -> (Command, PathBuf) {
        let cg = self.new_cgroup("cli");
        (self.dsbox_in(&cg, args), cg)
    }

    /// `dsbox <args>`, moved into cgroup `cg` before it execs.
    pub fn dsbox_in(&self, cg: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg(self.dir(cg).join("cgroup.procs"))
            .arg(dsbox_tests::dsbox_bin())
            .args(args);
        cmd
    }

    /// Run `dsbox <args>` in a cgroup of its own; afterwards check that it left nothing
    /// under its `dsbox/` parent, and remove its cgroup.
    pub fn dsbox(&self, args: &[&str]) -> Output {
        let (mut cmd, cg) = self.dsbox_command(args);
        let out = cmd.output().expect("run dsbox");
        self.finish_cli_cgroup(&cg);
        out
    }

    /// After a `dsbox` command in `cg` ended: no sandbox cgroup may be left below it.
    pub fn finish_cli_cgroup(&self, cg: &Path) {
        let dir = self.dir(cg);
        let left = cgroup_children(&dir.join("dsbox"));
        assert!(
            left.is_empty(),
            "`dsbox` left sandbox cgroups behind: {left:?}"
        );
        remove_tree(&dir);
    }
}

/// Subdirectories (child cgroups) of `dir`.
pub fn cgroup_children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// A cgroup interface file, trimmed ("" when missing).
pub fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The value of `key` in a flat-keyed cgroup file (memory.events, cpu.stat, ...).
pub fn keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    read(dir, file).lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Is `pid` still a live (not zombie) process?
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Wait up to `limit` for `cond`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array for pipe2 to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Everything written to a pipe's read end until every writer closed it.
pub fn read_all(fd: OwnedFd) -> String {
    let mut s = String::new();
    std::fs::File::from(fd).read_to_string(&mut s).unwrap();
    s
}

/// A sandbox running `/probe ARGS...` (the dsbox-probe binary bound read-only).
pub fn probe_spec(args: &[&str]) -> SandboxSpec {
    let mut argv = vec![PROBE_INSIDE.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    SandboxSpec::builder()
        .with_command(argv)
        .with_memory(256 << 20)
        .with_pids(64)
        .with_mount(Mount::Bind {
            source: dsbox_tests::probe_bin(),
            destination: PROBE_INSIDE.into(),
            readonly: true,
        })
        .build()
        .unwrap()
}

/// Spawn `spec` with stdout into a pipe; returns the sandbox and the pipe's read end.
pub fn spawn_captured(spec: &SandboxSpec) -> (Sandbox, OwnedFd) {
    let (r, w) = pipe();
    let sb = Sandbox::spawn(
        spec,
        SpawnOptions {
            stdout: Stdio::Fd(w),
            stdin: Stdio::Null,
            ..SpawnOptions::default()
        },
    )
    .expect("spawn a sandbox");
    (sb, r)
}
