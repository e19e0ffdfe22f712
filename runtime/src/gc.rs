//! Crash cleanup: remove what sandboxes of dead runtimes left behind. Mounts and scratch
//! live in each sandbox's own mount namespace and vanish with its processes, so what can
//! be left is processes, cgroups and state records. `dsbox gc` calls [`collect`];
//! `Sandbox::spawn` runs [`startup_sweep`] once per process.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::cgroups::{CgroupSystem, read_procs, remove_dir_retry};
use crate::state::{StateRecord, runtime_alive};

/// Leftovers younger than this may belong to a sandbox that is being started right now.
const GRACE: Duration = Duration::from_secs(60);

/// What a collection did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub removed_records: Vec<String>,
    pub killed_processes: usize,
    pub removed_cgroups: Vec<PathBuf>,
    pub errors: Vec<String>,
}

fn older_than_grace(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > GRACE)
}

fn kill_and_remove(dir: &Path, report: &mut GcReport) {
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() {
        let _ = std::fs::write(&kill_file, "1");
    }
    for _ in 0..50 {
        let pids = read_procs(dir);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) on a pid read from this cgroup.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                report.killed_processes += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    match remove_dir_retry(dir) {
        Ok(()) => report.removed_cgroups.push(dir.into()),
        Err(e) => report.errors.push(e.to_string()),
    }
}

/// Remove the leftovers of dead runtimes: their processes, cgroups and state records, and
/// cgroups under the dsbox parents that no record names (older than a minute).
pub fn collect(state_dir: &Path, system: &CgroupSystem, cgroup_parent: Option<&Path>) -> GcReport {
    let mut report = GcReport::default();
    let mut known = Vec::new();
    for (path, record) in StateRecord::list(state_dir) {
        match record {
            Some(rec) if runtime_alive(&rec) => known.push(rec.id.clone()),
            Some(rec) => {
                for cg in &rec.cgroups {
                    if cg.exists() {
                        kill_and_remove(cg, &mut report);
                    }
                }
                match std::fs::remove_file(&path) {
                    Ok(()) => report.removed_records.push(rec.id),
                    // Another collector (a concurrent startup sweep) was faster.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => report.errors.push(format!("{}: {e}", path.display())),
                }
            }
            None if older_than_grace(&path) => {
                let _ = std::fs::remove_file(&path);
                report.removed_records.push(
                    path.file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
            None => {}
        }
    }
    for parent in system.sandbox_parents(cgroup_parent) {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if !is_dir || known.contains(&name) || !older_than_grace(&dir) {
                continue;
            }
            if StateRecord::path(state_dir, &name).exists() {
                continue;
            }
            kill_and_remove(&dir, &mut report);
        }
    }
    report
}

/// Run [`collect`] once per process, quietly (errors go to the debug log).
pub fn startup_sweep(system: &CgroupSystem, cgroup_parent: Option<&Path>) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let report = collect(Path::new(crate::state::STATE_DIR), system, cgroup_parent);
        if !report.removed_records.is_empty() || !report.removed_cgroups.is_empty() {
            tracing::debug!(?report, "startup sweep removed leftovers of dead runtimes");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_dead_runtimes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("cg");
        std::fs::create_dir(&cg).unwrap();
        let dead = StateRecord {
            id: "dead".into(),
            runtime_pid: i32::MAX - 1,
            runtime_start_time: 1,
            init_pid: 0,
            cgroups: vec![cg.clone()],
        };
        let me = std::process::id() as i32;
        let live = StateRecord {
            id: "live".into(),
            runtime_pid: me,
            runtime_start_time: crate::state::process_start_time(me).unwrap(),
            init_pid: 0,
            cgroups: vec![],
        };
        let state = dir.path().join("state");
        dead.write(&state).unwrap();
        live.write(&state).unwrap();
        let sys = CgroupSystem::Unavailable {
            reason: String::new(),
        };
        let report = collect(&state, &sys, None);
        assert_eq!(report.removed_records, vec!["dead".to_string()]);
        assert_eq!(report.removed_cgroups, vec![cg.clone()]);
        assert!(!cg.exists());
        assert!(StateRecord::path(&state, "live").exists());
    }
}
