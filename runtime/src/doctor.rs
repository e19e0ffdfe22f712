//! `dsbox doctor`: what this kernel offers for each protection, with a one-line fix for
//! each gap. Every probe is a cheap, side-effect-free syscall or file read.

use std::path::PathBuf;

use serde::Serialize;

use crate::cgroups::CgroupSystem;
use crate::spec::Protection;

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
    /// How to get it, when it is missing.
    pub fix: Option<&'static str>,
}

/// One mounted cgroup hierarchy.
#[derive(Clone, Debug, Serialize)]
pub struct HierarchyInfo {
    pub version: &'static str,
    pub mount: PathBuf,
    pub controllers: Vec<String>,
}

/// A landlock feature, the ABI that brought it, and whether this kernel has it: what an
/// older ABI lacks is reported here, never silently dropped.
#[derive(Clone, Debug, Serialize)]
pub struct LandlockFeature {
    pub name: &'static str,
    /// The landlock ABI version that added it.
    pub abi: u32,
    pub available: bool,
    /// Whether dsbox's rules use it when the kernel has it.
    pub used_by_dsbox: bool,
}

/// (name, ABI, used by dsbox) for every landlock feature up to ABI 7.
const LANDLOCK_FEATURES: &[(&str, u32, bool)] = &[
    (
        "filesystem rules (read, write, execute, create, remove)",
        1,
        true,
    ),
    ("refer: link and rename across directories", 2, true),
    ("truncate", 3, true),
    // TCP is left to the network namespace (see landlock.rs).
    ("tcp bind and connect rules", 4, false),
    ("ioctl on device files", 5, true),
    ("scoping of abstract unix sockets and signals", 6, true),
    ("audit logging flags", 7, false),
];

/// The landlock features and their availability at ABI `abi` (0: no landlock).
pub fn landlock_features(abi: u32) -> Vec<LandlockFeature> {
    LANDLOCK_FEATURES
        .iter()
        .map(|&(name, min, used_by_dsbox)| LandlockFeature {
            name,
            abi: min,
            available: abi >= min,
            used_by_dsbox,
        })
        .collect()
}

/// A kernel and cgroup layout that dsbox's tests run on, and how.
#[derive(Clone, Debug, Serialize)]
pub struct TestedSetup {
    pub kernel: &'static str,
    /// "v1" or "v2", as in [`DoctorReport::cgroup_mode`].
    pub cgroup_mode: &'static str,
    pub cgroup_layout: &'static str,
    pub landlock_abi: u32,
    pub how: &'static str,
}

/// Where dsbox is tested. Keep in step with docs/kernel-matrix.md and `.ci/run`.
pub const TESTED_SETUPS: &[TestedSetup] = &[
    TestedSetup {
        kernel: "Linux 6.18 (the development and CI machines)",
        cgroup_mode: "v1",
        cgroup_layout: "hybrid: memory, pids, cpu as v1 hierarchies, the v2 hierarchy without controllers",
        landlock_abi: 7,
        how: "cargo test --workspace (./dev test, run by CI): runtime, kernel and CLI integration tests",
    },
    TestedSetup {
        kernel: "Debian's Linux 6.1 (linux-image-6.1.0-*-amd64)",
        cgroup_mode: "v2",
        cgroup_layout: "pure v2: memory, pids, cpu, io enabled at the root",
        landlock_abi: 2,
        how: "tests/kernel_matrix inside ../shared/tools/vm-run (QEMU), via ./dev test-vm, run by CI after the host tests",
    },
];

/// The tested setup with this cgroup mode and landlock ABI, if there is one.
pub fn tested_setup_matching(cgroup_mode: &str, landlock_abi: u32) -> Option<&'static TestedSetup> {
    TESTED_SETUPS
        .iter()
        .find(|t| t.cgroup_mode == cgroup_mode && t.landlock_abi == landlock_abi)
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct DoctorReport {
    pub kernel: String,
    pub euid: u32,
    pub cgroup_mode: &'static str,
    pub hierarchies: Vec<HierarchyInfo>,
    /// Where sandboxes' cgroups go (one per hierarchy used).
    pub sandbox_cgroup_parents: Vec<PathBuf>,
    pub checks: Vec<Check>,
    /// The landlock ABI of this kernel (0: unavailable).
    pub landlock_abi: u32,
    /// Every landlock feature: which this kernel has and which dsbox uses.
    pub landlock_features: Vec<LandlockFeature>,
    /// The kernels and cgroup layouts dsbox's tests run on.
    pub tested_setups: &'static [TestedSetup],
    /// The tested setup with this host's cgroup mode and landlock ABI (null: none).
    pub tested_here: Option<&'static TestedSetup>,
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn hierarchies() -> Vec<HierarchyInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
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
        let mount = PathBuf::from(l[4]);
        match r[0] {
            "cgroup2" => {
                let controllers = std::fs::read_to_string(mount.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                out.push(HierarchyInfo {
                    version: "v2",
                    mount,
                    controllers,
                });
            }
            "cgroup" => out.push(HierarchyInfo {
                version: "v1",
                mount,
                controllers: r[2]
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("name="))
                    .map(str::to_owned)
                    .collect(),
            }),
            _ => {}
        }
    }
    out
}

fn userns_works() -> Result<(), String> {
    // Try it for real in a throwaway child: sysctls differ between distributions.
    // SAFETY: fork; the child only calls unshare and _exit.
    match unsafe { libc::fork() } {
        -1 => Err("fork failed".into()),
        0 => {
            // SAFETY: unshare and _exit in a single-threaded child.
            unsafe {
                libc::_exit(if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                    0
                } else {
                    1
                })
            }
        }
        pid => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                Ok(())
            } else {
                Err("unshare(CLONE_NEWUSER) failed".into())
            }
        }
    }
}

fn syscall_probe(result: libc::c_long) -> Option<nix::errno::Errno> {
    (result < 0).then(nix::errno::Errno::last)
}

/// Probe everything.
pub fn report(cgroups: &CgroupSystem, cgroup_parent: Option<&std::path::Path>) -> DoctorReport {
    let mut checks = Vec::new();
    let userns = userns_works();
    checks.push(Check {
        name: "user namespaces",
        available: userns.is_ok(),
        detail: userns.err().unwrap_or_else(|| "unshare(CLONE_NEWUSER) works".into()),
        fix: Some("sysctl -w user.max_user_namespaces=15000 (Debian: also kernel.unprivileged_userns_clone=1)"),
    });
    let cg = crate::sandbox::check_protection(Protection::Cgroup);
    checks.push(Check {
        name: "cgroups",
        available: cg.is_ok(),
        detail: match cgroups {
            CgroupSystem::V2 { controllers, .. } => format!("v2 with {}", controllers.join(" ")),
            CgroupSystem::V1 { hierarchies } => format!(
                "v1 ({})",
                hierarchies
                    .iter()
                    .map(|h| h.controllers.join(","))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            CgroupSystem::Unavailable { reason } => reason.clone(),
        },
        fix: cg.err().map(|(_, hint)| hint),
    });
    let sc = crate::seccomp::kernel_supports_filters();
    checks.push(Check {
        name: "seccomp",
        available: sc,
        detail: if sc {
            "filters with the errno action".into()
        } else {
            "no seccomp filter support".into()
        },
        fix: (!sc).then_some("use a kernel built with CONFIG_SECCOMP_FILTER=y"),
    });
    let abi = crate::landlock::kernel_abi();
    let missing: Vec<String> = landlock_features(abi)
        .into_iter()
        .filter(|f| f.used_by_dsbox && !f.available)
        .map(|f| format!("{} (ABI {})", f.name, f.abi))
        .collect();
    checks.push(Check {
        name: "landlock",
        available: abi > 0,
        detail: if abi > 0 && missing.is_empty() {
            format!("ABI {abi}")
        } else if abi > 0 {
            format!("ABI {abi}; unavailable here: {}", missing.join(", "))
        } else {
            "not enabled".into()
        },
        fix: (abi == 0).then_some(
            "use Linux >= 5.13 with CONFIG_SECURITY_LANDLOCK=y and `landlock` in lsm= on the kernel command line",
        ),
    });
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.trim_end().ends_with("overlay")))
        .unwrap_or(false);
    checks.push(Check {
        name: "overlayfs",
        available: overlay,
        detail: if overlay {
            "available".into()
        } else {
            "not in /proc/filesystems".into()
        },
        fix: (!overlay).then_some("modprobe overlay"),
    });
    // SAFETY: clone3 with a null argument and size 0 only validates its arguments
    // (EINVAL when the syscall exists, ENOSYS when it does not); no process is created.
    let clone3 =
        syscall_probe(unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) });
    let has_clone3 = clone3 != Some(nix::errno::Errno::ENOSYS);
    checks.push(Check {
        name: "clone3",
        available: has_clone3,
        detail: if has_clone3 {
            "available (blocked inside sandboxes with ENOSYS)".into()
        } else {
            "ENOSYS".into()
        },
        fix: (!has_clone3).then_some("use Linux >= 5.3"),
    });
    // SAFETY: pidfd_open of our own pid; the fd is closed right away.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if fd >= 0 {
        // SAFETY: our fd.
        unsafe { libc::close(fd as i32) };
    }
    checks.push(Check {
        name: "pidfd",
        available: fd >= 0,
        detail: if fd >= 0 {
            "pidfd_open works".into()
        } else {
            "pidfd_open failed".into()
        },
        fix: (fd < 0).then_some("use Linux >= 5.3 (dsbox needs pidfds to wait for sandboxes)"),
    });
    // SAFETY: open_tree without OPEN_TREE_CLONE just opens a path; the fd is closed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd >= 0 {
        // SAFETY: our fd.
        unsafe { libc::close(fd as i32) };
    }
    checks.push(Check {
        name: "open_tree",
        available: fd >= 0,
        detail: if fd >= 0 {
            "new mount API available".into()
        } else {
            "not available".into()
        },
        fix: (fd < 0).then_some("use Linux >= 5.2 (optional: dsbox uses classic mount(2) today)"),
    });
    DoctorReport {
        kernel: kernel_release(),
        // SAFETY: geteuid has no preconditions.
        euid: unsafe { libc::geteuid() },
        cgroup_mode: cgroups.version(),
        hierarchies: hierarchies(),
        sandbox_cgroup_parents: cgroups.sandbox_parents(cgroup_parent),
        checks,
        landlock_abi: abi,
        landlock_features: landlock_features(abi),
        tested_setups: TESTED_SETUPS,
        tested_here: tested_setup_matching(cgroups.version(), abi),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_newer_than_the_abi_are_reported_unavailable() {
        let at2 = landlock_features(2);
        let available = |name: &str| at2.iter().find(|f| f.name.starts_with(name)).unwrap();
        assert!(available("refer").available);
        assert!(!available("truncate").available);
        assert!(!available("tcp").available);
        assert!(!available("ioctl").available);
        assert!(!available("scoping").available);
        assert!(landlock_features(0).iter().all(|f| !f.available));
        assert!(landlock_features(7).iter().all(|f| f.available));
    }

    #[test]
    fn tested_setups_match_on_cgroup_mode_and_landlock_abi() {
        assert_eq!(tested_setup_matching("v2", 2).unwrap().landlock_abi, 2);
        assert_eq!(tested_setup_matching("v1", 7).unwrap().cgroup_mode, "v1");
        assert!(tested_setup_matching("v2", 5).is_none());
        assert!(tested_setup_matching("none", 7).is_none());
    }
}
