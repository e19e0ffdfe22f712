//! The public handle: [`Sandbox::spawn`] builds a sandbox from a [`SandboxSpec`] and
//! returns once its init reports ready; `wait`, `kill` and `destroy` end it;
//! `join_plan` describes how another process joins a shell sandbox.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cgroups::{CgroupLimits, CgroupStats, CgroupSystem, SandboxCgroup};
use crate::error::{Error, Result};
use crate::landlock::{self, LandlockPlan};
use crate::process::channel::Channel;
use crate::process::message::{Message, StepTime, monotonic_ns};
use crate::process::start::{self, dup_above};
use crate::process::{ChildPlan, Hardening, PayloadPlan, close_ranges};
use crate::rootfs::MountPlan;
use crate::seccomp::{self, BpfProgram};
use crate::spec::{CapabilityMode, Network, ProcessSpec, Protection, SandboxSpec, SeccompPolicy};
use crate::state::{StateRecord, own_start_time};
use crate::syscall::Errno;
use crate::{capabilities, gc, namespaces, rlimits};

/// Where a standard stream of the payload comes from.
#[derive(Debug, Default)]
pub enum Stdio {
    /// The runtime's own stream.
    #[default]
    Inherit,
    /// /dev/null.
    Null,
    /// This fd (e.g. one end of a pipe).
    Fd(OwnedFd),
}

/// How to start the payload.
#[derive(Debug, Default)]
pub struct SpawnOptions {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// Extra fds for the payload: `(fd, number it gets inside)`.
    pub extra_fds: Vec<(OwnedFd, RawFd)>,
    /// Keep PR_SET_PDEATHSIG(SIGKILL) after setup: the sandbox dies with the runtime
    /// process at once (its parent thread is the spawner's, parked for the process's
    /// lifetime). Without it, init ends the sandbox when the runtime's end of its channel
    /// closes, which a dead runtime's does too.
    pub die_with_runtime: bool,
}

/// How the payload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    fn from_wait(status: i32) -> Self {
        if libc::WIFEXITED(status) {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        } else {
            ExitStatus::Signaled(libc::WTERMSIG(status))
        }
    }

    /// Shell convention: the exit code, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

/// Why the runtime or the kernel killed the sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum KillReason {
    /// The wall-clock timeout passed.
    Timeout { after: Duration },
    /// The kernel's OOM killer, at the cgroup's memory limit.
    OutOfMemory { limit: Option<u64> },
    /// Killed while the pids limit was being hit.
    PidsLimit { limit: Option<u64> },
}

fn format_bytes(b: u64) -> String {
    const MIB: u64 = 1 << 20;
    if b >= MIB && b.is_multiple_of(MIB) {
        format!("{} MiB", b / MIB)
    } else if b >= 1024 && b.is_multiple_of(1024) {
        format!("{} KiB", b / 1024)
    } else {
        format!("{b} bytes")
    }
}

impl std::fmt::Display for KillReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KillReason::Timeout { after } => {
                write!(
                    f,
                    "killed: timeout ({:.3}s wall-clock limit reached)",
                    after.as_secs_f64()
                )
            }
            KillReason::OutOfMemory { limit: Some(l) } => {
                write!(f, "killed: out of memory (limit {})", format_bytes(*l))
            }
            KillReason::OutOfMemory { limit: None } => write!(f, "killed: out of memory"),
            KillReason::PidsLimit { limit } => match limit {
                Some(l) => write!(f, "killed: pids limit ({l}) reached"),
                None => write!(f, "killed: pids limit reached"),
            },
        }
    }
}

/// The runtime's own timestamps for one sandbox (CLOCK_MONOTONIC ns), so benchmarks can
/// compare self-reported against wall-clock figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    /// `spawn` was called.
    pub request_ns: u64,
    /// fork returned in the runtime.
    pub forked_ns: u64,
    /// init reported ready (payload forked).
    pub ready_ns: u64,
    /// init's exit was seen.
    pub exited_ns: Option<u64>,
    /// Ends of the children's steps (middle process and init).
    pub steps: Vec<StepTime>,
}

impl Timings {
    /// request → ready.
    pub fn start_latency(&self) -> Duration {
        Duration::from_nanos(self.ready_ns.saturating_sub(self.request_ns))
    }
}

/// The end of a sandbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExitReport {
    pub status: ExitStatus,
    pub killed: Option<KillReason>,
    /// execve failed inside (errno); status is then 127 (ENOENT) or 126.
    pub exec_errno: Option<i32>,
    pub cgroup: Option<CgroupStats>,
    pub timings: Timings,
}

impl ExitReport {
    /// The exit code by shell convention (128 + signal when killed).
    pub fn code(&self) -> i32 {
        self.status.code()
    }
}

/// How a process joins a shell sandbox (see docs/architecture.md, "Kernels").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinPlan {
    /// setns flags for after the fork (pid is entered before it).
    pub namespaces: u64,
    pub uid: u32,
    pub gid: u32,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// `(resource, soft, hard)`.
    pub rlimits: Vec<(u32, u64, u64)>,
    pub landlock: Option<LandlockPlan>,
    /// base64 of the `struct sock_filter` array; None when seccomp is off.
    pub seccomp_bpf: Option<String>,
    pub hostname: String,
    pub drop_capabilities: bool,
    pub no_new_privs: bool,
}

/// The plan and the fds to pass with it (by SCM_RIGHTS, for another process).
#[derive(Debug)]
pub struct Join<'a> {
    pub plan: JoinPlan,
    /// init's pidfd: `setns(pidfd, CLONE_NEWPID)` before fork, the rest after.
    pub pidfd: BorrowedFd<'a>,
    /// `cgroup.procs` of each of the sandbox's cgroups (write "0" to join).
    pub cgroup_procs: Vec<BorrowedFd<'a>>,
}

/// What a joiner of a shell gets from [`Sandbox::spawn_with_hook`] as soon as the shell's
/// init exists, usually before its setup (mounts, pivot, hardening) is done: enough to
/// start a slow preparation early (e.g. fork a process into init's pid namespace). The
/// sandbox is *not* ready: a joiner must not enter its other namespaces or its cgroup
/// before `spawn_with_hook` returns `Ok`. If it returns `Err`, init is killed, which kills every
/// process in its pid namespace.
#[derive(Debug)]
pub struct EarlyJoin<'a> {
    /// The plan [`Sandbox::join_plan`] will return.
    pub plan: &'a JoinPlan,
    /// init's host pid.
    pub init_pid: i32,
    /// init's pidfd (the one the sandbox keeps).
    pub pidfd: BorrowedFd<'a>,
    /// `cgroup.procs` of each of the sandbox's cgroups.
    pub cgroup_procs: Vec<BorrowedFd<'a>>,
    /// The sandbox's cgroup leaves ([`Sandbox::cgroup_paths`]).
    pub cgroup_paths: Vec<PathBuf>,
}

/// Process-wide facts, detected once.
struct Host {
    cgroups: CgroupSystem,
    staging: PathBuf,
    euid: u32,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let staging = PathBuf::from("/run/dsbox/root");
        let _ = std::fs::create_dir_all(&staging);
        Host {
            cgroups: CgroupSystem::detect(),
            staging,
            // SAFETY: geteuid has no preconditions.
            euid: unsafe { libc::geteuid() },
        }
    })
}

/// The cgroup system this process uses (detected once).
pub fn cgroup_system() -> &'static CgroupSystem {
    &host().cgroups
}

/// Does this process run as root (euid 0)? Without root, sandboxes use a user namespace
/// and cgroups only where a parent was delegated.
pub fn runtime_is_root() -> bool {
    host().euid == 0
}

/// DSBOX_PROFILE=1: timestamp every mount operation and payload step (read once, in
/// the parent).
fn profile() -> bool {
    static P: OnceLock<bool> = OnceLock::new();
    *P.get_or_init(|| std::env::var_os("DSBOX_PROFILE").is_some_and(|v| v == "1"))
}

fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{:x}-{:x}", std::process::id(), own_start_time(), n)
}

/// Is `protection` available here, and if not, why and how to fix it.
pub fn check_protection(p: Protection) -> std::result::Result<(), (String, &'static str)> {
    match p {
        Protection::Seccomp if !seccomp::kernel_supports_filters() => Err((
            "the kernel has no seccomp filter support".into(),
            "use a kernel built with CONFIG_SECCOMP_FILTER=y",
        )),
        Protection::Landlock if landlock::kernel_abi() == 0 => Err((
            "landlock is not enabled in this kernel".into(),
            "use Linux >= 5.13 with CONFIG_SECURITY_LANDLOCK=y and `landlock` in the lsm= boot parameter",
        )),
        Protection::Cgroup => match cgroup_system() {
            CgroupSystem::Unavailable { reason } => Err((
                reason.clone(),
                "mount cgroup v2 with the memory and pids controllers enabled (or v1 memory and pids hierarchies) and run as root",
            )),
            _ => Ok(()),
        },
        Protection::Userns if !namespaces::userns_available() => Err((
            "user namespaces are disabled".into(),
            "sysctl -w user.max_user_namespaces=15000",
        )),
        _ => Ok(()),
    }
}

fn exec_candidates(process: &ProcessSpec, env: &[(String, String)]) -> Vec<CString> {
    let prog = &process.args[0];
    if prog.contains('/') {
        return CString::new(prog.as_str()).into_iter().collect();
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(crate::spec::DEFAULT_PATH);
    path.split(':')
        .filter(|d| !d.is_empty())
        .filter_map(|d| CString::new(format!("{}/{prog}", d.trim_end_matches('/'))).ok())
        .collect()
}

/// A running (or finished) sandbox. Dropping it destroys it (best effort).
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    init_pid: i32,
    pidfd: OwnedFd,
    channel: Channel,
    pidns: bool,
    cgroup: Option<SandboxCgroup>,
    cgroup_procs: Vec<OwnedFd>,
    memory_limit: Option<u64>,
    pids_limit: Option<u64>,
    timeout: Option<Duration>,
    state_path: Option<PathBuf>,
    timings: Timings,
    exec_errno: Option<i32>,
    payload_status: Option<i32>,
    killed: Option<KillReason>,
    report: Option<ExitReport>,
    /// The middle process when it had not exited by `Ready` (reaped in `destroy`).
    middle_pending: Option<i32>,
    init_reaped: bool,
    join: JoinPlan,
    destroyed: bool,
}

impl Sandbox {
    /// Build the sandbox described by `spec` and start its payload (or, without a
    /// process, an empty shell that others join). Returns once init is ready.
    ///
    /// ```no_run
    /// use dsbox_runtime::{Sandbox, SandboxSpec, SpawnOptions};
    /// let spec = SandboxSpec::builder().with_command(["/bin/echo", "hi"]).build()?;
    /// let mut sandbox = Sandbox::spawn(&spec, SpawnOptions::default())?;
    /// let report = sandbox.wait()?;
    /// assert_eq!(report.code(), 0);
    /// sandbox.destroy()?;
    /// # Ok::<(), dsbox_runtime::Error>(())
    /// ```
    pub fn spawn(spec: &SandboxSpec, opts: SpawnOptions) -> Result<Sandbox> {
        Self::spawn_with_hook(spec, opts, &mut |_| {})
    }

    /// [`spawn`](Self::spawn), calling `init_started` once on this thread as soon as
    /// init's pid is known (usually about a millisecond before init is ready; later when
    /// the middle process that reports it is descheduled) with what a joiner needs
    /// ([`EarlyJoin`]). It is not called when the start fails before. The hook must be
    /// quick and must not block.
    pub fn spawn_with_hook(
        spec: &SandboxSpec,
        opts: SpawnOptions,
        init_started: &mut dyn FnMut(EarlyJoin<'_>),
    ) -> Result<Sandbox> {
        let request_ns = monotonic_ns();
        spec.validate()?;
        let host = host();
        gc::startup_sweep(&host.cgroups, spec.cgroup_parent.as_deref());
        for &p in &spec.require {
            if let Err((reason, hint)) = check_protection(p) {
                return Err(Error::MissingProtection {
                    protection: p,
                    reason,
                    hint,
                });
            }
        }
        let userns =
            spec.namespaces.user || host.euid != 0 || spec.require.contains(&Protection::Userns);
        let seccomp: Option<BpfProgram> = match &spec.seccomp {
            SeccompPolicy::Disabled => None,
            SeccompPolicy::File(path) => Some(seccomp::compile_file(path)?),
            SeccompPolicy::Default if seccomp::kernel_supports_filters() => {
                Some(seccomp::default_program())
            }
            SeccompPolicy::Default => {
                tracing::warn!("seccomp filters are unavailable in this kernel; running without");
                None
            }
        };
        let abi = landlock::kernel_abi();
        if abi == 0 && spec.landlock.enabled {
            tracing::debug!("landlock is unavailable in this kernel; running without it");
        }
        let landlock_plan = LandlockPlan::for_spec(spec, abi);
        let mounts = MountPlan::build(spec, &host.staging, userns)?;
        let id = new_id();
        Self::spawn_in(
            spec,
            opts,
            request_ns,
            id,
            mounts,
            seccomp,
            landlock_plan,
            userns,
            init_started,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_in(
        spec: &SandboxSpec,
        opts: SpawnOptions,
        request_ns: u64,
        id: String,
        mounts: MountPlan,
        seccomp: Option<BpfProgram>,
        landlock_plan: Option<LandlockPlan>,
        userns: bool,
        init_started: &mut dyn FnMut(EarlyJoin<'_>),
    ) -> Result<Sandbox> {
        macro_rules! tri {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err(Error::from(e)),
                }
            };
        }
        let process = spec.process.clone().unwrap_or_default();
        let env = process.effective_env();
        let (parent_chan, child_chan) = tri!(Channel::pair());

        // Every fd the payload gets is first moved above every target number, so the
        // child's dup2 calls cannot clobber each other.
        let max_target = opts
            .extra_fds
            .iter()
            .map(|(_, t)| *t)
            .chain([2])
            .max()
            .unwrap_or(2);
        let min = max_target + 1;
        let mut held: Vec<OwnedFd> = Vec::new();
        let mut fd_moves = Vec::new();
        for (target, stdio) in [(0, &opts.stdin), (1, &opts.stdout), (2, &opts.stderr)] {
            let high = match stdio {
                Stdio::Inherit => continue,
                Stdio::Null => {
                    let null = tri!(
                        std::fs::File::options()
                            .read(true)
                            .write(true)
                            .open("/dev/null")
                            .map_err(|error| Error::Io {
                                op: "open",
                                path: "/dev/null".into(),
                                error,
                            })
                    );
                    tri!(dup_above(null.as_raw_fd(), min))
                }
                Stdio::Fd(fd) => tri!(dup_above(fd.as_raw_fd(), min)),
            };
            fd_moves.push((high.as_raw_fd(), target));
            held.push(high);
        }
        let mut targets = vec![0, 1, 2];
        for (fd, target) in &opts.extra_fds {
            let high = tri!(dup_above(fd.as_raw_fd(), min));
            fd_moves.push((high.as_raw_fd(), *target));
            targets.push(*target);
            held.push(high);
        }
        let child_fd = tri!(dup_above(child_chan.raw_fd(), min));
        drop(child_chan);
        targets.push(child_fd.as_raw_fd());

        let drop_caps = spec.capabilities == CapabilityMode::Drop;
        let hardening = Hardening {
            uid: process.uid,
            gid: process.gid,
            // A root runtime keeps setgroups allowed in a user namespace (see namespaces).
            setgroups: !userns || host().euid == 0,
            drop_caps,
            last_cap: capabilities::last_cap(),
            no_new_privs: spec.no_new_privs,
            landlock: landlock_plan.as_ref().map(LandlockPlan::prepare),
            seccomp: seccomp.clone(),
        };
        // The built-in policy is installed once by init and inherited (see init.rs).
        let seccomp_in_init = spec.namespaces.pid
            && matches!(spec.seccomp, SeccompPolicy::Default)
            && hardening.seccomp.is_some();
        let payload = spec.process.as_ref().map(|p| PayloadPlan {
            candidates: exec_candidates(p, &env),
            argv: p
                .args
                .iter()
                .filter_map(|a| CString::new(a.as_str()).ok())
                .collect(),
            envp: env
                .iter()
                .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
                .collect(),
            cwd: CString::new(p.cwd.as_os_str().as_bytes()).unwrap_or_default(),
            rlimits: spec.limits.rlimits.clone(),
            fd_moves: fd_moves.clone(),
            close_ranges: close_ranges(&targets),
            profile: profile(),
        });
        let plan = ChildPlan {
            unshare_flags: namespaces::unshare_flags(spec, userns),
            become_ns_root: userns && host().euid == 0,
            userns,
            pidns: spec.namespaces.pid,
            mounts,
            hostname: spec.hostname.as_bytes().to_vec(),
            loopback: spec.network == Network::None,
            payload,
            init_hardening: Hardening {
                landlock: None,
                seccomp: if seccomp_in_init {
                    None
                } else {
                    hardening.seccomp.clone()
                },
                ..hardening.clone()
            },
            seccomp_in_init: if seccomp_in_init {
                hardening.seccomp.clone()
            } else {
                None
            },
            payload_hardening: Hardening {
                seccomp: if seccomp_in_init {
                    None
                } else {
                    hardening.seccomp.clone()
                },
                ..hardening
            },
            die_with_parent: opts.die_with_runtime,
            profile: profile(),
            runtime_pid: std::process::id() as i32,
        };
        // The cgroup(s) are created after the fork, while the middle process unshares.
        let mut cgroup: Option<SandboxCgroup> = None;
        let mut cgroup_procs: Vec<OwnedFd> = Vec::new();
        let limits = CgroupLimits {
            memory: spec.limits.memory,
            pids: spec.limits.pids,
            cpus: spec.limits.cpus,
            freezer: !spec.namespaces.pid,
        };
        let no_limits = limits.memory.is_none() && limits.pids.is_none() && limits.cpus.is_none();
        // The cgroup leaves, for the early-join hook (the closure below owns `cgroup`).
        let early_paths: std::cell::RefCell<Vec<PathBuf>> = Default::default();
        let mut join = || -> std::result::Result<Vec<RawFd>, start::StartError> {
            match host()
                .cgroups
                .create(&id, spec.cgroup_parent.as_deref(), &limits)
            {
                Ok(Some(cg)) => {
                    let fds = cg.open_procs();
                    *early_paths.borrow_mut() = cg.paths();
                    cgroup = Some(cg);
                    cgroup_procs = fds?;
                }
                Ok(None) if no_limits => {}
                Ok(None) => {
                    let reason = match &host().cgroups {
                        CgroupSystem::Unavailable { reason } => reason.clone(),
                        _ => String::new(),
                    };
                    return Err(start::StartError::NoCgroups { reason });
                }
                Err(e) if !spec.require.contains(&Protection::Cgroup) && no_limits => {
                    // Nothing was asked of the cgroup; say so only in the debug log.
                    tracing::debug!("running without a cgroup: {e}");
                }
                Err(e) => return Err(e.into()),
            }
            Ok(cgroup_procs.iter().map(AsRawFd::as_raw_fd).collect())
        };
        let join_plan = JoinPlan {
            namespaces: namespaces::join_flags(spec),
            uid: process.uid,
            gid: process.gid,
            cwd: process.cwd.clone(),
            env,
            rlimits: rlimits::as_triples(&spec.limits.rlimits),
            landlock: landlock_plan,
            seccomp_bpf: seccomp.as_ref().map(BpfProgram::to_base64),
            hostname: spec.hostname.clone(),
            drop_capabilities: drop_caps,
            no_new_privs: spec.no_new_privs,
        };
        // The cgroup.procs fds the join closure returned, as raw numbers (the closure
        // holds the owned fds until `start` returns).
        let mut early = |init_pid: i32, pidfd: BorrowedFd<'_>, procs: &[RawFd]| {
            init_started(EarlyJoin {
                plan: &join_plan,
                init_pid,
                pidfd,
                // SAFETY: these are the fds `join` opened; they stay open (owned by
                // `cgroup_procs`) at least until `start` returns, and the hook only
                // borrows them for its call.
                cgroup_procs: procs
                    .iter()
                    .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) })
                    .collect(),
                cgroup_paths: early_paths.borrow().clone(),
            })
        };
        let started = start::start(
            &plan,
            parent_chan,
            child_fd,
            process.uid,
            process.gid,
            &mut join,
            &mut early,
        );
        let started = match started {
            Ok(s) => s,
            Err(err) => {
                drop(cgroup_procs);
                if let Some(cg) = cgroup
                    && let Err(cleanup) = cg.remove()
                {
                    return Err(Error::WithCleanup {
                        first: Box::new(err.into()),
                        cleanup: Box::new(cleanup.into()),
                    });
                }
                return Err(err.into());
            }
        };
        drop(held);
        drop(opts);

        let join = join_plan;
        let mut sandbox = Sandbox {
            id,
            init_pid: started.init_pid,
            pidfd: started.pidfd,
            channel: started.channel,
            pidns: spec.namespaces.pid,
            cgroup,
            // Kept for joiners of a shell only; a run-mode sandbox needs no more joins.
            cgroup_procs: if spec.process.is_none() {
                cgroup_procs
            } else {
                Vec::new()
            },
            memory_limit: spec.limits.memory,
            pids_limit: spec.limits.pids,
            timeout: spec.limits.timeout,
            state_path: None,
            timings: Timings {
                request_ns,
                forked_ns: started.forked_ns,
                ready_ns: started.ready_ns,
                exited_ns: None,
                steps: started.steps,
            },
            exec_errno: started.exec_failed,
            payload_status: None,
            killed: None,
            report: None,
            middle_pending: started.middle_pending,
            init_reaped: false,
            join,
            destroyed: false,
        };
        let record = StateRecord {
            id: sandbox.id.clone(),
            runtime_pid: std::process::id() as i32,
            runtime_start_time: own_start_time(),
            init_pid: sandbox.init_pid,
            cgroups: sandbox
                .cgroup
                .as_ref()
                .map(SandboxCgroup::paths)
                .unwrap_or_default(),
        };
        match record.write(Path::new(crate::state::STATE_DIR)) {
            Ok(path) => sandbox.state_path = Some(path),
            Err(e) => tracing::debug!("cannot write the state record of {}: {e}", sandbox.id),
        }
        Ok(sandbox)
    }

    /// The sandbox's id (also its cgroup's name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Host pid of init (or of the payload when there is no pid namespace).
    pub fn pid(&self) -> i32 {
        self.init_pid
    }

    /// A pidfd of [`pid`](Self::pid); readable once it exited.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The runtime's timestamps for this sandbox.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Memory, OOM and pids counters of the sandbox's cgroup (None without cgroups).
    ///
    /// ```no_run
    /// # use dsbox_runtime::{Sandbox, SandboxSpec, SpawnOptions};
    /// # let spec = SandboxSpec::builder().with_command(["/bin/true"]).build()?;
    /// let mut sandbox = Sandbox::spawn(&spec, SpawnOptions::default())?;
    /// sandbox.wait()?;
    /// if let Some(stats) = sandbox.cgroup() {
    ///     println!("peak {:?} bytes, {} OOM kills", stats.memory_peak, stats.oom_kills);
    /// }
    /// # Ok::<(), dsbox_runtime::Error>(())
    /// ```
    pub fn cgroup(&self) -> Option<CgroupStats> {
        self.cgroup.as_ref().map(SandboxCgroup::stats)
    }

    /// Paths of the sandbox's cgroup leaves.
    pub fn cgroup_paths(&self) -> Vec<PathBuf> {
        self.cgroup
            .as_ref()
            .map(SandboxCgroup::paths)
            .unwrap_or_default()
    }

    /// How to join this sandbox (meant for shells, `process: None`).
    ///
    /// ```no_run
    /// use dsbox_runtime::{Sandbox, SandboxSpec, SpawnOptions};
    /// let sandbox = Sandbox::spawn(&SandboxSpec::default(), SpawnOptions::default())?;
    /// let join = sandbox.join_plan();
    /// println!("{}", serde_json::to_string(&join.plan).unwrap());
    /// # Ok::<(), dsbox_runtime::Error>(())
    /// ```
    pub fn join_plan(&self) -> Join<'_> {
        Join {
            plan: self.join.clone(),
            pidfd: self.pidfd.as_fd(),
            cgroup_procs: self.cgroup_procs.iter().map(AsFd::as_fd).collect(),
        }
    }

    fn deadline_ns(&self) -> Option<u64> {
        self.timeout
            .map(|t| self.timings.ready_ns + t.as_nanos() as u64)
    }

    /// Check without blocking; enforces the timeout too (kills when it passed).
    ///
    /// ```no_run
    /// # use dsbox_runtime::{Sandbox, SandboxSpec, SpawnOptions};
    /// # let spec = SandboxSpec::builder().with_command(["/bin/true"]).build()?;
    /// let mut sandbox = Sandbox::spawn(&spec, SpawnOptions::default())?;
    /// while sandbox.try_wait()?.is_none() {
    ///     std::thread::sleep(std::time::Duration::from_millis(10));
    /// }
    /// # Ok::<(), dsbox_runtime::Error>(())
    /// ```
    pub fn try_wait(&mut self) -> Result<Option<ExitReport>> {
        if let Some(r) = &self.report {
            return Ok(Some(r.clone()));
        }
        if let Some(report) = self.poll_end(0) {
            return Ok(Some(report));
        }
        if let Some(deadline) = self.deadline_ns()
            && monotonic_ns() >= deadline
            && self.killed.is_none()
        {
            self.kill_for(KillReason::Timeout {
                after: self.timeout.unwrap_or_default(),
            })?;
        }
        Ok(None)
    }

    /// Wait for the end, killing the sandbox when its timeout passes. Returns when the
    /// payload's exit is known (init reports it before leaving); init itself is reaped by
    /// `destroy`, so the namespace teardown is not on this path.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use dsbox_runtime::{Sandbox, SandboxSpec, SpawnOptions};
    /// let spec = SandboxSpec::builder()
    ///     .with_command(["/bin/sleep", "60"])
    ///     .with_timeout(Duration::from_secs(1))
    ///     .build()?;
    /// let mut sandbox = Sandbox::spawn(&spec, SpawnOptions::default())?;
    /// let report = sandbox.wait()?;
    /// assert_eq!(report.code(), 137);
    /// # Ok::<(), dsbox_runtime::Error>(())
    /// ```
    pub fn wait(&mut self) -> Result<ExitReport> {
        if let Some(r) = &self.report {
            return Ok(r.clone());
        }
        loop {
            let timeout_ms = match (self.deadline_ns(), self.killed) {
                (Some(deadline), None) => {
                    let now = monotonic_ns();
                    if now >= deadline {
                        self.kill_for(KillReason::Timeout {
                            after: self.timeout.unwrap_or_default(),
                        })?;
                        continue;
                    }
                    (deadline - now).div_ceil(1_000_000).min(i32::MAX as u64) as i32
                }
                _ => -1,
            };
            if let Some(report) = self.poll_end(timeout_ms) {
                return Ok(report);
            }
        }
    }

    /// Poll init's pidfd and the channel; build the report when the end is known.
    fn poll_end(&mut self, timeout_ms: i32) -> Option<ExitReport> {
        let mut pfds = [
            libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.channel.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: pfds is an array of two valid pollfds.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout_ms) };
        if n <= 0 {
            return None;
        }
        if pfds[1].revents != 0 {
            self.drain_channel();
        }
        if pfds[0].revents != 0 {
            let status = self.reap_init();
            self.drain_channel();
            return Some(self.finish(status));
        }
        if self.pidns && self.payload_status.is_some() {
            return Some(self.finish(None));
        }
        None
    }

    fn drain_channel(&mut self) {
        while let Ok(Some(msg)) = self.channel.try_recv() {
            match msg {
                Message::PayloadExited { status } => self.payload_status = Some(status),
                Message::ExecFailed { errno } => self.exec_errno = Some(errno),
                Message::PayloadSteps { steps } => self.timings.steps.extend(steps),
                Message::SetupFailed(e) => tracing::warn!(
                    "sandbox {}: init failed after start while {}: {}",
                    self.id,
                    e.step,
                    Errno::from_raw(e.errno)
                ),
                _ => {}
            }
        }
    }

    /// The middle process is long gone by now; reaping it releases its pids-cgroup charge.
    fn reap_middle_if_gone(&mut self) {
        if let Some(middle) = self.middle_pending {
            let mut status = 0;
            // SAFETY: status is a valid out-pointer; middle is our child.
            if unsafe { libc::waitpid(middle, &mut status, libc::WNOHANG | libc::__WALL) } != 0 {
                self.middle_pending = None;
            }
        }
    }

    /// waitpid for init (blocking). Returns the wait status, or None if it was reaped
    /// already (by us, or by someone else's `waitpid(-1)`).
    fn reap_init(&mut self) -> Option<i32> {
        if self.init_reaped {
            return None;
        }
        let mut status = 0;
        loop {
            // SAFETY: status is a valid out-pointer; init_pid is our child.
            let rc = unsafe { libc::waitpid(self.init_pid, &mut status, libc::__WALL) };
            if rc == self.init_pid {
                self.init_reaped = true;
                return Some(status);
            }
            if rc < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            self.init_reaped = true;
            return None;
        }
    }

    fn finish(&mut self, init_status: Option<i32>) -> ExitReport {
        let exited_ns = monotonic_ns();
        self.reap_middle_if_gone();
        let status = match (self.pidns, self.payload_status, init_status) {
            (true, Some(s), _) => ExitStatus::from_wait(s),
            (_, _, Some(s)) => ExitStatus::from_wait(s),
            _ => ExitStatus::Signaled(libc::SIGKILL),
        };
        let stats = self.cgroup();
        let killed = self.killed.or_else(|| {
            let stats = stats?;
            let sigkilled = status == ExitStatus::Signaled(libc::SIGKILL);
            if stats.oom_kills > 0 && sigkilled {
                Some(KillReason::OutOfMemory {
                    limit: self.memory_limit,
                })
            } else if stats.pids_max_events > 0 && matches!(status, ExitStatus::Signaled(_)) {
                Some(KillReason::PidsLimit {
                    limit: self.pids_limit,
                })
            } else {
                None
            }
        });
        self.timings.exited_ns = Some(exited_ns);
        let report = ExitReport {
            status,
            killed,
            exec_errno: self.exec_errno,
            cgroup: stats,
            timings: self.timings.clone(),
        };
        self.report = Some(report.clone());
        report
    }

    fn kill_for(&mut self, reason: KillReason) -> Result<()> {
        self.killed = Some(reason);
        self.kill()
    }

    /// SIGKILL the sandbox: init (whose exit takes the whole pid namespace along), or
    /// every process of the cgroup when there is no pid namespace.
    ///
    /// ```no_run
    /// # use dsbox_runtime::{Sandbox, SandboxSpec, SpawnOptions};
    /// # let spec = SandboxSpec::builder().with_command(["/bin/sleep", "60"]).build()?;
    /// let mut sandbox = Sandbox::spawn(&spec, SpawnOptions::default())?;
    /// sandbox.kill()?;
    /// assert_eq!(sandbox.wait()?.code(), 137);
    /// # Ok::<(), dsbox_runtime::Error>(())
    /// ```
    pub fn kill(&mut self) -> Result<()> {
        if self.report.is_some() {
            return Ok(());
        }
        self.send_kill()
    }

    fn send_kill(&mut self) -> Result<()> {
        if self.init_reaped {
            return Ok(());
        }
        // SAFETY: pidfd_send_signal on our pidfd with no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if rc < 0 && Errno::last() != Errno::ESRCH {
            return Err(Error::Sys {
                id: self.id.clone(),
                op: "pidfd_send_signal",
                errno: Errno::last(),
            });
        }
        if !self.pidns
            && let Some(cg) = &self.cgroup
        {
            cg.kill_all()?;
        }
        Ok(())
    }

    /// Kill, reap, remove the cgroup(s) and the state record.
    ///
    /// ```no_run
    /// # use dsbox_runtime::{Sandbox, SandboxSpec, SpawnOptions};
    /// let sandbox = Sandbox::spawn(&SandboxSpec::default(), SpawnOptions::default())?;
    /// sandbox.destroy()?; // a shell: nothing runs until someone joins; now it is gone
    /// # Ok::<(), dsbox_runtime::Error>(())
    /// ```
    pub fn destroy(mut self) -> Result<()> {
        self.destroy_inner()
    }

    fn destroy_inner(&mut self) -> Result<()> {
        if self.destroyed {
            return Ok(());
        }
        self.destroyed = true;
        let mut first: Option<Error> = None;
        if !self.init_reaped {
            // After a reported end, init is leaving by itself; otherwise this kills the
            // sandbox. Either way, SIGKILL makes sure nothing lingers.
            if let Err(e) = self.send_kill() {
                first.get_or_insert(e);
            }
            let status = self.reap_init();
            if self.report.is_none() {
                self.drain_channel();
                self.finish(status);
            }
        }
        self.cgroup_procs.clear();
        if let Some(middle) = self.middle_pending.take() {
            start::waitpid_blocking(middle);
        }
        if let Some(cg) = &self.cgroup {
            if !self.pidns {
                let _ = cg.kill_all();
            }
            if let Err(e) = cg.remove() {
                first = Some(match first {
                    Some(f) => Error::WithCleanup {
                        first: Box::new(f),
                        cleanup: Box::new(e.into()),
                    },
                    None => e.into(),
                });
            }
        }
        if let Some(path) = self.state_path.take() {
            let _ = std::fs::remove_file(path);
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(e) = self.destroy_inner() {
            tracing::warn!("destroying sandbox {}: {e}", self.id);
        }
    }
}

static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

const FORWARDED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2];

fn forwarded_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// For a CLI that runs one sandbox in the foreground, before `spawn`: hold SIGTERM,
/// SIGHUP, SIGUSR1 and SIGUSR2 (blocked, so one that arrives during the start is kept
/// for [`forward_signals_to`], not lost or fatal). The children reset their signal mask.
pub fn hold_forwarded_signals() {
    let set = forwarded_set();
    // SAFETY: set is a valid sigset_t; only the calling thread's mask changes.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// After `spawn`: SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 sent to this process go to the
/// sandbox's init (which passes them to the payload); SIGINT/SIGQUIT are ignored here
/// because the terminal already delivers them to the payload (same process group).
/// Without this, a ^C or a SIGTERM would kill the runtime before it could clean up.
/// Process-wide: only for single-sandbox programs.
pub fn forward_signals_to(sandbox: &Sandbox) {
    FORWARD_TO.store(sandbox.pid(), Ordering::Relaxed);
    let set = forwarded_set();
    // SAFETY: installing a handler that only calls kill(2), SIG_IGN for two signals, and
    // unblocking the held signals (pending ones are delivered to the handler now).
    unsafe {
        for sig in FORWARDED {
            libc::signal(sig, forward_signal as *const () as libc::sighandler_t);
        }
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_and_reports_can_move_between_threads() {
        // The kernel crate drives sandboxes from tokio tasks.
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Sandbox>();
        send_sync::<ExitReport>();
        send_sync::<JoinPlan>();
        send_sync::<SandboxSpec>();
    }

    #[test]
    fn kill_reasons_read_like_the_docs() {
        let r = KillReason::OutOfMemory {
            limit: Some(512 << 20),
        };
        assert_eq!(r.to_string(), "killed: out of memory (limit 512 MiB)");
        let r = KillReason::Timeout {
            after: Duration::from_secs(2),
        };
        assert!(r.to_string().contains("timeout"));
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::Exited(3).code(), 3);
    }

    #[test]
    fn commands_without_a_slash_are_looked_up_in_the_sandbox_path() {
        let p = ProcessSpec::new(["python3", "-c", "1"]);
        let env = vec![("PATH".to_string(), "/opt/env/bin:/usr/bin/".to_string())];
        let c = exec_candidates(&p, &env);
        assert_eq!(
            c,
            vec![
                c"/opt/env/bin/python3".to_owned(),
                c"/usr/bin/python3".to_owned()
            ]
        );
        let p = ProcessSpec::new(["./x"]);
        assert_eq!(exec_candidates(&p, &env), vec![c"./x".to_owned()]);
    }
}
