//! Landlock: filesystem rules built from the mount plan (rootfs read+exec, scratch and
//! rw binds read+write, ro binds read+exec, /dev nodes read+write, /proc read), using the
//! best ABI the kernel offers.
//!
//! The three landlock syscalls are made directly (through [`Syscall`]) rather than with the
//! `landlock` crate because a `JoinPlan` must carry the exact raw masks and rules that a
//! Python joiner applies; one representation, applied the same way on both sides.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::process::message::{Step, StepError};
use crate::spec::{Mount, Root, SandboxSpec};
use crate::syscall::{Errno, LandlockRulesetAttr, Syscall};

pub const EXECUTE: u64 = 1 << 0;
pub const WRITE_FILE: u64 = 1 << 1;
pub const READ_FILE: u64 = 1 << 2;
pub const READ_DIR: u64 = 1 << 3;
pub const TRUNCATE: u64 = 1 << 14;
pub const IOCTL_DEV: u64 = 1 << 15;
/// Rights that apply to a regular file (a rule on a file may hold only these).
pub const FILE_ACCESS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;
const READ_EXEC: u64 = EXECUTE | READ_FILE | READ_DIR;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

/// Every filesystem right the given ABI knows.
pub fn fs_access_for_abi(abi: u32) -> u64 {
    match abi {
        0 => 0,
        1 => (1 << 13) - 1,
        2 => (1 << 14) - 1,
        3 | 4 => (1 << 15) - 1,
        _ => (1 << 16) - 1,
    }
}

/// The landlock ABI version of the running kernel (0: unavailable). Cached.
pub fn kernel_abi() -> u32 {
    static ABI: OnceLock<u32> = OnceLock::new();
    *ABI.get_or_init(|| {
        const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
        // SAFETY: with a null attr, size 0 and the VERSION flag the kernel only returns
        // the ABI number.
        let v = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<u8>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        if v < 0 { 0 } else { v as u32 }
    })
}

/// One path-beneath rule (path inside the sandbox).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LandlockRule {
    pub path: PathBuf,
    pub access: u64,
}

/// The ruleset as raw kernel values; this is also the `landlock` field of a `JoinPlan`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LandlockPlan {
    pub abi: u32,
    pub handled_access_fs: u64,
    pub handled_access_net: u64,
    pub scoped: u64,
    pub rules: Vec<LandlockRule>,
}

impl LandlockPlan {
    /// Build the rules for `spec` on a kernel with landlock ABI `abi` (None if abi is 0).
    pub fn for_spec(spec: &SandboxSpec, abi: u32) -> Option<LandlockPlan> {
        if abi == 0 || !spec.landlock.enabled {
            return None;
        }
        let handled = fs_access_for_abi(abi);
        let excluded = |p: &Path| spec.landlock.exclude.iter().any(|e| p.starts_with(e));
        let mut rules = vec![LandlockRule {
            path: "/".into(),
            access: READ_DIR,
        }];
        let mut add = |path: PathBuf, access: u64, is_dir: bool| {
            if excluded(&path) {
                return;
            }
            let access = access & handled & if is_dir { u64::MAX } else { FILE_ACCESS };
            rules.push(LandlockRule { path, access });
        };
        // The root filesystem: read + execute on its top-level directories, except those
        // that the runtime mounts over itself.
        let managed = |name: &str| {
            matches!(name, "proc" | "dev" | "sys")
                || spec
                    .scratch
                    .dirs
                    .iter()
                    .any(|d| d.components().nth(1).is_some_and(|c| c.as_os_str() == name))
        };
        match &spec.root {
            Root::Host => {
                for name in ["usr", "etc", "opt"] {
                    add(Path::new("/").join(name), READ_EXEC, true);
                }
            }
            Root::Dir(dir) => {
                if let Ok(entries) = std::fs::read_dir(dir) {
                    for entry in entries.flatten() {
                        let name = entry.file_name();
                        let name = name.to_string_lossy();
                        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                        if !managed(&name) && is_dir {
                            add(Path::new("/").join(&*name), READ_EXEC, true);
                        }
                    }
                }
            }
        }
        for dir in &spec.scratch.dirs {
            add(dir.clone(), handled, true);
        }
        add(
            "/dev".into(),
            READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV | READ_DIR,
            true,
        );
        add("/dev/shm".into(), handled, true);
        add("/proc".into(), READ_FILE | READ_DIR, true);
        for mount in &spec.mounts {
            match mount {
                Mount::Bind {
                    source,
                    destination,
                    readonly,
                } => {
                    let is_dir = source.is_dir();
                    let access = if *readonly { READ_EXEC } else { handled };
                    add(destination.clone(), access, is_dir);
                }
                Mount::Tmpfs { destination, .. } => add(destination.clone(), handled, true),
            }
        }
        Some(LandlockPlan {
            abi,
            handled_access_fs: handled,
            // TCP is left to the network namespace: loopback TCP inside stays usable.
            handled_access_net: 0,
            scoped: if abi >= 6 {
                SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
            } else {
                0
            },
            rules,
        })
    }

    /// C strings prepared in the parent, so the child does not convert paths.
    pub fn prepare(&self) -> PreparedLandlock {
        PreparedLandlock {
            attr: LandlockRulesetAttr {
                handled_access_fs: self.handled_access_fs,
                handled_access_net: self.handled_access_net,
                scoped: self.scoped,
            },
            rules: self
                .rules
                .iter()
                .filter_map(|r| {
                    CString::new(r.path.as_os_str().as_encoded_bytes())
                        .ok()
                        .map(|p| (p, r.access))
                })
                .collect(),
        }
    }
}

/// A [`LandlockPlan`] ready to apply in a forked child.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreparedLandlock {
    attr: LandlockRulesetAttr,
    rules: Vec<(CString, u64)>,
}

impl PreparedLandlock {
    /// Create the ruleset, add every rule whose path exists, restrict the caller.
    pub fn apply(&self, sys: &dyn Syscall) -> Result<(), StepError> {
        let fd = sys
            .landlock_create_ruleset(&self.attr)
            .map_err(|e| StepError::new(Step::Landlock, e, None))?;
        for (path, access) in &self.rules {
            match sys.landlock_add_path_rule(fd, path, *access) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    let _ = sys.close(fd);
                    return Err(StepError::new(Step::Landlock, e, Some(path)));
                }
            }
        }
        let result = sys
            .landlock_restrict_self(fd)
            .map_err(|e| StepError::new(Step::Landlock, e, None));
        let _ = sys.close(fd);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, RecordingSyscall};

    fn spec_with_binds() -> SandboxSpec {
        let dir = std::env::temp_dir();
        SandboxSpec::builder()
            .with_command(["/bin/true"])
            .with_mount(Mount::Bind {
                source: dir.clone(),
                destination: "/data/in".into(),
                readonly: true,
            })
            .with_mount(Mount::Bind {
                source: "/bin/sh".into(),
                destination: "/probe".into(),
                readonly: true,
            })
            .build()
            .unwrap()
    }

    #[test]
    fn rules_cover_rootfs_scratch_dev_proc_and_binds() {
        let plan = LandlockPlan::for_spec(&spec_with_binds(), 7).unwrap();
        let access = |p: &str| {
            plan.rules
                .iter()
                .find(|r| r.path == Path::new(p))
                .map(|r| r.access)
        };
        assert_eq!(access("/"), Some(READ_DIR));
        assert_eq!(access("/usr"), Some(READ_EXEC));
        assert_eq!(access("/tmp"), Some(fs_access_for_abi(7)));
        assert_eq!(access("/data/in"), Some(READ_EXEC));
        // a file bind gets file rights only, or the kernel would reject the rule
        assert_eq!(access("/probe"), Some(EXECUTE | READ_FILE));
        assert_eq!(access("/proc"), Some(READ_FILE | READ_DIR));
        assert_eq!(plan.scoped, 3);
        assert!(
            plan.rules
                .iter()
                .all(|r| r.access & !plan.handled_access_fs == 0)
        );
    }

    #[test]
    fn excluded_destinations_get_no_rule_and_abi_zero_means_none() {
        let mut spec = spec_with_binds();
        spec.landlock.exclude.push("/data/in".into());
        let plan = LandlockPlan::for_spec(&spec, 3).unwrap();
        assert!(plan.rules.iter().all(|r| r.path != Path::new("/data/in")));
        assert_eq!(plan.handled_access_fs, (1 << 15) - 1);
        assert_eq!(plan.scoped, 0);
        assert!(LandlockPlan::for_spec(&spec, 0).is_none());
    }

    #[test]
    fn apply_creates_adds_restricts_and_skips_missing_paths() {
        let plan = LandlockPlan::for_spec(&spec_with_binds(), 7).unwrap();
        let prepared = plan.prepare();
        let fake = RecordingSyscall::failing("landlock_add_path_rule", 1, Errno::ENOENT);
        prepared.apply(&fake).unwrap();
        let names = fake.names();
        assert_eq!(names.first(), Some(&"landlock_create_ruleset"));
        assert_eq!(names[names.len() - 2], "landlock_restrict_self");
        assert_eq!(fake.calls().last(), Some(&Call::Close(99)));

        let fake = RecordingSyscall::failing("landlock_restrict_self", 0, Errno::EPERM);
        let err = prepared.apply(&fake).unwrap_err();
        assert_eq!(err.step, Step::Landlock);
        assert_eq!(err.errno, Errno::EPERM as i32);
    }
}
