//! cgroup v2 backend: one leaf `<parent>/dsbox/<id>` in the unified hierarchy, with the
//! controllers enabled in `cgroup.subtree_control` on the way down. v2 forbids processes
//! in a cgroup that has controllers enabled for its children ("no internal processes"),
//! so when our parent holds the runtime itself, the runtime first moves into a leaf
//! `<parent>/dsbox-runtime`.

use std::path::{Path, PathBuf};

use super::{
    CgroupError, CgroupLimits, CgroupStats, Hierarchy, Result, io_err, parse_flat_keyed,
    read_procs, read_u64, write,
};

/// A sandbox's leaf in the unified hierarchy.
#[derive(Debug)]
pub struct V2Cgroup {
    dir: PathBuf,
}

const WANTED: &[&str] = &["memory", "pids", "cpu"];

fn enable_controllers(dir: &Path, available: &[String]) -> Result<()> {
    let current = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<String> = WANTED
        .iter()
        .filter(|c| available.iter().any(|a| a == *c))
        .filter(|c| !current.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let path = dir.join("cgroup.subtree_control");
    std::fs::write(&path, missing.join(" ")).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            CgroupError::InternalProcesses { path: dir.into() }
        } else {
            io_err("write", &path)(e)
        }
    })
}

/// The parent pid of `pid` (field 4 of /proc/<pid>/stat), if it still exists.
fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip past the last ')'.
    stat.get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl V2Cgroup {
    /// Create the leaf and write the limits.
    pub fn create(
        h: &Hierarchy,
        available: &[String],
        id: &str,
        parent: Option<&Path>,
        limits: &CgroupLimits,
    ) -> Result<V2Cgroup> {
        let parent_dir = h.dir_of(parent.unwrap_or(&h.own));
        let base = parent_dir.join("dsbox");
        let base_ready = std::fs::read_to_string(base.join("cgroup.subtree_control"))
            .map(|s| s.split_whitespace().any(|c| c == "memory"))
            .unwrap_or(false);
        if !base_ready {
            // Our parent must have no member processes before it can enable controllers.
            let me = std::process::id() as i32;
            let members = read_procs(&parent_dir);
            if members.contains(&me) {
                let leaf = parent_dir.join("dsbox-runtime");
                std::fs::create_dir_all(&leaf).map_err(io_err("create", &leaf))?;
                write(&leaf.join("cgroup.procs"), &me.to_string())?;
                // Our children forked before the move are still in the parent, and so is
                // the middle process of the sandbox being created (forked before this
                // call): they go along, else enabling the controllers fails with EBUSY.
                // Children forked from now on are born in the leaf. Read the members
                // after our own move: a fork racing with it has finished attaching then.
                for child in read_procs(&parent_dir)
                    .into_iter()
                    .filter(|&pid| parent_pid(pid) == Some(me))
                {
                    match write(&leaf.join("cgroup.procs"), &child.to_string()) {
                        Ok(()) => {}
                        // It exited meanwhile.
                        Err(CgroupError::Io { error, .. })
                            if error.raw_os_error() == Some(libc::ESRCH) => {}
                        Err(e) => return Err(e),
                    }
                }
                tracing::debug!(
                    leaf = %leaf.display(),
                    "moved the runtime into a leaf cgroup (cgroup v2 allows no processes in a cgroup that delegates controllers)"
                );
            }
            enable_controllers(&parent_dir, available)?;
            std::fs::create_dir_all(&base).map_err(io_err("create", &base))?;
            enable_controllers(&base, available)?;
        }
        let dir = base.join(id);
        std::fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        let cg = V2Cgroup { dir };
        if let Err(e) = cg.limit(limits) {
            let _ = super::remove_dir_retry(&cg.dir);
            return Err(e);
        }
        Ok(cg)
    }

    fn limit(&self, limits: &CgroupLimits) -> Result<()> {
        if let Some(bytes) = limits.memory {
            write(&self.dir.join("memory.max"), &bytes.to_string())?;
            let swap = self.dir.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
        }
        if let Some(pids) = limits.pids {
            write(&self.dir.join("pids.max"), &pids.to_string())?;
        }
        if let Some(cpus) = limits.cpus {
            const PERIOD: u64 = 100_000;
            let quota = ((cpus * PERIOD as f64) as u64).max(1000);
            write(&self.dir.join("cpu.max"), &format!("{quota} {PERIOD}"))?;
        }
        Ok(())
    }

    /// The leaf directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Memory, OOM and pids counters.
    pub fn stats(&self) -> CgroupStats {
        let events = std::fs::read_to_string(self.dir.join("memory.events")).unwrap_or_default();
        let pids = std::fs::read_to_string(self.dir.join("pids.events")).unwrap_or_default();
        CgroupStats {
            memory_current: read_u64(&self.dir.join("memory.current")),
            memory_peak: read_u64(&self.dir.join("memory.peak")),
            oom_kills: parse_flat_keyed(&events, "oom_kill").unwrap_or(0),
            pids_max_events: parse_flat_keyed(&pids, "max").unwrap_or(0),
        }
    }

    /// Kill every member with `cgroup.kill` (Linux 5.14+), else SIGKILL each listed pid.
    pub fn kill_all(&self) -> Result<()> {
        let kill = self.dir.join("cgroup.kill");
        if kill.exists() {
            return write(&kill, "1");
        }
        for pid in read_procs(&self.dir) {
            // SAFETY: kill(2) on a pid read from this cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v2(root: &Path, own_procs: &str) -> (Hierarchy, Vec<String>) {
        let own = root.join("user.slice");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(
            own.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        std::fs::write(own.join("cgroup.procs"), own_procs).unwrap();
        let h = Hierarchy {
            controllers: vec![],
            mount: root.into(),
            mount_root: "/".into(),
            own: "/user.slice".into(),
        };
        (h, vec!["cpu".into(), "memory".into(), "pids".into()])
    }

    #[test]
    fn create_enables_controllers_on_the_way_down_and_writes_limits() {
        let fs = tempfile::tempdir().unwrap();
        let (h, avail) = fake_v2(fs.path(), "");
        let limits = CgroupLimits {
            memory: Some(256 << 20),
            pids: Some(32),
            cpus: Some(0.5),
            freezer: false,
        };
        let cg = V2Cgroup::create(&h, &avail, "sb1", None, &limits).unwrap();
        let own = fs.path().join("user.slice");
        assert_eq!(
            std::fs::read_to_string(own.join("cgroup.subtree_control")).unwrap(),
            "+memory +pids +cpu"
        );
        assert_eq!(
            std::fs::read_to_string(own.join("dsbox/cgroup.subtree_control")).unwrap(),
            "+memory +pids +cpu"
        );
        let leaf = own.join("dsbox/sb1");
        assert_eq!(cg.path(), leaf);
        assert_eq!(
            std::fs::read_to_string(leaf.join("memory.max")).unwrap(),
            "268435456"
        );
        assert_eq!(
            std::fs::read_to_string(leaf.join("pids.max")).unwrap(),
            "32"
        );
        assert_eq!(
            std::fs::read_to_string(leaf.join("cpu.max")).unwrap(),
            "50000 100000"
        );
    }

    #[test]
    fn the_runtime_moves_into_a_leaf_when_it_is_in_the_parent() {
        let fs = tempfile::tempdir().unwrap();
        let me = std::process::id().to_string();
        let (h, avail) = fake_v2(fs.path(), &format!("{me}\n"));
        V2Cgroup::create(&h, &avail, "sb2", None, &CgroupLimits::default()).unwrap();
        let leaf = fs.path().join("user.slice/dsbox-runtime/cgroup.procs");
        assert_eq!(std::fs::read_to_string(leaf).unwrap(), me);
    }

    #[test]
    fn the_runtime_takes_its_children_along_into_the_leaf() {
        // A middle process forked before the cgroup is created sits in the parent with
        // us; it must leave too, or enabling controllers there fails (EBUSY) on a real
        // cgroupfs. An unrelated member (pid 1) stays.
        let fs = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let (h, avail) = fake_v2(fs.path(), &format!("1\n{me}\n{}\n", child.id()));
        V2Cgroup::create(&h, &avail, "sb6", None, &CgroupLimits::default()).unwrap();
        let leaf = fs.path().join("user.slice/dsbox-runtime/cgroup.procs");
        // The fake file keeps the last write: the child, moved after the runtime itself.
        let last = std::fs::read_to_string(leaf).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(last, child.id().to_string());
        assert_eq!(parent_pid(child.id() as i32), None);
        assert_eq!(
            parent_pid(me as i32),
            Some(std::os::unix::process::parent_id() as i32)
        );
    }

    #[test]
    fn oom_and_pids_events_are_parsed() {
        let fs = tempfile::tempdir().unwrap();
        let (h, avail) = fake_v2(fs.path(), "");
        let cg = V2Cgroup::create(&h, &avail, "sb3", None, &CgroupLimits::default()).unwrap();
        std::fs::write(
            cg.path().join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        std::fs::write(cg.path().join("pids.events"), "max 5\n").unwrap();
        std::fs::write(cg.path().join("memory.peak"), "1048576\n").unwrap();
        let s = cg.stats();
        assert_eq!(s.oom_kills, 1);
        assert_eq!(s.pids_max_events, 5);
        assert_eq!(s.memory_peak, Some(1 << 20));
    }

    #[test]
    fn kill_uses_cgroup_kill() {
        let fs = tempfile::tempdir().unwrap();
        let (h, avail) = fake_v2(fs.path(), "");
        let cg = V2Cgroup::create(&h, &avail, "sb4", None, &CgroupLimits::default()).unwrap();
        std::fs::write(cg.path().join("cgroup.kill"), "").unwrap();
        cg.kill_all().unwrap();
        assert_eq!(
            std::fs::read_to_string(cg.path().join("cgroup.kill")).unwrap(),
            "1"
        );
    }

    #[test]
    fn internal_processes_give_a_clear_error() {
        // A parent that is not ours but holds processes: enabling fails with EBUSY on a
        // real cgroupfs. Simulate with a subtree_control that cannot be written.
        let fs = tempfile::tempdir().unwrap();
        let (h, avail) = fake_v2(fs.path(), "");
        std::fs::create_dir(fs.path().join("user.slice/cgroup.subtree_control")).unwrap();
        let err = V2Cgroup::create(&h, &avail, "sb5", None, &CgroupLimits::default()).unwrap_err();
        assert!(err.to_string().contains("cgroup.subtree_control"), "{err}");
    }
}
