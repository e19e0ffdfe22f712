//! cgroups: one small abstraction over two backends. [`CgroupSystem::detect`] reads
//! /proc/self/mountinfo and /proc/self/cgroup (paths passed in, so tests use fake files)
//! and picks v2 when the unified hierarchy has the memory and pids controllers, else v1.
//! A sandbox's cgroup is `<parent>/dsbox/<id>` in each hierarchy, `<parent>` being the
//! runtime's own cgroup there (or the configured parent) — never a hierarchy root.

pub mod v1;
pub mod v2;

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors creating, limiting, inspecting or removing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot {op} {}: {error}{}", path.display(), hint(error))]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cgroup {} still has processes after kill; retry `dsbox gc` in a moment", path.display())]
    Busy { path: PathBuf },
    #[error("cannot enable cgroup v2 controllers in {}: it still holds processes other than dsbox; pass --cgroup-parent (or DSBOX_CGROUP_PARENT) naming a cgroup without processes", path.display())]
    InternalProcesses { path: PathBuf },
}

fn hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        ErrorKind::PermissionDenied => {
            " (run as root, or pass --cgroup-parent naming a cgroup delegated to you)"
        }
        _ => "",
    }
}

/// Result alias for cgroup operations.
pub type Result<T> = std::result::Result<T, CgroupError>;

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_owned();
    move |error| CgroupError::Io { op, path, error }
}

/// The limits a sandbox cgroup enforces.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CgroupLimits {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
    /// Also create a freezer cgroup (v1) for kill-all: needed when there is no pid
    /// namespace whose init takes every process with it.
    pub freezer: bool,
}

/// One mounted hierarchy: where it is mounted and which cgroup path its root is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hierarchy {
    /// Controllers (v1) — empty for the unified hierarchy.
    pub controllers: Vec<String>,
    /// Mount point.
    pub mount: PathBuf,
    /// The cgroup path of the mount's root (non-`/` inside some containers).
    pub mount_root: PathBuf,
    /// The runtime's own cgroup path in this hierarchy (from /proc/self/cgroup).
    pub own: PathBuf,
}

impl Hierarchy {
    /// Host directory of cgroup path `cgroup` (relative to the hierarchy's root).
    pub fn dir_of(&self, cgroup: &Path) -> PathBuf {
        let rel = cgroup.strip_prefix(&self.mount_root).unwrap_or(cgroup);
        self.mount.join(rel.strip_prefix("/").unwrap_or(rel))
    }
}

/// What this host offers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "version", rename_all = "snake_case")]
pub enum CgroupSystem {
    /// Unified hierarchy with controllers.
    V2 {
        hierarchy: Hierarchy,
        controllers: Vec<String>,
    },
    /// Legacy hierarchies, one per controller (or co-mounted group).
    V1 { hierarchies: Vec<Hierarchy> },
    /// No usable cgroup controllers.
    Unavailable { reason: String },
}

fn parse_mountinfo(text: &str) -> Vec<(PathBuf, PathBuf, String, Vec<String>)> {
    // (mount point, mount root, fstype, super options)
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split_whitespace().collect();
        let r: Vec<&str> = right.split_whitespace().collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        out.push((
            PathBuf::from(unescape(l[4])),
            PathBuf::from(unescape(l[3])),
            r[0].to_owned(),
            r[2].split(',').map(str::to_owned).collect(),
        ));
    }
    out
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(Ok(v)) = s.get(i + 1..i + 4).map(|o| u8::from_str_radix(o, 8))
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

impl CgroupSystem {
    /// Detect from the real /proc files.
    pub fn detect() -> CgroupSystem {
        Self::detect_from(
            Path::new("/proc/self/mountinfo"),
            Path::new("/proc/self/cgroup"),
        )
    }

    /// Detect from the given mountinfo and cgroup files.
    pub fn detect_from(mountinfo: &Path, self_cgroup: &Path) -> CgroupSystem {
        let (Ok(mi), Ok(cg)) = (
            std::fs::read_to_string(mountinfo),
            std::fs::read_to_string(self_cgroup),
        ) else {
            return CgroupSystem::Unavailable {
                reason: "cannot read /proc/self/mountinfo or /proc/self/cgroup".into(),
            };
        };
        Self::from_text(&mi, &cg)
    }

    /// Detect from file contents.
    pub fn from_text(mountinfo: &str, self_cgroup: &str) -> CgroupSystem {
        let mut own_v2 = None;
        let mut own_v1: Vec<(Vec<String>, PathBuf)> = Vec::new();
        for line in self_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && ctrls.is_empty() {
                own_v2 = Some(PathBuf::from(path));
            } else {
                own_v1.push((
                    ctrls.split(',').map(str::to_owned).collect(),
                    PathBuf::from(path),
                ));
            }
        }
        let mounts = parse_mountinfo(mountinfo);
        // A host can have several cgroup2 mounts (bind mounts, containers): take the
        // first one where our own cgroup offers memory and pids.
        for (mount, root, _, _) in mounts.iter().filter(|m| m.2 == "cgroup2") {
            let Some(own) = &own_v2 else { break };
            let hierarchy = Hierarchy {
                controllers: Vec::new(),
                mount: mount.clone(),
                mount_root: root.clone(),
                own: own.clone(),
            };
            // Controllers available to our parent: what a child of it could enable.
            let controllers: Vec<String> =
                std::fs::read_to_string(hierarchy.dir_of(own).join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
            if controllers.iter().any(|c| c == "memory") && controllers.iter().any(|c| c == "pids")
            {
                return CgroupSystem::V2 {
                    hierarchy,
                    controllers,
                };
            }
        }
        let mut hierarchies = Vec::new();
        for (mount, root, fstype, opts) in &mounts {
            if fstype != "cgroup" {
                continue;
            }
            let controllers: Vec<String> = opts
                .iter()
                .filter(|o| matches!(o.as_str(), "memory" | "pids" | "cpu" | "freezer"))
                .cloned()
                .collect();
            if controllers.is_empty() {
                continue;
            }
            let own = own_v1
                .iter()
                .find(|(c, _)| c.iter().any(|x| controllers.contains(x)))
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| root.clone());
            hierarchies.push(Hierarchy {
                controllers,
                mount: mount.clone(),
                mount_root: root.clone(),
                own,
            });
        }
        if hierarchies
            .iter()
            .any(|h| h.controllers.iter().any(|c| c == "memory" || c == "pids"))
        {
            return CgroupSystem::V1 { hierarchies };
        }
        CgroupSystem::Unavailable {
            reason: "no cgroup hierarchy with the memory or pids controller is mounted".into(),
        }
    }

    /// "v1", "v2" or "none".
    pub fn version(&self) -> &'static str {
        match self {
            CgroupSystem::V2 { .. } => "v2",
            CgroupSystem::V1 { .. } => "v1",
            CgroupSystem::Unavailable { .. } => "none",
        }
    }

    /// Create the cgroup(s) of sandbox `id` below `parent` (default: our own cgroup).
    pub fn create(
        &self,
        id: &str,
        parent: Option<&Path>,
        limits: &CgroupLimits,
    ) -> Result<Option<SandboxCgroup>> {
        match self {
            CgroupSystem::V2 {
                hierarchy,
                controllers,
            } => v2::V2Cgroup::create(hierarchy, controllers, id, parent, limits)
                .map(|c| Some(SandboxCgroup::V2(c))),
            CgroupSystem::V1 { hierarchies } => {
                v1::V1Cgroup::create(hierarchies, id, parent, limits)
                    .map(|c| Some(SandboxCgroup::V1(c)))
            }
            CgroupSystem::Unavailable { .. } => Ok(None),
        }
    }

    /// Where sandboxes' cgroups would go, per hierarchy (for `dsbox doctor`).
    pub fn sandbox_parents(&self, parent: Option<&Path>) -> Vec<PathBuf> {
        let base = |h: &Hierarchy| h.dir_of(parent.unwrap_or(&h.own)).join("dsbox");
        match self {
            CgroupSystem::V2 { hierarchy, .. } => vec![base(hierarchy)],
            CgroupSystem::V1 { hierarchies } => hierarchies.iter().map(base).collect(),
            CgroupSystem::Unavailable { .. } => Vec::new(),
        }
    }
}

/// Counters read back after a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    pub oom_kills: u64,
    /// How often a fork failed because of the pids limit.
    pub pids_max_events: u64,
}

/// What every backend does for one sandbox.
pub trait CgroupBackend {
    /// Every leaf directory.
    fn leaf_paths(&self) -> Vec<PathBuf>;
    /// Memory, OOM and pids counters.
    fn read_stats(&self) -> CgroupStats;
    /// Kill every member process.
    fn kill_members(&self) -> Result<()>;
}

impl CgroupBackend for v1::V1Cgroup {
    fn leaf_paths(&self) -> Vec<PathBuf> {
        self.paths()
    }
    fn read_stats(&self) -> CgroupStats {
        self.stats()
    }
    fn kill_members(&self) -> Result<()> {
        self.kill_all()
    }
}

impl CgroupBackend for v2::V2Cgroup {
    fn leaf_paths(&self) -> Vec<PathBuf> {
        vec![self.path().to_owned()]
    }
    fn read_stats(&self) -> CgroupStats {
        self.stats()
    }
    fn kill_members(&self) -> Result<()> {
        self.kill_all()
    }
}

/// A sandbox's cgroup(s): enum dispatch over the backends.
#[derive(Debug)]
pub enum SandboxCgroup {
    V1(v1::V1Cgroup),
    V2(v2::V2Cgroup),
}

impl SandboxCgroup {
    fn backend(&self) -> &dyn CgroupBackend {
        match self {
            SandboxCgroup::V1(c) => c,
            SandboxCgroup::V2(c) => c,
        }
    }

    /// Every leaf directory (for the state record and gc).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.backend().leaf_paths()
    }

    /// Open `cgroup.procs` of each leaf for writing: the child joins by writing "0".
    pub fn open_procs(&self) -> Result<Vec<OwnedFd>> {
        self.paths()
            .iter()
            .map(|p| {
                let f = p.join("cgroup.procs");
                File::options()
                    .write(true)
                    .open(&f)
                    .map(OwnedFd::from)
                    .map_err(io_err("open", &f))
            })
            .collect()
    }

    /// Memory, OOM and pids counters.
    pub fn stats(&self) -> CgroupStats {
        self.backend().read_stats()
    }

    /// Kill every process in the cgroup.
    pub fn kill_all(&self) -> Result<()> {
        self.backend().kill_members()
    }

    /// Remove the leaf cgroup(s); retries briefly while exiting tasks leave.
    pub fn remove(&self) -> Result<()> {
        let mut first_err = None;
        for p in self.paths() {
            if let Err(e) = remove_dir_retry(&p)
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The pids listed in `<dir>/cgroup.procs`.
pub fn read_procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `rmdir` with a short retry on EBUSY (tasks that are exiting still count as members).
pub fn remove_dir_retry(path: &Path) -> Result<()> {
    let mut delay = std::time::Duration::from_micros(200);
    for attempt in 0.. {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 40 => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_millis(50));
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(CgroupError::Busy { path: path.into() });
            }
            Err(e) => return Err(io_err("remove", path)(e)),
        }
    }
    Ok(())
}

/// Parse `key value` lines (memory.events, pids.events, memory.oom_control).
pub fn parse_flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next().and_then(|v| v.parse().ok()))?
    })
}

pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub(crate) fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(io_err("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_HYBRID: &str = "\
30 25 0:27 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
32 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
34 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";
    const SELF_HYBRID: &str = "4:memory:/process_api/abc\n8:pids:/\n1:cpu,cpuacct:/\n0::/\n";

    #[test]
    fn hybrid_hosts_without_v2_controllers_use_v1_below_our_own_cgroup() {
        let sys = CgroupSystem::from_text(MOUNTINFO_HYBRID, SELF_HYBRID);
        let CgroupSystem::V1 { hierarchies } = &sys else {
            panic!("expected v1, got {sys:?}")
        };
        assert_eq!(hierarchies.len(), 3);
        let mem = hierarchies
            .iter()
            .find(|h| h.controllers == ["memory"])
            .unwrap();
        assert_eq!(mem.own, Path::new("/process_api/abc"));
        let parents = sys.sandbox_parents(None);
        assert!(parents.contains(&PathBuf::from(
            "/sys/fs/cgroup/memory/process_api/abc/dsbox"
        )));
        assert!(parents.contains(&PathBuf::from("/sys/fs/cgroup/pids/dsbox")));
        let parents = sys.sandbox_parents(Some(Path::new("/custom")));
        assert!(parents.contains(&PathBuf::from("/sys/fs/cgroup/pids/custom/dsbox")));
    }

    #[test]
    fn v2_with_controllers_is_preferred() {
        let fs = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(fs.path().join("user.slice")).unwrap();
        std::fs::write(
            fs.path().join("user.slice/cgroup.controllers"),
            "cpu memory pids\n",
        )
        .unwrap();
        // A first cgroup2 mount without controllers (as inside some VMs) is skipped.
        let mi = format!(
            "30 25 0:27 / /nonexistent/cg rw - cgroup2 cgroup2 rw\n31 25 0:28 / {} rw - cgroup2 cgroup2 rw\n",
            fs.path().display()
        );
        let sys = CgroupSystem::from_text(&mi, "0::/user.slice\n");
        assert_eq!(sys.version(), "v2");
    }

    #[test]
    fn container_mount_roots_are_stripped() {
        let h = Hierarchy {
            controllers: vec!["memory".into()],
            mount: "/sys/fs/cgroup/memory".into(),
            mount_root: "/docker/x".into(),
            own: "/docker/x/inner".into(),
        };
        assert_eq!(h.dir_of(&h.own), Path::new("/sys/fs/cgroup/memory/inner"));
    }

    #[test]
    fn flat_keyed_files_parse() {
        let text = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n";
        assert_eq!(parse_flat_keyed(text, "oom_kill"), Some(2));
        assert_eq!(parse_flat_keyed(text, "max"), Some(3));
        assert_eq!(parse_flat_keyed(text, "missing"), None);
    }
}
