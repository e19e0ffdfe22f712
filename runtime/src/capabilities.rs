//! Capabilities: drop every one of them. Bounding, ambient and inheritable go first,
//! while we still hold CAP_SETPCAP; permitted and effective are cleared by the kernel at
//! setresuid to a non-zero uid, and explicitly afterwards (for uid 0 payloads too).

use std::sync::OnceLock;

use crate::process::message::{Step, StepError};
use crate::syscall::Syscall;

/// Highest capability number this kernel knows (/proc/sys/kernel/cap_last_cap). Read once
/// in the parent so children do not touch the filesystem.
pub fn last_cap() -> u32 {
    static LAST: OnceLock<u32> = OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63)
    })
}

/// Before switching uid: empty the bounding, ambient and inheritable sets.
pub fn drop_before_setuid(sys: &dyn Syscall, last_cap: u32) -> Result<(), StepError> {
    let e = |errno| StepError::new(Step::DropCapabilities, errno, None);
    sys.drop_bounding_set(last_cap).map_err(e)?;
    sys.clear_ambient().map_err(e)?;
    sys.clear_inheritable().map_err(e)
}

/// After switching uid: empty permitted and effective as well.
pub fn clear_remaining(sys: &dyn Syscall) -> Result<(), StepError> {
    sys.clear_all_caps()
        .map_err(|e| StepError::new(Step::DropCapabilities, e, None))
}

/// Switch to `uid`/`gid` with no supplementary groups.
pub fn set_ids(sys: &dyn Syscall, uid: u32, gid: u32, setgroups: bool) -> Result<(), StepError> {
    let e = |errno| StepError::new(Step::SetIds, errno, None);
    if setgroups {
        sys.setgroups(&[]).map_err(e)?;
    }
    sys.setresgid(gid).map_err(e)?;
    sys.setresuid(uid).map_err(e)
}
