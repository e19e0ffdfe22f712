//! The zygote: a Python process that imported the preload modules once and forks kernel
//! children on request, each joining a sandbox by a [`JoinPlan`] before it runs any cell.
//!
//! The Python side is [`crate::ZYGOTE_PY`]; this module holds its message types, the
//! [`ControlChannel`] (a `SOCK_SEQPACKET` control socket: one JSON message per packet, fds
//! by SCM_RIGHTS) and [`Zygote`], a handle that starts one as a plain child process (tests,
//! measurements). Sandboxed zygotes and the shells their children join are
//! [`crate::supervisor`]'s and [`crate::pool`]'s.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

pub use dsbox_runtime::JoinPlan;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
    recvmsg, sendmsg, socketpair,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::client::{KernelError, Result};
use crate::{KERNEL_PY, ZYGOTE_PY};

/// Largest message accepted from the zygote.
const MAX_ZYGOTE_MESSAGE: usize = 256 << 10;
/// Most fds accepted with one message from the zygote (it sends one: a child's pidfd).
const MAX_ZYGOTE_FDS: usize = 4;

/// Receive the kernel and zygote programs (two packets) on the control socket, register
/// them as modules `dsbox_kernel` and `dsbox_zygote`, and run the zygote's `main()`.
pub const ZYGOTE_BOOTSTRAP: &str = r#"import socket, sys, types
fd = int(sys.argv[2])
s = socket.socket(fileno=fd)
for name in ("dsbox_kernel", "dsbox_zygote"):
    src = s.recv(1 << 20)
    if not src:
        sys.exit("dsbox zygote bootstrap: control socket closed before the programs arrived")
    m = types.ModuleType(name)
    m.__file__ = "<%s>" % name
    sys.modules[name] = m
    exec(compile(src, m.__file__, "exec"), m.__dict__)
s.detach()
del s, src, m
sys.exit(sys.modules["dsbox_zygote"].main(sys.argv[1:]))
"#;

/// Role of each fd passed with a spawn request, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FdRole {
    /// The kernel's end of its channel.
    Channel,
    /// A pidfd of the shell sandbox's init: pid namespace before fork, the rest after.
    Pidfd,
    /// A `cgroup.procs` fd of the shell's cgroup (the child writes "0").
    Cgroup,
}

/// A message from the runtime to the zygote.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ZygoteRequest<'a> {
    Spawn {
        id: u64,
        /// A [`JoinPlan`] as JSON: serialized once, it serves every spawn of a template.
        plan: &'a RawValue,
        fds: Vec<FdRole>,
        /// The child waits for [`GO`] on its channel before it joins.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        go: bool,
    },
    Ping {
        id: u64,
    },
    Shutdown,
}

/// A message from the zygote to the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ZygoteEvent {
    /// Preloading is done; `failed` lists modules that could not be imported.
    Ready {
        pid: u32,
        python: String,
        preloaded: Vec<String>,
        failed: Vec<(String, String)>,
        /// The zygote's threads after preloading (any library's); more than one means a
        /// preloaded module started a thread, which forked children do not have.
        #[serde(default)]
        threads: Option<u32>,
    },
    /// A child was forked (its pid in the zygote's pid namespace). With `pidfd`, a pidfd
    /// of the child came with the message (race-free signalling: the zygote opened it
    /// before it could reap the child).
    Spawned {
        id: u64,
        pid: u32,
        #[serde(default)]
        pidfd: bool,
        /// How long `fork()` took in the zygote (ns).
        #[serde(default)]
        fork_ns: Option<u64>,
    },
    /// No child was forked: the step (`fds`, `setns_pid`, `fork`) and errno.
    SpawnFailed {
        id: Option<u64>,
        step: String,
        errno: i32,
        detail: String,
    },
    /// A child ended (reaped by the zygote).
    Exited {
        id: Option<u64>,
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
    },
    Pong {
        id: Option<u64>,
        children: u64,
    },
    /// The zygote rejected a request.
    Error {
        detail: String,
    },
}

/// How to start a zygote.
#[derive(Debug, Clone)]
pub struct ZygoteConfig {
    pub python: PathBuf,
    /// Modules imported before any fork (e.g. `numpy`, `pandas`).
    pub preload: Vec<String>,
    pub env: Vec<(OsString, OsString)>,
    pub start_timeout: Duration,
}

impl ZygoteConfig {
    pub fn new(python: impl Into<PathBuf>) -> ZygoteConfig {
        ZygoteConfig {
            python: python.into(),
            preload: Vec::new(),
            env: Vec::new(),
            start_timeout: Duration::from_secs(60),
        }
    }
}

/// The byte that lets a child spawned with `go` (see [`Zygote::spawn_awaiting_go`])
/// join its sandbox.
pub const GO: u8 = b'G';

/// The exit code of a child whose go byte never came (its channel closed, or another
/// byte arrived): it joined nothing.
pub const NO_GO_EXIT: i32 = 113;

/// The fds a child needs to join its sandbox.
#[derive(Debug, Default)]
pub struct SpawnFds<'a> {
    pub pidfd: Option<BorrowedFd<'a>>,
    pub cgroup_procs: Vec<BorrowedFd<'a>>,
}

/// A kernel child the zygote forked.
#[derive(Debug)]
pub struct SpawnedKernel {
    pub id: u64,
    /// Its pid in the zygote's pid namespace.
    pub pid: u32,
    /// The runtime's end of the kernel's channel (hand it to [`crate::KernelClient::connect`]).
    pub channel: UnixStream,
    /// A pidfd of the child, when the zygote sent one.
    pub pidfd: Option<OwnedFd>,
}

/// A running zygote process.
#[derive(Debug)]
pub struct Zygote {
    child: Child,
    control: ControlChannel,
    next_id: u64,
    pending: VecDeque<ZygoteEvent>,
    /// What the zygote reported when ready.
    pub preloaded: Vec<String>,
    pub failed: Vec<(String, String)>,
}

impl Zygote {
    /// Start a zygote and wait until it has preloaded its modules.
    pub async fn start(config: &ZygoteConfig) -> Result<Zygote> {
        let (parent, child_end) = seqpacket_pair()?;
        let child_fd = child_end.as_raw_fd();
        let mut cmd = Command::new(&config.python);
        cmd.arg("-c")
            .arg(ZYGOTE_BOOTSTRAP)
            .arg("--control-fd")
            .arg(child_fd.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if !config.preload.is_empty() {
            cmd.arg("--preload").arg(config.preload.join(","));
        }
        cmd.envs(config.env.iter().map(|(k, v)| (k, v)));
        // SAFETY: runs in the forked child before exec and only calls fcntl
        // (async-signal-safe) to let this one fd survive exec.
        unsafe {
            cmd.pre_exec(move || clear_cloexec(child_fd));
        }
        let child = cmd.spawn().map_err(|source| KernelError::Spawn {
            python: config.python.clone(),
            source,
        })?;
        drop(child_end);
        let mut control = ControlChannel::new(parent)?;
        let ready = control
            .bootstrap(config.start_timeout)
            .await
            .map_err(|reason| KernelError::StartFailed {
                python: config.python.clone(),
                reason,
                stderr: String::new(),
            })?;
        Ok(Zygote {
            child,
            control,
            next_id: 1,
            pending: VecDeque::new(),
            preloaded: ready.preloaded,
            failed: ready.failed,
        })
    }

    /// The zygote process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fork a kernel that joins a sandbox by `plan`, and return its channel.
    pub async fn spawn(&mut self, plan: &JoinPlan, fds: SpawnFds<'_>) -> Result<SpawnedKernel> {
        self.spawn_inner(plan, fds, false).await
    }

    /// Fork a child that waits for the byte [`GO`] on its channel before it joins (the
    /// sandbox it joins may still be starting). Anything else (EOF included) makes it
    /// exit with [`NO_GO_EXIT`] before its first join step.
    pub async fn spawn_awaiting_go(
        &mut self,
        plan: &JoinPlan,
        fds: SpawnFds<'_>,
    ) -> Result<SpawnedKernel> {
        self.spawn_inner(plan, fds, true).await
    }

    async fn spawn_inner(
        &mut self,
        plan: &JoinPlan,
        fds: SpawnFds<'_>,
        go: bool,
    ) -> Result<SpawnedKernel> {
        let (runtime_end, kernel_end) = std::os::unix::net::UnixStream::pair()?;
        let id = self.next_id;
        self.next_id += 1;
        let mut roles = vec![FdRole::Channel];
        let mut raw: Vec<RawFd> = vec![kernel_end.as_raw_fd()];
        if let Some(pidfd) = fds.pidfd {
            roles.push(FdRole::Pidfd);
            raw.push(pidfd.as_raw_fd());
        }
        for fd in &fds.cgroup_procs {
            roles.push(FdRole::Cgroup);
            raw.push(fd.as_raw_fd());
        }
        let plan = serde_json::value::to_raw_value(plan)
            .map_err(crate::protocol::ProtocolError::Encode)?;
        let body = serde_json::to_vec(&ZygoteRequest::Spawn {
            id,
            plan: &plan,
            fds: roles,
            go,
        })
        .map_err(crate::protocol::ProtocolError::Encode)?;
        self.control.send(&body, &raw).await?;
        drop(kernel_end);
        loop {
            let (event, mut fds) = self.control.recv().await?;
            match event {
                ZygoteEvent::Spawned {
                    id: got,
                    pid,
                    pidfd,
                    ..
                } if got == id => {
                    runtime_end.set_nonblocking(true)?;
                    return Ok(SpawnedKernel {
                        id,
                        pid,
                        channel: UnixStream::from_std(runtime_end)?,
                        pidfd: if pidfd && !fds.is_empty() {
                            Some(fds.swap_remove(0))
                        } else {
                            None
                        },
                    });
                }
                ZygoteEvent::SpawnFailed {
                    id: Some(got),
                    step,
                    errno,
                    detail,
                } if got == id => {
                    return Err(KernelError::JoinFailed {
                        step,
                        errno,
                        detail,
                    });
                }
                ZygoteEvent::Error { detail } => {
                    return Err(KernelError::StartFailed {
                        python: PathBuf::from("zygote"),
                        reason: detail,
                        stderr: String::new(),
                    });
                }
                other => self.pending.push_back(other),
            }
        }
    }

    /// The next event (child exits, mostly).
    pub async fn next_event(&mut self) -> Result<ZygoteEvent> {
        if let Some(event) = self.pending.pop_front() {
            return Ok(event);
        }
        Ok(self.control.recv().await?.0)
    }

    /// Round trip to the zygote; returns how many children it tracks.
    pub async fn ping(&mut self) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let body = serde_json::to_vec(&ZygoteRequest::Ping { id })
            .map_err(crate::protocol::ProtocolError::Encode)?;
        self.control.send(&body, &[]).await?;
        loop {
            match self.control.recv().await?.0 {
                ZygoteEvent::Pong {
                    id: Some(got),
                    children,
                } if got == id => return Ok(children),
                other => self.pending.push_back(other),
            }
        }
    }

    /// Ask the zygote to exit and reap it. Its children live on in their sandboxes.
    pub async fn shutdown(mut self) -> Result<std::process::ExitStatus> {
        let body = serde_json::to_vec(&ZygoteRequest::Shutdown)
            .map_err(crate::protocol::ProtocolError::Encode)?;
        let _ = self.control.send(&body, &[]).await;
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.start_kill()?;
                Ok(self.child.wait().await?)
            }
        }
    }
}

/// What a zygote reported when it finished preloading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZygoteReady {
    pub pid: u32,
    pub python: String,
    pub preloaded: Vec<String>,
    pub failed: Vec<(String, String)>,
}

/// The runtime's end of a zygote's control socket (`SOCK_SEQPACKET`): one JSON message
/// per packet, fds by SCM_RIGHTS. Everything received is bounded (size, fd count) and
/// parsed strictly.
#[derive(Debug)]
pub struct ControlChannel {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl ControlChannel {
    /// Wrap a non-blocking, close-on-exec `SOCK_SEQPACKET` socket (see [`seqpacket_pair`]).
    pub fn new(socket: OwnedFd) -> Result<ControlChannel> {
        // SAFETY: `socket` is an open OwnedFd moved into the AsyncFd, which owns it until
        // dropped; its fd number never changes.
        let fd = unsafe { AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)?;
        Ok(ControlChannel {
            fd,
            buf: vec![0u8; MAX_ZYGOTE_MESSAGE],
        })
    }

    /// Send the two programs ([`ZYGOTE_BOOTSTRAP`] reads them) and wait for `ready`.
    /// The error is a sentence saying what went wrong.
    pub async fn bootstrap(
        &mut self,
        timeout: Duration,
    ) -> std::result::Result<ZygoteReady, String> {
        let io = |e: KernelError| format!("the zygote's control socket failed: {e}");
        self.send(KERNEL_PY.as_bytes(), &[]).await.map_err(io)?;
        self.send(ZYGOTE_PY.as_bytes(), &[]).await.map_err(io)?;
        let ready = tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| format!("the zygote was not ready within {timeout:?}"))?
            .map_err(io)?;
        match ready.0 {
            ZygoteEvent::Ready {
                pid,
                python,
                preloaded,
                failed,
                threads,
            } => {
                if let Some(n) = threads.filter(|&n| n > 1) {
                    tracing::warn!(
                        threads = n,
                        "the zygote runs {n} threads after preloading: a preloaded module \
                         started them; children are forked without them, so a lock one of \
                         them held stays locked in the child (pin the module's threads with \
                         its environment variable, or preload less)"
                    );
                }
                Ok(ZygoteReady {
                    pid,
                    python,
                    preloaded,
                    failed,
                })
            }
            other => Err(format!("the zygote sent {other:?} instead of ready")),
        }
    }

    /// Send one message with `fds` attached.
    pub async fn send(&self, body: &[u8], fds: &[RawFd]) -> Result<()> {
        let iov = [IoSlice::new(body)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                sendmsg::<UnixAddr>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
                    .map_err(std::io::Error::from)
            })
            .await?;
        Ok(())
    }

    /// The next message and the fds that came with it. Cancel-safe: a message is either
    /// returned or still in the socket. End of stream (the zygote exited) is an error.
    pub async fn recv(&mut self) -> Result<(ZygoteEvent, Vec<OwnedFd>)> {
        let buf = &mut self.buf;
        let (n, truncated, fds) = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                let mut iov = [IoSliceMut::new(&mut buf[..])];
                let mut space = nix::cmsg_space!([RawFd; MAX_ZYGOTE_FDS]);
                let msg = recvmsg::<()>(
                    fd.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            for fd in raw {
                                // SAFETY: the kernel just installed this fd for us; nothing
                                // else owns it.
                                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                }
                let truncated = msg
                    .flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                Ok((msg.bytes, truncated, fds))
            })
            .await?;
        if n == 0 && !truncated {
            return Err(KernelError::StartFailed {
                python: PathBuf::from("zygote"),
                reason: "the zygote closed its control socket (it exited)".to_owned(),
                stderr: String::new(),
            });
        }
        if truncated {
            return Err(crate::protocol::ProtocolError::FrameTooLarge {
                len: n as u64,
                max: MAX_ZYGOTE_MESSAGE,
            }
            .into());
        }
        let event = serde_json::from_slice(&self.buf[..n]).map_err(|source| {
            KernelError::from(crate::protocol::ProtocolError::InvalidMessage { len: n, source })
        })?;
        Ok((event, fds))
    }
}

/// A `SOCK_SEQPACKET` pair: the runtime's end non-blocking, the zygote's end blocking
/// (Python reads it with plain calls); both close-on-exec.
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(std::io::Error::from)?;
    // The child's end is blocking (Python reads it with plain recv calls).
    nix::fcntl::fcntl(
        &b,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .map_err(std::io::Error::from)?;
    Ok((a, b))
}

/// Let `fd` survive exec (called between fork and exec).
fn clear_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd number has no memory-safety preconditions.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
