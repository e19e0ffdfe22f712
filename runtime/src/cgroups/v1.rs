//! cgroup v1 backend: one leaf per hierarchy (memory, pids, cpu, and freezer when there is
//! no pid namespace to take every process down with init).

use std::path::{Path, PathBuf};

use super::{
    CgroupLimits, CgroupStats, Hierarchy, Result, io_err, parse_flat_keyed, read_procs, read_u64,
    write,
};

/// The leaves of one sandbox in the v1 hierarchies.
#[derive(Debug)]
pub struct V1Cgroup {
    leaves: Vec<(&'static str, PathBuf)>,
}

const CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "freezer"];

impl V1Cgroup {
    /// Create `<parent>/dsbox/<id>` in each hierarchy the limits need and write the limits.
    pub fn create(
        hierarchies: &[Hierarchy],
        id: &str,
        parent: Option<&Path>,
        limits: &CgroupLimits,
    ) -> Result<V1Cgroup> {
        let mut cg = V1Cgroup { leaves: Vec::new() };
        for &controller in CONTROLLERS {
            let wanted = match controller {
                "memory" | "pids" => true,
                "cpu" => limits.cpus.is_some(),
                _ => limits.freezer,
            };
            let Some(h) = hierarchies
                .iter()
                .find(|h| h.controllers.iter().any(|c| c == controller))
            else {
                continue;
            };
            // Co-mounted controllers (cpu,cpuacct) share one leaf.
            let dir = h.dir_of(parent.unwrap_or(&h.own)).join("dsbox").join(id);
            if !wanted || cg.leaves.iter().any(|(_, d)| *d == dir) {
                continue;
            }
            if let Some(base) = dir.parent() {
                std::fs::create_dir_all(base).map_err(io_err("create", base))?;
            }
            if let Err(e) = std::fs::create_dir(&dir) {
                let err = io_err("create", &dir)(e);
                let _ = cg.remove_all();
                return Err(err);
            }
            cg.leaves.push((controller, dir.clone()));
            if let Err(e) = cg.limit(controller, &dir, limits) {
                let _ = cg.remove_all();
                return Err(e);
            }
        }
        Ok(cg)
    }

    fn limit(&self, controller: &str, dir: &Path, limits: &CgroupLimits) -> Result<()> {
        match controller {
            "memory" => {
                if let Some(bytes) = limits.memory {
                    write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    // With swap accounting, cap memory+swap at the same value: no swapping
                    // around the limit.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &bytes.to_string())?;
                    }
                }
            }
            "pids" => {
                let max = limits.pids.map_or("max".to_owned(), |p| p.to_string());
                write(&dir.join("pids.max"), &max)?;
            }
            "cpu" => {
                if let Some(cpus) = limits.cpus {
                    const PERIOD: u64 = 100_000;
                    write(&dir.join("cpu.cfs_period_us"), &PERIOD.to_string())?;
                    let quota = ((cpus * PERIOD as f64) as u64).max(1000);
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn leaf(&self, controller: &str) -> Option<&Path> {
        self.leaves
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, d)| d.as_path())
    }

    /// Every leaf directory.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.leaves.iter().map(|(_, d)| d.clone()).collect()
    }

    /// Memory, OOM and pids counters.
    pub fn stats(&self) -> CgroupStats {
        let mut s = CgroupStats::default();
        if let Some(mem) = self.leaf("memory") {
            s.memory_current = read_u64(&mem.join("memory.usage_in_bytes"));
            s.memory_peak = read_u64(&mem.join("memory.max_usage_in_bytes"));
            s.oom_kills = std::fs::read_to_string(mem.join("memory.oom_control"))
                .ok()
                .and_then(|t| parse_flat_keyed(&t, "oom_kill"))
                .unwrap_or(0);
        }
        if let Some(pids) = self.leaf("pids") {
            s.pids_max_events = std::fs::read_to_string(pids.join("pids.events"))
                .ok()
                .and_then(|t| parse_flat_keyed(&t, "max"))
                .unwrap_or(0);
        }
        s
    }

    /// Kill every member: freeze first (when we have a freezer) so nothing forks while we
    /// kill, then SIGKILL each pid, then thaw so the kills are delivered.
    pub fn kill_all(&self) -> Result<()> {
        let freezer = self.leaf("freezer");
        if let Some(f) = freezer {
            write(&f.join("freezer.state"), "FROZEN")?;
        }
        let members = freezer
            .or_else(|| self.leaf("pids"))
            .or_else(|| self.leaf("memory"));
        if let Some(dir) = members {
            for _ in 0..100 {
                let pids = read_procs(dir);
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    // SAFETY: kill(2) with a pid read from the cgroup; a stale pid that was
                    // reused cannot be in this cgroup, because we read it from there.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                if freezer.is_some() {
                    break;
                }
            }
        }
        if let Some(f) = freezer {
            write(&f.join("freezer.state"), "THAWED")?;
        }
        Ok(())
    }

    fn remove_all(&self) -> Result<()> {
        for (_, d) in &self.leaves {
            super::remove_dir_retry(d)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_hierarchies(root: &Path) -> Vec<Hierarchy> {
        ["memory", "pids", "cpu"]
            .iter()
            .map(|c| {
                std::fs::create_dir_all(root.join(c)).unwrap();
                Hierarchy {
                    controllers: vec![c.to_string()],
                    mount: root.join(c),
                    mount_root: "/".into(),
                    own: if *c == "memory" {
                        "/own".into()
                    } else {
                        "/".into()
                    },
                }
            })
            .collect()
    }

    #[test]
    fn create_writes_limits_below_our_own_cgroup() {
        let fs = tempfile::tempdir().unwrap();
        let h = fake_hierarchies(fs.path());
        let limits = CgroupLimits {
            memory: Some(512 << 20),
            pids: Some(64),
            cpus: Some(1.5),
            freezer: false,
        };
        let cg = V1Cgroup::create(&h, "sb1", None, &limits).unwrap();
        let mem = fs.path().join("memory/own/dsbox/sb1");
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            "536870912"
        );
        let pids = fs.path().join("pids/dsbox/sb1");
        assert_eq!(
            std::fs::read_to_string(pids.join("pids.max")).unwrap(),
            "64"
        );
        let cpu = fs.path().join("cpu/dsbox/sb1");
        assert_eq!(
            std::fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap(),
            "150000"
        );
        assert_eq!(cg.paths().len(), 3);

        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(pids.join("pids.events"), "max 17\n").unwrap();
        let s = cg.stats();
        assert_eq!((s.oom_kills, s.pids_max_events), (1, 17));
    }

    #[test]
    fn no_cpu_leaf_without_a_cpu_limit() {
        let fs = tempfile::tempdir().unwrap();
        let h = fake_hierarchies(fs.path());
        let cg = V1Cgroup::create(&h, "sb2", None, &CgroupLimits::default()).unwrap();
        assert_eq!(cg.paths().len(), 2);
        assert_eq!(
            std::fs::read_to_string(fs.path().join("pids/dsbox/sb2/pids.max")).unwrap(),
            "max"
        );
    }
}
