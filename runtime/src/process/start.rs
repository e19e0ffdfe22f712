//! The runtime side of the start path: have the spawner clone the middle process, answer
//! its id-map request, learn init's pid, wait for `Ready`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::ChildPlan;
use super::channel::{Channel, ChannelError};
use super::message::{Message, StepError, StepTime, monotonic_ns};
use super::spawner;
use crate::namespaces::{self, NamespaceError};

/// Errors of the start path as seen by the runtime.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("fork failed: {0}")]
    Fork(nix::errno::Errno),
    #[error(transparent)]
    Spawner(#[from] spawner::SpawnerError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    IdMap(#[from] NamespaceError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error(
        "memory, pids and cpu limits need cgroups, which are unavailable here ({reason}); mount cgroup v2 with the memory and pids controllers (see `dsbox doctor`) or drop the limits"
    )]
    NoCgroups { reason: String },
    #[error("sandbox setup failed while {step}{}: {errno}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default(), errno = nix::errno::Errno::from_raw(*errno))]
    Setup {
        step: super::message::Step,
        errno: i32,
        detail: Option<String>,
    },
    #[error("the sandbox process exited during setup without saying why (wait status {status})")]
    ChildDied { status: i32 },
    #[error("cannot open a pidfd for init (pid {pid}): {errno}")]
    Pidfd { pid: i32, errno: nix::errno::Errno },
    #[error("moving an fd above {min} failed: {errno}")]
    Dup {
        min: RawFd,
        errno: nix::errno::Errno,
    },
}

impl From<StepError> for StartError {
    fn from(e: StepError) -> Self {
        StartError::Setup {
            step: e.step,
            errno: e.errno,
            detail: e.detail,
        }
    }
}

/// What the runtime knows once the sandbox is ready.
#[derive(Debug)]
pub struct Started {
    pub init_pid: i32,
    pub pidfd: OwnedFd,
    pub payload_pid: Option<i32>,
    pub channel: Channel,
    pub steps: Vec<StepTime>,
    pub forked_ns: u64,
    pub ready_ns: u64,
    /// An `ExecFailed` that arrived before `Ready`.
    pub exec_failed: Option<i32>,
    /// The middle process, if it had not exited yet (reap it later).
    pub middle_pending: Option<i32>,
}

/// Duplicate `fd` to the lowest free number >= `min`, close-on-exec.
pub fn dup_above(fd: RawFd, min: RawFd) -> Result<OwnedFd, StartError> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd that we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(StartError::Dup {
            min,
            errno: nix::errno::Errno::last(),
        });
    }
    // SAFETY: `new` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Reap `pid` (our child), waiting for it.
pub fn waitpid_blocking(pid: i32) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer; pid is our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if rc == pid {
            return Some(status);
        }
        if rc < 0 && nix::errno::Errno::last() == nix::errno::Errno::EINTR {
            continue;
        }
        return None;
    }
}

/// Open a pidfd for `pid`.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, StartError> {
    // SAFETY: pidfd_open takes a pid and flags; the fd returned is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(StartError::Pidfd {
            pid,
            errno: nix::errno::Errno::last(),
        });
    }
    // SAFETY: a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Have the spawner clone the middle process, and drive the start path until init reports `Ready`.
/// `child_channel` must already sit above every fd number the payload will use.
/// `join_cgroups` runs right after the fork, while the middle process creates its
/// namespaces: it creates the sandbox's cgroup(s) and returns their `cgroup.procs` fds,
/// into which the middle process's pid is then written.
///
/// `init_started(init_pid, init_pidfd, cgroup_procs)` (the fds `join_cgroups` returned)
/// is called once, as soon as init's pid is known: init and its pid namespace exist, its
/// setup is usually still running (it may be done already when the middle process was
/// descheduled). A joiner can start its own slow preparation (e.g. a
/// fork into that pid namespace) meanwhile; whatever it starts must wait for the `Ok` of
/// this function before it enters the other namespaces or the cgroup.
pub fn start(
    plan: &ChildPlan,
    parent: Channel,
    child_channel: OwnedFd,
    sandbox_uid: u32,
    sandbox_gid: u32,
    join_cgroups: &mut dyn FnMut() -> Result<Vec<RawFd>, StartError>,
    init_started: &mut dyn FnMut(i32, BorrowedFd<'_>, &[RawFd]),
) -> Result<Started, StartError> {
    // The spawner clones the middle process (a child of ours) with its own copy of the
    // child's end; it never gets `parent`.
    let middle = match spawner::clone_middle(plan, child_channel.as_raw_fd()) {
        Ok(pid) => pid,
        Err(spawner::SpawnerError::Clone(errno)) => return Err(StartError::Fork(errno)),
        Err(e) => return Err(e.into()),
    };
    let forked_ns = monotonic_ns();
    // Our copy of the child's end must go, or EOF would never come.
    drop(child_channel);

    let mut init_pid = None;
    let mut steps = Vec::new();
    // Move the middle process into the sandbox's cgroup(s) while it unshares; init and
    // the payload inherit the cgroup. Nothing of the sandbox runs before `Go`.
    let cgroup_procs = match join_cgroups() {
        Ok(fds) => fds,
        Err(e) => {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(middle, libc::SIGKILL) };
            waitpid_blocking(middle);
            return Err(e);
        }
    };
    let mut join_error = None;
    let pid_text = middle.to_string();
    for &fd in &cgroup_procs {
        // SAFETY: writes pid_text's bytes to an open cgroup.procs fd.
        let n = unsafe { libc::write(fd, pid_text.as_ptr().cast(), pid_text.len()) };
        if n < 0 && join_error.is_none() {
            join_error = Some(nix::errno::Errno::last());
        }
    }
    steps.push(StepTime {
        step: super::message::Step::JoinCgroup,
        at_ns: monotonic_ns(),
    });
    if let Some(errno) = join_error {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(middle, libc::SIGKILL) };
        waitpid_blocking(middle);
        return Err(StartError::Setup {
            step: super::message::Step::JoinCgroup,
            errno: errno as i32,
            detail: None,
        });
    }
    if !plan.userns {
        parent.send(&Message::Go)?;
    }
    let mut exec_failed = None;
    let cleanup = |init_pid: Option<i32>| {
        if let Some(pid) = init_pid {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            waitpid_blocking(pid);
        }
        if init_pid != Some(middle) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(middle, libc::SIGKILL) };
            waitpid_blocking(middle);
        }
    };
    let mut ready: Option<(Option<i32>, u64)> = None;
    // Opened when init's pid arrives (the hook gets it then).
    let mut init_pidfd: Option<OwnedFd> = None;
    loop {
        if let (Some(init), Some((payload_pid, ready_ns))) = (init_pid, ready) {
            // The middle process exits right after reporting init's pid; reap it if it
            // is gone already, else leave it to `Sandbox::destroy` (no waiting here).
            let mut middle_pending = None;
            if init != middle {
                let mut status = 0;
                // SAFETY: status is a valid out-pointer; middle is our child.
                if unsafe { libc::waitpid(middle, &mut status, libc::WNOHANG | libc::__WALL) }
                    != middle
                {
                    middle_pending = Some(middle);
                }
            }
            let pidfd = match init_pidfd.take() {
                Some(fd) => fd,
                None => match pidfd_open(init) {
                    Ok(fd) => fd,
                    Err(e) => {
                        cleanup(Some(init));
                        return Err(e);
                    }
                },
            };
            steps.sort_by_key(|s| s.at_ns);
            return Ok(Started {
                init_pid: init,
                pidfd,
                payload_pid,
                channel: parent,
                steps,
                forked_ns,
                ready_ns,
                exec_failed,
                middle_pending,
            });
        }
        let msg = match parent.recv() {
            Ok(m) => m,
            Err(e) => {
                cleanup(init_pid);
                return Err(e.into());
            }
        };
        match msg {
            Some(Message::IdMapRequest) => {
                let r = namespaces::write_id_maps(middle, sandbox_uid, sandbox_gid)
                    .map_err(StartError::from)
                    .and_then(|()| Ok(parent.send(&Message::Go)?));
                if let Err(e) = r {
                    cleanup(init_pid);
                    return Err(e);
                }
            }
            Some(Message::InitStarted { pid, steps: s }) => {
                init_pid = Some(pid);
                steps.extend(s);
                // init is our child (CLONE_PARENT) and only we reap it: the pid names
                // exactly it until we do.
                match pidfd_open(pid) {
                    Ok(fd) => {
                        init_started(pid, fd.as_fd(), &cgroup_procs);
                        init_pidfd = Some(fd);
                    }
                    Err(e) => {
                        cleanup(init_pid);
                        return Err(e);
                    }
                }
            }
            Some(Message::Ready {
                payload_pid: p,
                steps: s,
            }) => {
                // Init may report `Ready` before the middle process (which cloned it and
                // was then descheduled) reports init's pid: wait for both.
                ready = Some((p, monotonic_ns()));
                steps.extend(s);
            }
            Some(Message::ExecFailed { errno }) => exec_failed = Some(errno),
            Some(Message::SetupFailed(e)) => {
                cleanup(init_pid);
                return Err(e.into());
            }
            Some(Message::PayloadExited { .. } | Message::Go | Message::PayloadSteps { .. }) => {}
            None => {
                let status = waitpid_blocking(middle).unwrap_or(-1);
                cleanup(init_pid.filter(|&p| p != middle));
                return Err(StartError::ChildDied { status });
            }
        }
    }
}
