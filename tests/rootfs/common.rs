//! Helpers: running `dsbox`, the store shared by the tests that need a big build, scratch
//! stores, and running an environment seen at /opt/dsbox/env (private mount namespace).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// A finished `dsbox` (or other) command.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

pub fn output(cmd: &mut Command) -> Out {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `dsbox rootfs --store STORE ARGS...`
pub fn rootfs_cmd(store: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(dsbox_tests::dsbox_bin());
    cmd.arg("rootfs").arg("--store").arg(store).args(args);
    // Profiles come from the repo only, whatever the machine's user dir holds.
    cmd.env("DSBOX_PROFILES", "/nonexistent-dsbox-profiles");
    cmd
}

pub fn rootfs(store: &Path, args: &[&str]) -> Out {
    output(&mut rootfs_cmd(store, args))
}

/// `target/` (this test binary is target/<profile>/deps/rootfs-*).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// A scratch directory under target/ (removed on drop).
pub fn scratch() -> tempfile::TempDir {
    let base = target_dir().join("dsbox-rootfs-tests/scratch");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// The store shared by the tests of one run: big profiles are built once, not per test.
/// It lives under target/ and is reused across runs when it still verifies.
pub fn shared_store() -> PathBuf {
    target_dir().join("dsbox-rootfs-tests/store")
}

static SHARED: Mutex<()> = Mutex::new(());

/// The shared store's rootfs for `profile` (built on first use, verified otherwise).
/// Returns (store, env dir on the host).
pub fn shared(profile: &str) -> (PathBuf, PathBuf) {
    let _guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let store = shared_store();
    std::fs::create_dir_all(&store).unwrap();
    // Other test binaries (or a second `cargo test`) may build at the same time.
    let lock_file = std::fs::File::create(store.join("tests.lock")).unwrap();
    let _flock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let show = rootfs(&store, &["show", profile, "--json"]);
    let usable = show.code == 0 && rootfs(&store, &["verify", profile]).code == 0;
    if !usable {
        if show.code == 0 {
            rootfs(&store, &["rm", profile]).ok();
        }
        rootfs(&store, &["build", "--profile", profile]).ok();
    }
    let env = env_dir(&store, profile);
    (store, env)
}

/// The host path of a built rootfs's environment.
pub fn env_dir(store: &Path, name: &str) -> PathBuf {
    let list = rootfs(store, &["list", "--json"]).ok().json();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in list: {list}"));
    let path = PathBuf::from(row["path"].as_str().unwrap());
    if path.ends_with("root") {
        path.join("opt/dsbox/env")
    } else {
        path
    }
}

/// Asserts the store holds no name and no unfinished build.
pub fn assert_nothing_left(store: &Path) {
    let names: Vec<_> = std::fs::read_dir(store.join("names"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(names.is_empty(), "names left behind: {names:?}");
    let tmp: Vec<_> = std::fs::read_dir(store.join("tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "unfinished builds left behind: {tmp:?}");
}

/// Runs `python -c code` from `env` as a sandbox sees it: bound read-only at
/// /opt/dsbox/env in a private mount namespace, with no network (`unshare -n`) when
/// `offline`. Needs root, like the rest of the suite.
pub fn python_at_opt(env: &Path, code: &str, offline: bool) -> Out {
    let script = format!(
        "set -e; mount -t tmpfs dsbox-test /opt; mkdir -p /opt/dsbox/env; \
         mount --bind '{}' /opt/dsbox/env; mount -o remount,bind,ro /opt/dsbox/env; \
         cd /tmp; exec env -i PATH=/opt/dsbox/env/bin:/usr/bin:/bin HOME=/tmp /opt/dsbox/env/bin/python -c \"$0\"",
        env.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private"]);
    if offline {
        cmd.arg("-n");
    }
    cmd.args(["sh", "-c", &script, code]);
    output(&mut cmd)
}

/// PATH with every directory that holds a `uv` removed (the pip fallback).
pub fn path_without_uv() -> String {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let kept: Vec<&str> = path
        .split(':')
        .filter(|d| !d.is_empty() && !Path::new(d).join("uv").exists())
        .collect();
    kept.join(":")
}
