//! Namespaces: which ones a sandbox gets, the uid/gid maps of a user namespace, and what a
//! joiner passes to `setns`.

use std::path::PathBuf;

use crate::spec::{Network, SandboxSpec};

/// Errors writing id maps.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot write {}: {error}", path.display())]
    IdMap {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Flags for the middle process's `unshare`: mount, ipc, uts, cgroup always; net unless
/// the network is shared; pid and user when the spec asks.
pub fn unshare_flags(spec: &SandboxSpec, userns: bool) -> libc::c_int {
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWCGROUP;
    if spec.network == Network::None {
        flags |= libc::CLONE_NEWNET;
    }
    if spec.namespaces.pid {
        flags |= libc::CLONE_NEWPID;
    }
    if userns {
        flags |= libc::CLONE_NEWUSER;
    }
    flags
}

/// Flags a joiner passes to `setns(pidfd, ...)` after fork (everything but pid and user:
/// pid is entered before the fork, a user namespace cannot be entered by a threaded or
/// already-privileged joiner and is not used for shells).
pub fn join_flags(spec: &SandboxSpec) -> u64 {
    let flags = unshare_flags(spec, false) & !libc::CLONE_NEWPID;
    flags as u64
}

/// First host id of the range a root runtime maps into a user namespace.
pub const USERNS_HOST_BASE: u32 = 100_000;
/// Size of that range.
pub const USERNS_RANGE: u32 = 65_536;

/// The uid_map/gid_map text for a user namespace. A root runtime maps 0..65536 inside to
/// 100000.. outside, so root inside is nobody outside; an unprivileged runtime can only
/// map its own id, which becomes the sandbox uid inside.
pub fn id_map(inside_unprivileged: u32, outside_euid: u32) -> String {
    if outside_euid == 0 {
        format!("0 {USERNS_HOST_BASE} {USERNS_RANGE}\n")
    } else {
        format!("{inside_unprivileged} {outside_euid} 1\n")
    }
}

/// Write uid_map and gid_map of `pid` (the middle process, just after its unshare).
/// An unprivileged writer must deny setgroups first; a root writer keeps setgroups
/// working so the payload can clear its supplementary groups.
pub fn write_id_maps(pid: i32, sandbox_uid: u32, sandbox_gid: u32) -> Result<(), NamespaceError> {
    // SAFETY: geteuid/getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let write = |name: &str, text: &str| {
        let path = PathBuf::from(format!("/proc/{pid}/{name}"));
        std::fs::write(&path, text).map_err(|error| NamespaceError::IdMap { path, error })
    };
    if euid != 0 {
        write("setgroups", "deny")?;
    }
    write("uid_map", &id_map(sandbox_uid, euid))?;
    write("gid_map", &id_map(sandbox_gid, egid))?;
    Ok(())
}

/// Can this process create a user namespace? (max_user_namespaces > 0)
pub fn userns_available() -> bool {
    std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_the_spec() {
        let mut spec = SandboxSpec::default();
        let f = unshare_flags(&spec, spec.namespaces.user);
        assert_ne!(f & libc::CLONE_NEWNET, 0);
        assert_ne!(f & libc::CLONE_NEWPID, 0);
        assert_eq!(f & libc::CLONE_NEWUSER, 0);
        spec.network = Network::Host;
        spec.namespaces.user = true;
        let f = unshare_flags(&spec, spec.namespaces.user);
        assert_eq!(f & libc::CLONE_NEWNET, 0);
        assert_ne!(f & libc::CLONE_NEWUSER, 0);
        assert_eq!(join_flags(&spec) & libc::CLONE_NEWUSER as u64, 0);
        assert_eq!(join_flags(&spec) & libc::CLONE_NEWPID as u64, 0);
    }

    #[test]
    fn root_maps_a_range_and_users_map_themselves() {
        assert_eq!(id_map(1000, 0), "0 100000 65536\n");
        assert_eq!(id_map(1000, 1234), "1000 1234 1\n");
    }
}
