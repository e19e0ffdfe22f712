//! The child side of the start path: the middle process, init (pid 1) and the payload's
//! last steps before `execve`. These functions run after `fork` in a copy of a possibly
//! multi-threaded runtime, so they never log, print, panic on purpose or touch std's
//! locks (stdout, env); a failed step is sent to the runtime as `{step, errno}` and the
//! process `_exit`s. (glibc's fork leaves malloc usable, so building a message is fine.)

use std::os::fd::RawFd;

use super::channel::send_quiet;
use super::message::{Message, Step, StepError, StepTime, monotonic_ns};
use super::{ChildPlan, Hardening, PayloadPlan};
use crate::syscall::{Errno, LinuxSyscall, Syscall};
use crate::{capabilities, rlimits};

/// Exit code of a child whose setup failed (the runtime reports the step instead).
pub(super) const SETUP_FAILED: i32 = 125;

/// Signals init forwards to the payload.
pub const FORWARDED_SIGNALS: &[libc::c_int] = &[
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

pub(super) fn exit(code: i32) -> ! {
    // SAFETY: _exit skips atexit handlers and stdio flushing, which belong to the parent.
    unsafe { libc::_exit(code) }
}

fn fail(channel: RawFd, err: StepError) -> ! {
    send_quiet(channel, &Message::SetupFailed(err));
    exit(SETUP_FAILED)
}

/// Credentials and restrictions, in the order that keeps each step possible:
/// bounding/ambient/inheritable caps (needs CAP_SETPCAP) → groups, gid, uid (the uid
/// switch clears permitted/effective) → clear what is left → no_new_privs → landlock →
/// seccomp last, so the filter does not have to allow the setup syscalls.
pub fn harden(sys: &dyn Syscall, h: &Hardening, with_landlock: bool) -> Result<(), StepError> {
    harden_profiled(sys, h, with_landlock, &mut |_| {})
}

fn harden_profiled(
    sys: &dyn Syscall,
    h: &Hardening,
    with_landlock: bool,
    mark: &mut dyn FnMut(Step),
) -> Result<(), StepError> {
    if h.drop_caps {
        capabilities::drop_before_setuid(sys, h.last_cap)?;
        mark(Step::DropCapabilities);
        capabilities::set_ids(sys, h.uid, h.gid, h.setgroups)?;
        capabilities::clear_remaining(sys)?;
        mark(Step::SetIds);
    }
    let needs_nnp =
        h.no_new_privs || h.seccomp.is_some() || (with_landlock && h.landlock.is_some());
    if needs_nnp {
        sys.set_no_new_privs()
            .map_err(|e| StepError::new(Step::NoNewPrivs, e, None))?;
    }
    if with_landlock && let Some(ll) = &h.landlock {
        ll.apply(sys)?;
        mark(Step::Landlock);
    }
    if let Some(bpf) = &h.seccomp {
        bpf.apply(sys)
            .map_err(|e| StepError::new(Step::Seccomp, e, None))?;
        mark(Step::Seccomp);
    }
    Ok(())
}

/// Steps of the payload before exec: stdio and passed fds, close the rest, cwd, rlimits,
/// hardening. Separate from the exec so unit tests can run it on the fake.
pub fn prepare_payload(
    sys: &dyn Syscall,
    plan: &PayloadPlan,
    h: &Hardening,
) -> Result<(), StepError> {
    prepare_payload_profiled(sys, plan, h, &mut Vec::new())
}

fn prepare_payload_profiled(
    sys: &dyn Syscall,
    plan: &PayloadPlan,
    h: &Hardening,
    steps: &mut Vec<StepTime>,
) -> Result<(), StepError> {
    let mut mark = |step| {
        if plan.profile {
            steps.push(StepTime {
                step,
                at_ns: monotonic_ns(),
            });
        }
    };
    mark(Step::ForkPayload);
    for &(from, to) in &plan.fd_moves {
        sys.dup2(from, to)
            .map_err(|e| StepError::new(Step::Stdio, e, None))?;
    }
    for &(first, last) in &plan.close_ranges {
        sys.close_range(first, last)
            .map_err(|e| StepError::new(Step::CloseFds, e, None))?;
    }
    mark(Step::CloseFds);
    sys.chdir(&plan.cwd)
        .map_err(|e| StepError::new(Step::Chdir, e, Some(&plan.cwd)))?;
    rlimits::apply(sys, &plan.rlimits)?;
    mark(Step::Rlimits);
    harden_profiled(sys, h, true, &mut mark)
}

fn reset_signals() {
    // SAFETY: sigset operations on a local set; sigaction with SIG_DFL for every catchable
    // signal. Handlers installed by the runtime must not run in a child.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..=31 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// The payload: prepare, then execve each candidate path. Never returns.
pub fn payload_exec(plan: &PayloadPlan, h: &Hardening, channel: RawFd) -> ! {
    let sys = LinuxSyscall;
    reset_signals();
    // SAFETY: umask has no failure mode.
    unsafe { libc::umask(0o022) };
    let mut steps = Vec::new();
    if let Err(e) = prepare_payload_profiled(&sys, plan, h, &mut steps) {
        fail(channel, e);
    }
    if plan.profile {
        send_quiet(channel, &Message::PayloadSteps { steps });
    }
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut errno = Errno::ENOENT;
    let mut saw_eacces = false;
    for path in &plan.candidates {
        // SAFETY: path, argv and envp are NUL-terminated arrays of valid C strings that
        // outlive the call.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        errno = Errno::last();
        match errno {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => saw_eacces = true,
            _ => break,
        }
    }
    if saw_eacces && matches!(errno, Errno::ENOENT | Errno::ENOTDIR) {
        errno = Errno::EACCES;
    }
    send_quiet(
        channel,
        &Message::ExecFailed {
            errno: errno as i32,
        },
    );
    exit(if errno == Errno::ENOENT { 127 } else { 126 })
}

/// Mounts, pivot_root, hostname, loopback: the sandbox's environment.
pub fn setup_environment(
    sys: &dyn Syscall,
    plan: &ChildPlan,
    steps: &mut Vec<StepTime>,
    loopback: bool,
) -> Result<(), StepError> {
    plan.mounts.apply_profiled(sys, steps, plan.profile)?;
    steps.push(StepTime {
        step: Step::PivotRoot,
        at_ns: monotonic_ns(),
    });
    sys.sethostname(&plan.hostname)
        .map_err(|e| StepError::new(Step::Sethostname, e, None))?;
    if loopback {
        sys.loopback_up()
            .map_err(|e| StepError::new(Step::Loopback, e, None))?;
    }
    steps.push(StepTime {
        step: Step::Loopback,
        at_ns: monotonic_ns(),
    });
    Ok(())
}

/// The middle process: join the cgroup(s), unshare, (user ns: wait for the id maps), then
/// either clone init as a sibling (CLONE_PARENT: init is the runtime's direct child) and
/// exit, or — without a pid namespace — become the sandbox process itself.
pub fn middle_main(plan: &ChildPlan, channel: RawFd) -> ! {
    let sys = LinuxSyscall;
    let mut steps = Vec::with_capacity(16);
    reset_signals();
    die_with_runtime_during_setup(plan);
    // SAFETY: umask has no failure mode; 0 so modes in the mount plan are exact.
    unsafe { libc::umask(0) };
    // The runtime moves this process into the sandbox's cgroup(s) while we create the
    // namespaces: a cgroup v1 migration waits for an RCU grace period, which then
    // overlaps with the (also slow) network namespace creation. The cgroup namespace is
    // created only after the move, so it is rooted at the sandbox's own cgroup.
    // With a pid namespace, the network namespace is made by this process *after* init
    // is cloned, in parallel with init's mount setup: creating one costs ~0.5 ms. Init
    // enters it with setns before it starts the payload (see `init_main`).
    let defer_net = plan.pidns && plan.unshare_flags & libc::CLONE_NEWNET != 0;
    let mut first = plan.unshare_flags & !libc::CLONE_NEWCGROUP;
    if defer_net {
        first &= !libc::CLONE_NEWNET;
    }
    if let Err(e) = sys.unshare(first) {
        fail(channel, StepError::new(Step::Unshare, e, None));
    }
    steps.push(StepTime {
        step: Step::Unshare,
        at_ns: monotonic_ns(),
    });
    if plan.userns {
        send_quiet(channel, &Message::IdMapRequest);
    }
    let mut buf = [0u8; 256];
    // SAFETY: buf is a valid buffer; we wait for the runtime's go-ahead.
    let n = unsafe { libc::recv(channel, buf.as_mut_ptr().cast(), buf.len(), 0) };
    let go = n > 0
        && serde_json::from_slice::<Message>(&buf[..n as usize]).is_ok_and(|m| m == Message::Go);
    if !go {
        fail(channel, StepError::new(Step::WaitGo, Errno::EPROTO, None));
    }
    steps.push(StepTime {
        step: Step::WaitGo,
        at_ns: monotonic_ns(),
    });
    if plan.become_ns_root {
        // Host root is not mapped in the namespace; uid 0 inside is. Keeps all
        // capabilities within the namespace (the kernel's setuid fixup sees no change of
        // "root" there).
        let e = |errno| StepError::new(Step::SetIds, errno, None);
        if let Err(err) = sys
            .setgroups(&[])
            .and_then(|()| sys.setresgid(0))
            .and_then(|()| sys.setresuid(0))
        {
            fail(channel, e(err));
        }
    }
    if plan.unshare_flags & libc::CLONE_NEWCGROUP != 0
        && let Err(e) = sys.unshare(libc::CLONE_NEWCGROUP)
    {
        fail(channel, StepError::new(Step::UnshareCgroup, e, None));
    }
    if !plan.pidns {
        // No pid namespace (the zygote role): this process is the sandbox.
        // The setup-time death signal stays only when asked for; such a sandbox watches
        // no channel (its payload is this process), so it is up to its owner.
        if !plan.die_with_parent {
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
        }
        send_quiet(
            channel,
            &Message::InitStarted {
                // SAFETY: getpid has no preconditions.
                pid: unsafe { libc::getpid() },
                steps: std::mem::take(&mut steps),
            },
        );
        if let Err(e) = setup_environment(&sys, plan, &mut steps, plan.loopback) {
            fail(channel, e);
        }
        send_quiet(
            channel,
            &Message::Ready {
                payload_pid: None,
                steps,
            },
        );
        match &plan.payload {
            Some(payload) => payload_exec(payload, &plan.payload_hardening, channel),
            None => exit(SETUP_FAILED),
        }
    }
    // The pipe that carries the network namespace's fd number (or -errno) to init; with
    // CLONE_FILES init shares our fd table, so the number is valid there.
    let mut net_pipe = [-1; 2];
    // SAFETY: net_pipe is a valid 2-element array.
    if defer_net && unsafe { libc::pipe2(net_pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        fail(
            channel,
            StepError::new(Step::NetNamespace, Errno::last(), None),
        );
    }
    // Init's pivot_root also moves *our* root (same mount namespace), so the namespace's
    // file is opened relative to the host's /proc, held open from before the clone.
    let host_proc = if defer_net {
        // SAFETY: open(2) of a constant path.
        unsafe {
            libc::open(
                c"/proc".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        }
    } else {
        -1
    };
    let clone_flags =
        libc::CLONE_PARENT | libc::SIGCHLD | if defer_net { libc::CLONE_FILES } else { 0 };
    // SAFETY: a raw clone with a null stack behaves like fork: the child continues on a
    // copy of our stack. We are single-threaded (a fork child), so no lock can be held by
    // another thread; CLONE_PARENT makes the runtime init's parent, and the new pid
    // namespace (from unshare) makes it pid 1 there.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            clone_flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        fail(
            channel,
            StepError::new(Step::CloneInit, Errno::last(), None),
        );
    }
    if pid == 0 {
        init_main(plan, channel, steps, defer_net.then_some(net_pipe[0]));
    }
    steps.push(StepTime {
        step: Step::CloneInit,
        at_ns: monotonic_ns(),
    });
    // Init's pid goes out before the network namespace is made (~0.5 ms): a joiner that
    // forks into the pid namespace (the zygote) starts meanwhile. Init records the
    // namespace's step when it enters it.
    send_quiet(
        channel,
        &Message::InitStarted {
            pid: pid as i32,
            steps,
        },
    );
    if defer_net {
        let made = sys
            .unshare(libc::CLONE_NEWNET)
            .and_then(|()| sys.loopback_up())
            .and_then(|()| {
                // SAFETY: openat(2) below an fd we hold; the new fd goes to init.
                let fd = unsafe {
                    libc::openat(
                        host_proc,
                        c"self/ns/net".as_ptr(),
                        libc::O_RDONLY | libc::O_CLOEXEC,
                    )
                };
                if fd < 0 { Err(Errno::last()) } else { Ok(fd) }
            });
        let value: i32 = match made {
            Ok(fd) => fd,
            Err(e) => -(e as i32),
        };
        // SAFETY: writes 4 bytes from a local to the pipe's write end.
        unsafe { libc::write(net_pipe[1], (&value as *const i32).cast(), 4) };
        if let Err(e) = made {
            fail(channel, StepError::new(Step::NetNamespace, e, None));
        }
    }
    exit(0)
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Init, pid 1 of the sandbox.
fn init_main(
    plan: &ChildPlan,
    channel: RawFd,
    mut steps: Vec<StepTime>,
    net_pipe: Option<RawFd>,
) -> ! {
    let sys = LinuxSyscall;
    steps.clear();
    // Always during setup (see `die_with_runtime_during_setup`); cleared after it unless
    // `die_with_parent`. (getppid is 0 in a new pid namespace, so a runtime that died
    // before this point is noticed by `watch_for_hangup`.)
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if let Err(e) = setup_environment(&sys, plan, &mut steps, plan.loopback && net_pipe.is_none()) {
        fail(channel, e);
    }
    if let Some(pipe) = net_pipe {
        // Enter the network namespace the middle process made meanwhile.
        let mut value: i32 = 0;
        // SAFETY: reads 4 bytes into a local from the pipe's read end.
        let n = unsafe { libc::read(pipe, (&mut value as *mut i32).cast(), 4) };
        if n != 4 || value < 0 {
            let errno = if n != 4 {
                Errno::EPIPE
            } else {
                Errno::from_raw(-value)
            };
            fail(channel, StepError::new(Step::NetNamespace, errno, None));
        }
        if let Err(e) = sys.setns(value, libc::CLONE_NEWNET) {
            fail(channel, StepError::new(Step::NetNamespace, e, None));
        }
        let _ = sys.close(value);
        steps.push(StepTime {
            step: Step::NetNamespace,
            at_ns: monotonic_ns(),
        });
    }
    // Block the signals init handles, before the payload exists, so none is lost; they
    // are taken with sigwaitinfo below (a blocked signal is queued even for pid 1).
    let mut handled = FORWARDED_SIGNALS.to_vec();
    handled.push(libc::SIGCHLD);
    handled.push(libc::SIGIO);
    let set = sigset(&handled);
    // SAFETY: set is a valid sigset_t.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    // `Ready` goes out before the payload is forked, so the runtime's bookkeeping
    // (pidfd, state record) overlaps with the payload's own setup.
    steps.push(StepTime {
        step: Step::SetupDone,
        at_ns: monotonic_ns(),
    });
    if let Ok(bytes) = serde_json::to_vec(&Message::Ready {
        payload_pid: None,
        steps,
    }) && super::channel::send_raw(channel, &bytes).is_err()
    {
        // The runtime is gone: nobody will wait for this sandbox.
        exit(SETUP_FAILED);
    }
    // With the built-in policy, init installs the seccomp filter once, before the payload
    // exists; the payload inherits it (compiling a filter into the kernel costs ~0.2 ms,
    // so this saves one). The policy allows every syscall the payload's remaining setup
    // makes. A user policy could block those, so it is installed by the payload, last.
    if let Some(bpf) = &plan.seccomp_in_init
        && let Err(e) = bpf.apply(&sys)
    {
        fail(channel, StepError::new(Step::Seccomp, e, None));
    }
    let mut payload_pid = None;
    if let Some(payload) = &plan.payload {
        match spawn_payload(payload, &plan.payload_hardening, channel) {
            Ok(pid) => payload_pid = Some(pid),
            Err(e) => fail(channel, StepError::new(Step::ForkPayload, e, None)),
        }
    }

    // Init keeps nothing but the channel: no stdio, no fd of the runtime.
    for (first, last) in super::close_ranges(&[channel]) {
        let _ = sys.close_range(first, last);
    }
    // From here on the channel tells init that the runtime is gone.
    watch_for_hangup(channel);
    if !plan.die_with_parent {
        // SAFETY: prctl with integer arguments: clears the setup-time death signal.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
    }
    if let Err(e) = harden(&sys, &plan.init_hardening, false) {
        // The payload already runs; without hardening init must not stay around.
        send_quiet(channel, &Message::SetupFailed(e));
        exit(SETUP_FAILED);
    }
    init_loop(channel, payload_pid, &set)
}

/// A starting sandbox waits for the runtime's `Go`; if the runtime died in between, it
/// must not wait forever. During setup its processes therefore die with their parent
/// thread, the spawner's parked parent, which lives as long as the runtime (see
/// process/spawner.rs). Init clears this again (unless `die_with_parent`) once
/// [`watch_for_hangup`] has taken over.
fn die_with_runtime_during_setup(plan: &ChildPlan) {
    // SAFETY: prctl with integer arguments; getppid has no preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() != plan.runtime_pid {
            // The runtime died before the line above.
            exit(SETUP_FAILED);
        }
    }
}

/// A sandbox never outlives the runtime that holds it. The runtime keeps its end of the
/// channel open for the sandbox's whole life, so when it dies — even by SIGKILL — the
/// channel hangs up and the kernel sends init SIGIO (`O_ASYNC`), which [`init_loop`]
/// takes as the end of the sandbox. `PR_SET_PDEATHSIG` cannot do this for a runtime with
/// a thread pool: it fires when the *thread* that forked exits, not the process.
fn watch_for_hangup(channel: RawFd) {
    // SAFETY: fcntl on init's own channel fd with integer arguments; getpid has no
    // preconditions.
    unsafe {
        libc::fcntl(channel, libc::F_SETOWN, libc::getpid());
        let flags = libc::fcntl(channel, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(channel, libc::F_SETFL, flags | libc::O_ASYNC);
        }
    }
    // A runtime that died before the line above sent no signal: look once now.
    if channel_hung_up(channel) {
        exit(SETUP_FAILED);
    }
}

/// Whether the runtime's end of the channel is closed.
fn channel_hung_up(channel: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: channel,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0
}

struct PayloadArgs<'a> {
    plan: &'a PayloadPlan,
    hardening: &'a Hardening,
    channel: RawFd,
}

extern "C" fn payload_trampoline(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the PayloadArgs on init's stack; init is suspended
    // (CLONE_VFORK) until this child execs or exits, so the reference stays valid.
    let args = unsafe { &*(arg as *const PayloadArgs<'_>) };
    payload_exec(args.plan, args.hardening, args.channel)
}

/// Start the payload the way posix_spawn does: `clone(CLONE_VM | CLONE_VFORK)` on a
/// separate stack. Sharing init's memory skips copying its page tables (the runtime's
/// address space, which can be large), and init, single-threaded, is suspended until
/// the payload execs, so nothing else touches that memory meanwhile.
fn spawn_payload(plan: &PayloadPlan, h: &Hardening, channel: RawFd) -> Result<i32, Errno> {
    const STACK: usize = 1 << 20;
    // SAFETY: an anonymous private mapping; only the child uses it, and it stays mapped
    // (init never returns to reuse it before the child has exec'd or exited).
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    let args = PayloadArgs {
        plan,
        hardening: h,
        channel,
    };
    // SAFETY: the stack grows down from the end of the mapping; the trampoline never
    // returns (it execs or _exits); args outlives the child's use of it (see above).
    let pid = unsafe {
        libc::clone(
            payload_trampoline,
            stack.cast::<u8>().add(STACK).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const PayloadArgs<'_> as *mut libc::c_void,
        )
    };
    let result = if pid < 0 { Err(Errno::last()) } else { Ok(pid) };
    // SAFETY: the child has exec'd or exited: the stack is ours again.
    unsafe { libc::munmap(stack, STACK) };
    result
}

/// Reap every child, forward signals, report the payload's exit and leave with it (which
/// makes the kernel kill whatever is left in the pid namespace).
fn init_loop(channel: RawFd, payload_pid: Option<i32>, set: &libc::sigset_t) -> ! {
    loop {
        // SAFETY: siginfo_t is plain data that sigwaitinfo fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: set and info are valid.
        let sig = unsafe { libc::sigwaitinfo(set, &mut info) };
        if sig < 0 {
            continue;
        }
        if sig == libc::SIGIO {
            // The channel changed state; only a hang-up (the runtime is gone) matters.
            // Leaving ends everything in the pid namespace.
            if channel_hung_up(channel) {
                exit(SETUP_FAILED);
            }
        } else if sig == libc::SIGCHLD {
            loop {
                let mut status = 0;
                // SAFETY: status is a valid out-pointer.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if Some(pid) == payload_pid {
                    send_quiet(channel, &Message::PayloadExited { status });
                    let code = if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        128 + libc::WTERMSIG(status)
                    };
                    exit(code);
                }
            }
        } else if let Some(pid) = payload_pid {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, sig) };
        } else {
            // Shell mode: a terminating signal from outside ends the sandbox.
            exit(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::tests::{hardening, payload};
    use crate::syscall::{Call, RecordingSyscall};

    #[test]
    fn payload_steps_run_in_the_documented_order() {
        let fake = RecordingSyscall::new();
        prepare_payload(&fake, &payload(), &hardening()).unwrap();
        assert_eq!(
            fake.names(),
            vec![
                "dup2",
                "dup2",
                "close_range",
                "close_range",
                "chdir",
                "setrlimit",
                "setrlimit",
                "drop_bounding_set",
                "clear_ambient",
                "clear_inheritable",
                "setgroups",
                "setresgid",
                "setresuid",
                "clear_all_caps",
                "set_no_new_privs",
                "seccomp_set_filter",
            ]
        );
        assert!(fake.calls().contains(&Call::CloseRange(4, 8)));
        assert!(fake.calls().contains(&Call::Setresuid(1000)));
        assert!(fake.calls().contains(&Call::Setrlimit(
            crate::spec::RlimitResource::Core.raw(),
            0,
            0
        )));
    }

    #[test]
    fn a_failed_uid_switch_stops_before_seccomp_and_names_the_step() {
        let fake = RecordingSyscall::failing("setresuid", 0, Errno::EPERM);
        let err = prepare_payload(&fake, &payload(), &hardening()).unwrap_err();
        assert_eq!(err.step, Step::SetIds);
        assert_eq!(err.errno, libc::EPERM);
        assert!(!fake.names().contains(&"seccomp_set_filter"));
    }

    #[test]
    fn keeping_capabilities_skips_the_uid_switch_but_not_seccomp() {
        let mut h = hardening();
        h.drop_caps = false;
        let fake = RecordingSyscall::new();
        harden(&fake, &h, true).unwrap();
        assert_eq!(fake.names(), vec!["set_no_new_privs", "seccomp_set_filter"]);
    }
}
