//! The runtime's top-level error: one variant per module error, plus what `spawn` itself
//! checks (required protections).

use crate::cgroups::CgroupError;
use crate::oci::OciError;
use crate::process::channel::ChannelError;
use crate::process::start::StartError;
use crate::rootfs::PlanError;
use crate::seccomp::SeccompError;
use crate::spec::{Protection, SpecError};

/// Everything that can go wrong starting or managing a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("required protection `{protection}` is unavailable: {reason}; {hint}")]
    MissingProtection {
        protection: Protection,
        reason: String,
        hint: &'static str,
    },
    #[error("cannot {op} {}: {error}", path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("sandbox {id}: {op} failed: {errno}")]
    Sys {
        id: String,
        op: &'static str,
        errno: nix::errno::Errno,
    },
    #[error("{first}; cleaning up also failed: {cleanup}")]
    WithCleanup {
        first: Box<Error>,
        cleanup: Box<Error>,
    },
}

/// Result alias of the runtime.
pub type Result<T> = std::result::Result<T, Error>;
