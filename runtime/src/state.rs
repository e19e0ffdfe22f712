//! State records for crash cleanup: `/run/dsbox/sandboxes/<id>.json` holds the runtime's
//! pid and start time, init's pid and the cgroup paths, so `dsbox gc` (and the startup
//! sweep) can tell a dead runtime's leftovers from a live one's.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default directory of state records.
pub const STATE_DIR: &str = "/run/dsbox/sandboxes";

/// One sandbox's record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateRecord {
    pub id: String,
    pub runtime_pid: i32,
    /// Field 22 of /proc/<pid>/stat: tells a live runtime from a reused pid.
    pub runtime_start_time: u64,
    pub init_pid: i32,
    pub cgroups: Vec<PathBuf>,
}

/// The start time (clock ticks since boot) of `pid`, or None if it does not exist.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Is the runtime that wrote `record` still the same live process?
pub fn runtime_alive(record: &StateRecord) -> bool {
    process_start_time(record.runtime_pid) == Some(record.runtime_start_time)
}

/// Our own start time, read once.
pub fn own_start_time() -> u64 {
    static T: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *T.get_or_init(|| process_start_time(std::process::id() as i32).unwrap_or(0))
}

impl StateRecord {
    /// Where the record of `id` lives in `dir`.
    pub fn path(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("{id}.json"))
    }

    /// Write the record (creating the directory on first use).
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = Self::path(dir, &self.id);
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        match std::fs::write(&path, &json) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                std::fs::write(&path, &json)?;
            }
            other => other?,
        }
        Ok(path)
    }

    /// Every parsable record in `dir`.
    pub fn list(dir: &Path) -> Vec<(PathBuf, Option<StateRecord>)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let rec = std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                (p, rec)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let mut rec = StateRecord {
            id: "x".into(),
            runtime_pid: me,
            runtime_start_time: process_start_time(me).unwrap(),
            init_pid: 0,
            cgroups: vec![],
        };
        assert!(runtime_alive(&rec));
        rec.runtime_start_time += 1;
        assert!(!runtime_alive(&rec));
        let dir = tempfile::tempdir().unwrap();
        let path = rec.write(&dir.path().join("sub")).unwrap();
        let listed = StateRecord::list(&dir.path().join("sub"));
        assert_eq!(listed, vec![(path, Some(rec))]);
    }
}
