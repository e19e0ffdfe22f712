//! Every message between the runtime and its children (middle process, init, payload),
//! as one serde enum. Sent as JSON, one message per `SOCK_SEQPACKET` datagram.

use serde::{Deserialize, Serialize};

/// A step of the start path, named in setup errors and in the timing profile.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    JoinCgroup,
    Unshare,
    WaitGo,
    UnshareCgroup,
    CloneInit,
    NetNamespace,
    MountPrivate,
    MountRoot,
    Mkdir,
    WriteFile,
    Symlink,
    Mknod,
    BindMount,
    RemountReadonly,
    MountTmpfs,
    MountProc,
    PivotRoot,
    DetachOldRoot,
    Sethostname,
    Loopback,
    ForkPayload,
    Stdio,
    CloseFds,
    Chdir,
    Rlimits,
    DropCapabilities,
    SetIds,
    NoNewPrivs,
    Landlock,
    Seccomp,
    Exec,
    SetupDone,
}

impl Step {
    /// Human name for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Step::JoinCgroup => "joining the cgroup",
            Step::Unshare => "creating namespaces (unshare)",
            Step::WaitGo => "waiting for the cgroup join and uid/gid map",
            Step::UnshareCgroup => "creating the cgroup namespace",
            Step::CloneInit => "starting init (clone)",
            Step::NetNamespace => "creating the network namespace",
            Step::MountPrivate => "making mounts private",
            Step::MountRoot => "mounting the root filesystem",
            Step::Mkdir => "creating a mount point",
            Step::WriteFile => "writing a generated file",
            Step::Symlink => "creating a symlink",
            Step::Mknod => "creating a device node",
            Step::BindMount => "bind-mounting",
            Step::RemountReadonly => "remounting read-only",
            Step::MountTmpfs => "mounting a tmpfs",
            Step::MountProc => "mounting /proc",
            Step::PivotRoot => "pivot_root",
            Step::DetachOldRoot => "detaching the old root",
            Step::Sethostname => "setting the hostname",
            Step::Loopback => "bringing up loopback",
            Step::ForkPayload => "forking the payload",
            Step::Stdio => "setting up stdio and passed fds",
            Step::CloseFds => "closing inherited fds",
            Step::Chdir => "changing to the working directory",
            Step::Rlimits => "setting rlimits",
            Step::DropCapabilities => "dropping capabilities",
            Step::SetIds => "switching uid/gid",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Landlock => "applying landlock",
            Step::Seccomp => "applying seccomp",
            Step::Exec => "exec",
            Step::SetupDone => "setup",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// A failed step: which one, the errno, and the path or value it concerned.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepError {
    pub step: Step,
    pub errno: i32,
    pub detail: Option<String>,
}

impl StepError {
    /// A failure of `step` with `errno`, about `detail` (a path, usually).
    pub fn new(step: Step, errno: nix::errno::Errno, detail: Option<&std::ffi::CStr>) -> Self {
        Self {
            step,
            errno: errno as i32,
            detail: detail.map(|d| d.to_string_lossy().into_owned()),
        }
    }
}

/// Monotonic timestamp (CLOCK_MONOTONIC, ns) of a step's end, measured in a child.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepTime {
    pub step: Step,
    pub at_ns: u64,
}

/// Every message of the parent/child protocol.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// middle → runtime: the user namespace exists; write uid_map/gid_map for me.
    IdMapRequest,
    /// runtime → middle: the middle process is in the sandbox's cgroup(s) (and its id
    /// maps are written, with a user namespace): go on.
    Go,
    /// middle → runtime: init was cloned; its pid in the runtime's pid namespace.
    InitStarted { pid: i32, steps: Vec<StepTime> },
    /// init (or middle without pid ns) → runtime: setup done, payload forked (or shell waiting).
    Ready {
        payload_pid: Option<i32>,
        steps: Vec<StepTime>,
    },
    /// any child → runtime: a setup step failed.
    SetupFailed(StepError),
    /// payload → runtime (profiling only): its step times, sent just before execve.
    PayloadSteps { steps: Vec<StepTime> },
    /// payload → runtime: execve failed for every candidate path.
    ExecFailed { errno: i32 },
    /// init → runtime: the payload ended with this wait status.
    PayloadExited { status: i32 },
}

/// Current CLOCK_MONOTONIC time in nanoseconds (vDSO, no syscall, safe after fork).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; clock_gettime only writes to it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_tagged_json() {
        let msgs = [
            Message::IdMapRequest,
            Message::InitStarted {
                pid: 42,
                steps: vec![StepTime {
                    step: Step::Unshare,
                    at_ns: 7,
                }],
            },
            Message::SetupFailed(StepError {
                step: Step::BindMount,
                errno: 2,
                detail: Some("/data".into()),
            }),
            Message::PayloadExited { status: 9 },
        ];
        for m in msgs {
            let json = serde_json::to_string(&m).unwrap();
            assert!(json.contains("\"type\""));
            assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), m);
        }
    }
}
