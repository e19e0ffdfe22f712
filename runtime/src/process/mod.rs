//! The processes of a sandbox and what each one does.
//!
//! * [`start`]: the runtime side — fork the middle process, answer its requests, collect
//!   init's pid and the `Ready` message.
//! * [`init`]: the child side — the middle process (cgroup join, unshare, clone init),
//!   init (mounts, pivot_root, hostname, loopback, fork payload, reap, forward signals)
//!   and the payload's last steps before `execve`.
//! * [`channel`] / [`message`]: the typed protocol between them.
//!
//! Everything a child needs is prepared in the parent as a [`ChildPlan`] (C strings,
//! mount plan, compiled seccomp program, landlock rules), so the children make syscalls
//! and little else.

pub mod channel;
pub mod init;
pub mod message;
pub mod spawner;
pub mod start;

use std::ffi::CString;
use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};

use crate::landlock::PreparedLandlock;
use crate::rootfs::MountPlan;
use crate::seccomp::BpfProgram;
use crate::spec::Rlimit;

/// Credentials and restrictions applied to the payload (and, minus landlock, to init).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hardening {
    pub uid: u32,
    pub gid: u32,
    /// Clear supplementary groups (not possible in a user namespace whose setgroups was
    /// denied by an unprivileged runtime).
    pub setgroups: bool,
    pub drop_caps: bool,
    pub last_cap: u32,
    pub no_new_privs: bool,
    pub landlock: Option<PreparedLandlock>,
    pub seccomp: Option<BpfProgram>,
}

/// What the payload does between fork and execve.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PayloadPlan {
    /// Paths tried in order with execve (PATH lookup done in the parent).
    pub candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: CString,
    pub rlimits: Vec<Rlimit>,
    /// `(from, to)` dup2 pairs; every `from` is above every `to`, so order does not matter.
    pub fd_moves: Vec<(RawFd, RawFd)>,
    /// fd ranges to close (inclusive), computed from the fds the payload keeps.
    pub close_ranges: Vec<(u32, u32)>,
    /// Send the payload's step times before execve (DSBOX_PROFILE=1).
    pub profile: bool,
}

/// Everything the middle process, init and the payload need, prepared by the runtime.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildPlan {
    pub unshare_flags: libc::c_int,
    pub userns: bool,
    /// In a user namespace made by a root runtime: switch to uid/gid 0 inside (host
    /// 100000), since host root is not mapped there.
    pub become_ns_root: bool,
    pub pidns: bool,
    pub mounts: MountPlan,
    pub hostname: Vec<u8>,
    pub loopback: bool,
    pub payload: Option<PayloadPlan>,
    pub payload_hardening: Hardening,
    pub init_hardening: Hardening,
    /// A seccomp program init installs before starting the payload, which inherits it
    /// (then neither hardening installs it again).
    pub seccomp_in_init: Option<BpfProgram>,
    /// Kill init when the runtime's thread that started it dies (PR_SET_PDEATHSIG).
    pub die_with_parent: bool,
    /// Record a timestamp after every mount operation and every payload step
    /// (DSBOX_PROFILE=1).
    pub profile: bool,
    /// The runtime's pid, to detect that it died before PR_SET_PDEATHSIG took effect.
    pub runtime_pid: i32,
}

/// The fd ranges to close so that only `keep` (sorted or not) stays open.
pub fn close_ranges(keep: &[RawFd]) -> Vec<(u32, u32)> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|&&f| f >= 0)
        .map(|&f| f as u32)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut ranges = Vec::new();
    let mut next = 0u32;
    for k in keep {
        if k > next {
            ranges.push((next, k - 1));
        }
        next = k + 1;
    }
    ranges.push((next, u32::MAX));
    ranges
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The hardening of the unit tests' plans.
    pub(crate) fn hardening() -> Hardening {
        Hardening {
            uid: 1000,
            gid: 1000,
            setgroups: true,
            drop_caps: true,
            last_cap: 40,
            no_new_privs: true,
            landlock: None,
            seccomp: Some(crate::seccomp::default_program()),
        }
    }

    /// The payload of the unit tests' plans.
    pub(crate) fn payload() -> PayloadPlan {
        PayloadPlan {
            candidates: vec![c"/bin/true".into()],
            argv: vec![c"true".into()],
            envp: vec![],
            cwd: c"/workdir".into(),
            rlimits: crate::spec::Limits::default().rlimits,
            fd_moves: vec![(10, 0), (11, 3)],
            close_ranges: close_ranges(&[0, 1, 2, 3, 9]),
            profile: false,
        }
    }

    /// A plan with every kind of field filled in (for encoding round trips).
    pub(crate) fn sample_plan() -> ChildPlan {
        let spec = crate::spec::SandboxSpec::builder()
            .with_command(["/usr/bin/python3", "-c", "print(1)"])
            .build()
            .unwrap();
        let landlock = crate::landlock::LandlockPlan::for_spec(&spec, 7)
            .as_ref()
            .map(crate::landlock::LandlockPlan::prepare);
        ChildPlan {
            unshare_flags: libc::CLONE_NEWNS | libc::CLONE_NEWPID,
            userns: true,
            become_ns_root: true,
            pidns: true,
            mounts: MountPlan::build(&spec, std::path::Path::new("/nonexistent-staging"), true)
                .unwrap(),
            hostname: b"sandbox".to_vec(),
            loopback: true,
            payload: Some(PayloadPlan {
                envp: vec![c"PATH=/usr/bin".into()],
                ..payload()
            }),
            payload_hardening: Hardening {
                landlock,
                ..hardening()
            },
            init_hardening: hardening(),
            seccomp_in_init: Some(crate::seccomp::default_program()),
            die_with_parent: false,
            profile: false,
            runtime_pid: 1,
        }
    }

    #[test]
    fn close_ranges_leave_exactly_the_kept_fds() {
        assert_eq!(close_ranges(&[0, 1, 2]), vec![(3, u32::MAX)]);
        assert_eq!(
            close_ranges(&[2, 0, 1, 7, 5]),
            vec![(3, 4), (6, 6), (8, u32::MAX)]
        );
        assert_eq!(close_ranges(&[]), vec![(0, u32::MAX)]);
    }
}
