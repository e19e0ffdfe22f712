//! The spawner: a small single-threaded helper process, forked from the runtime once, that
//! clones each sandbox's middle process on the runtime's behalf.
//!
//! Why: a sandbox's processes are copies of the process that forks them. When the runtime
//! forked them itself, every page the multi-threaded runtime wrote afterwards was a
//! copy-on-write fault for as long as some sandbox's init still shared it (~220 faults per
//! sandbox, each one a TLB shootdown across the runtime's threads), and every fork held
//! the runtime's mmap lock. The spawner shares the runtime's pages only once: after that
//! the runtime writes its own pages, and the spawner writes a few per request.
//!
//! The process tree does not change. The spawner clones with `CLONE_PARENT`, so the
//! middle process (and init, which the middle clones the same way) is the runtime's
//! child, waited for and reaped as before. The spawner is forked by a parked runtime
//! thread that lives as long as the process: `PR_SET_PDEATHSIG`, which the sandboxes'
//! processes use during setup, follows the parent *thread*, and a pool thread that exits
//! would take them with it.
//!
//! Protocol: one `SOCK_SEQPACKET` socketpair. A request is a postcard-encoded plan with
//! the fds its processes need attached (`SCM_RIGHTS`); the clone moves each fd to the
//! number it has in the runtime, so the plan's fd numbers mean the same there. The reply
//! is the middle process's pid or the clone's errno. Requests are serialized by a mutex:
//! a clone takes well under a millisecond.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{Sender, SyncSender};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::ChildPlan;
use super::channel::{Channel, datagram_len};
use super::init::{SETUP_FAILED, exit, middle_main};
use super::start::waitpid_blocking;

/// Errors talking to the spawner.
#[derive(Debug, thiserror::Error)]
pub enum SpawnerError {
    #[error("cannot start the spawner process: {0}")]
    Start(String),
    #[error("the spawner process failed: {0}")]
    Io(nix::errno::Errno),
    #[error("the spawner process exited or sent a malformed reply")]
    Protocol,
    #[error(
        "the spawner process could not decode a sandbox plan (the runtime and its spawner disagree: a dsbox bug, please report it)"
    )]
    Rejected,
    #[error("cannot encode the sandbox plan for the spawner: {0}")]
    Encode(postcard::Error),
    #[error(
        "a sandbox may be given at most {MAX_FDS} file descriptors, this one has {0}; pass fewer extra fds"
    )]
    TooManyFds(usize),
    #[error("clone failed in the spawner: {0}")]
    Clone(nix::errno::Errno),
}

/// At most this many fds per request (the kernel's limit per SCM_RIGHTS message is 253).
pub const MAX_FDS: usize = 200;

/// An fd of the request: the number it must have in the sandbox's processes and whether
/// it is close-on-exec there. The request's attached fds come in this order.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct FdSlot {
    number: RawFd,
    cloexec: bool,
}

/// What the runtime sends (encoded by reference, decoded as [`Request`]: postcard's
/// encoding depends only on the field types and order, which match).
#[derive(Serialize)]
struct RequestRef<'a> {
    plan: &'a ChildPlan,
    channel: RawFd,
    fds: &'a [FdSlot],
}

#[derive(Deserialize)]
struct Request {
    plan: ChildPlan,
    channel: RawFd,
    fds: Vec<FdSlot>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
enum Reply {
    Started {
        pid: i32,
    },
    Failed {
        errno: i32,
    },
    /// The request did not decode (or its fd count did not match).
    Rejected,
}

/// A running spawner, as the runtime sees it.
struct Connection {
    sock: OwnedFd,
    pid: i32,
}

type StartReply = SyncSender<Result<Connection, SpawnerError>>;

/// The runtime's side: the parked thread that forks spawners (see the module docs for why
/// one thread) and the running spawner. A process forked from the runtime inherits this
/// memory but neither the thread nor the spawner's parentage: `owner` tells, and such a
/// process starts its own.
struct State {
    owner: u32,
    parent: Sender<StartReply>,
    spawner: Option<Connection>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Clone a middle process that runs `plan` with the sandbox's end of its channel at
/// `channel`; returns its pid (a child of the runtime).
pub fn clone_middle(plan: &ChildPlan, channel: RawFd) -> Result<i32, SpawnerError> {
    let slots = fd_slots(plan, channel);
    if slots.len() > MAX_FDS {
        return Err(SpawnerError::TooManyFds(slots.len()));
    }
    let bytes = postcard::to_stdvec(&RequestRef {
        plan,
        channel,
        fds: &slots,
    })
    .map_err(SpawnerError::Encode)?;
    let fds: Vec<RawFd> = slots.iter().map(|s| s.number).collect();
    let mut guard = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    let me = std::process::id();
    if guard.as_ref().is_some_and(|s| s.owner != me) {
        // Inherited through a fork: drop our copies (the socket fd), leave the other
        // process's spawner alone.
        *guard = None;
    }
    let state = match guard.as_mut() {
        Some(state) => state,
        None => guard.insert(State {
            owner: me,
            parent: start_parent_thread()?,
            spawner: None,
        }),
    };
    // A spawner that died while idle shows up as EPIPE on the send, with nothing started:
    // start another and send again, once.
    for attempt in 0..2 {
        let conn = match state.spawner.take() {
            Some(conn) => conn,
            None => start_spawner(&state.parent)?,
        };
        match send_with_fds(conn.sock.as_raw_fd(), &bytes, &fds) {
            Ok(()) => {}
            Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) if attempt == 0 => {
                retire(conn);
                continue;
            }
            Err(errno) => {
                retire(conn);
                return Err(SpawnerError::Io(errno));
            }
        }
        let reply = recv_message(conn.sock.as_raw_fd(), 0)
            .ok()
            .flatten()
            .and_then(|(bytes, _)| postcard::from_bytes::<Reply>(&bytes).ok());
        return match reply {
            Some(Reply::Started { pid }) => {
                state.spawner = Some(conn);
                Ok(pid)
            }
            Some(Reply::Failed { errno }) => {
                state.spawner = Some(conn);
                Err(SpawnerError::Clone(nix::errno::Errno::from_raw(errno)))
            }
            Some(Reply::Rejected) => {
                state.spawner = Some(conn);
                Err(SpawnerError::Rejected)
            }
            None => {
                // Died during the request (killed within a clone's fraction of a
                // millisecond): a middle process may exist. It gets no `Go` (the caller
                // drops the channel on this error) and exits; its pid never arrived, so
                // it stays a zombie of the runtime until the runtime exits.
                retire(conn);
                Err(SpawnerError::Protocol)
            }
        };
    }
    Err(SpawnerError::Protocol)
}

/// The spawner's pid, if one runs (for tests and diagnostics).
pub fn pid() -> Option<i32> {
    let me = std::process::id();
    STATE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .filter(|s| s.owner == me)
        .and_then(|s| s.spawner.as_ref())
        .map(|c| c.pid)
}

/// The fds the sandbox's processes use: the channel, every fd the payload moves into
/// place, and the runtime's stdio (kept by a payload whose stdio is inherited).
fn fd_slots(plan: &ChildPlan, channel: RawFd) -> Vec<FdSlot> {
    let mut numbers = vec![channel];
    if let Some(payload) = &plan.payload {
        numbers.extend(payload.fd_moves.iter().map(|&(from, _)| from));
    }
    numbers.extend(0..=2);
    numbers.sort_unstable();
    numbers.dedup();
    numbers
        .into_iter()
        .filter_map(|number| {
            // SAFETY: F_GETFD only reads the flags of an fd number (-1: not open).
            let flags = unsafe { libc::fcntl(number, libc::F_GETFD) };
            (flags >= 0).then_some(FdSlot {
                number,
                cloexec: flags & libc::FD_CLOEXEC != 0,
            })
        })
        .collect()
}

/// Kill and reap a spawner that is gone or misbehaved.
fn retire(conn: Connection) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(conn.pid, libc::SIGKILL) };
    waitpid_blocking(conn.pid);
}

fn start_parent_thread() -> Result<Sender<StartReply>, SpawnerError> {
    let (tx, rx) = std::sync::mpsc::channel::<StartReply>();
    std::thread::Builder::new()
        .name("dsbox-spawner".into())
        .spawn(move || {
            block_all_signals();
            for reply in rx {
                let _ = reply.send(fork_spawner());
            }
        })
        .map_err(|e| SpawnerError::Start(format!("its parent thread: {e}")))?;
    Ok(tx)
}

fn start_spawner(parent: &Sender<StartReply>) -> Result<Connection, SpawnerError> {
    let gone = || SpawnerError::Start("its parent thread is gone".into());
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    parent.send(tx).map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

/// Process-directed signals are for the runtime's other threads; the spawner, forked
/// from this thread, keeps the mask (its clones reset theirs).
fn block_all_signals() {
    // SAFETY: a full sigset, set as this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn fork_spawner() -> Result<Connection, SpawnerError> {
    let (ours, theirs) = Channel::pair()
        .map_err(|e| SpawnerError::Start(e.to_string()))
        .map(|(a, b)| (a.into_fd(), b.into_fd()))?;
    // SAFETY: std::process::id reads no lock.
    let runtime_pid = std::process::id() as i32;
    // SAFETY: glibc's fork; the child runs only `spawner_main`, which never returns and
    // avoids std's locks (like the middle process, see process/init.rs).
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(SpawnerError::Start(format!("fork: {e}"))),
        Ok(nix::unistd::ForkResult::Child) => spawner_main(theirs.as_raw_fd(), runtime_pid),
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(theirs);
            Ok(Connection {
                sock: ours,
                pid: child.as_raw(),
            })
        }
    }
}

/// The spawner's loop: one request in, one clone, one reply out, until the runtime's end
/// closes (or the runtime's thread dies: `PR_SET_PDEATHSIG`).
fn spawner_main(sock: RawFd, runtime_pid: i32) -> ! {
    // SAFETY: prctl with integer/string arguments; getppid has no preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() != runtime_pid {
            exit(0);
        }
        libc::prctl(libc::PR_SET_NAME, c"dsbox-spawner".as_ptr(), 0, 0, 0);
    }
    // Nothing of the runtime stays open here: not its stdio, files or other sandboxes'
    // channels (each request brings the fds its sandbox needs).
    for (first, last) in super::close_ranges(&[sock]) {
        // SAFETY: close_range on number ranges of this process's own table.
        unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    }
    // The runtime's free heap need not be copied into every clone.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
    loop {
        let (bytes, received) = match recv_message(sock, libc::MSG_CMSG_CLOEXEC) {
            Ok(Some(message)) => message,
            Ok(None) | Err(_) => exit(0),
        };
        let reply = match postcard::from_bytes::<Request>(&bytes) {
            Ok(request) if request.fds.len() == received.len() => {
                clone_one(&request, &received, sock)
            }
            _ => Reply::Rejected,
        };
        for fd in received {
            // SAFETY: fds received with this message; ours to close.
            unsafe { libc::close(fd) };
        }
        let Ok(reply) = postcard::to_stdvec(&reply) else {
            exit(0)
        };
        if send_with_fds(sock, &reply, &[]).is_err() {
            exit(0);
        }
    }
}

fn clone_one(request: &Request, received: &[RawFd], sock: RawFd) -> Reply {
    // SAFETY: a raw clone with a null stack behaves like fork: the child continues on a
    // copy of our stack. We are single-threaded, so no lock can be held by another
    // thread; CLONE_PARENT makes the runtime the child's parent.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match pid {
        0 => {
            place_fds(&request.fds, received, sock);
            // SAFETY: prctl with a string argument.
            unsafe { libc::prctl(libc::PR_SET_NAME, c"dsbox-sandbox".as_ptr(), 0, 0, 0) };
            middle_main(&request.plan, request.channel)
        }
        pid if pid < 0 => Reply::Failed {
            errno: nix::errno::Errno::last_raw(),
        },
        pid => Reply::Started { pid: pid as i32 },
    }
}

/// In the clone: give each received fd the number (and close-on-exec flag) it has in the
/// runtime, and close everything else. The received fds first move above every target,
/// so no move clobbers an fd still to be moved.
fn place_fds(slots: &[FdSlot], received: &[RawFd], sock: RawFd) {
    let floor = slots.iter().map(|s| s.number).max().unwrap_or(2).max(2) + 1;
    let mut high = Vec::with_capacity(received.len());
    for &fd in received {
        // SAFETY: F_DUPFD_CLOEXEC on an fd we hold; the result is ours.
        let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
        if h < 0 {
            exit(SETUP_FAILED);
        }
        high.push(h);
    }
    // SAFETY: closing our own fds: the socket to the runtime and the received numbers.
    unsafe {
        libc::close(sock);
        for &fd in received {
            libc::close(fd);
        }
    }
    for (slot, h) in slots.iter().zip(high) {
        let flags = if slot.cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: dup3 onto a free number below `floor`, then close the temporary.
        unsafe {
            if libc::dup3(h, slot.number, flags) < 0 {
                exit(SETUP_FAILED);
            }
            libc::close(h);
        }
    }
}

/// Send `bytes` as one datagram with `fds` attached.
fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> Result<(), nix::errno::Errno> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [std::io::IoSlice::new(bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A datagram's bytes and the fds that came with it.
type Datagram = (Vec<u8>, Vec<RawFd>);

/// Receive one datagram and the fds attached to it; `Ok(None)` at EOF.
fn recv_message(sock: RawFd, flags: libc::c_int) -> Result<Option<Datagram>, nix::errno::Errno> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let len = datagram_len(sock, 0)?;
    let mut buf = vec![0u8; len.max(1)];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock,
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::from_bits_truncate(flags),
        ) {
            Ok(msg) => {
                if msg.bytes == 0 {
                    return Ok(None);
                }
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(|_| nix::errno::Errno::EPROTO)? {
                    if let ControlMessageOwned::ScmRights(r) = c {
                        fds.extend(r);
                    }
                }
                let n = msg.bytes;
                buf.truncate(n);
                return Ok(Some((buf, fds)));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_does_not_decode_is_rejected_and_the_spawner_serves_on() {
        let conn = fork_spawner().unwrap();
        let sock = conn.sock.as_raw_fd();
        let reply = |bytes: &[u8]| {
            send_with_fds(sock, bytes, &[]).unwrap();
            let (bytes, fds) = recv_message(sock, 0).unwrap().expect("a reply");
            assert!(fds.is_empty());
            postcard::from_bytes::<Reply>(&bytes).unwrap()
        };
        assert_eq!(reply(b"not a plan"), Reply::Rejected);
        // A valid plan whose fd list promises an fd that was not attached.
        let bytes = postcard::to_stdvec(&RequestRef {
            plan: &crate::process::tests::sample_plan(),
            channel: 9,
            fds: &[FdSlot {
                number: 9,
                cloexec: true,
            }],
        })
        .unwrap();
        assert_eq!(reply(&bytes), Reply::Rejected);
        retire(conn);
    }

    #[test]
    fn a_request_decodes_as_it_was_encoded_by_reference() {
        let slots = [
            FdSlot {
                number: 1,
                cloexec: false,
            },
            FdSlot {
                number: 9,
                cloexec: true,
            },
        ];
        let plan = crate::process::tests::sample_plan();
        let bytes = postcard::to_stdvec(&RequestRef {
            plan: &plan,
            channel: 9,
            fds: &slots,
        })
        .unwrap();
        let back: Request = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.channel, 9);
        assert_eq!(back.fds, slots);
        assert_eq!(format!("{:?}", back.plan), format!("{plan:?}"));
    }
}
