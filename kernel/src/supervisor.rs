//! The zygote of one template, in a sandbox of its own, supervised.
//!
//! One tokio task per template owns the zygote: it starts it (a `dsbox-runtime` sandbox
//! from [`TemplateConfig::zygote_spec`], the control socket passed as fd 3, stderr kept
//! for error messages), sends it spawn requests, routes its replies (`spawned` with the
//! child's pidfd, `spawn_failed`) and its children's exit reports to whoever waits for
//! them, notices its death (the control socket closes) and starts a new one. Requests
//! made while it starts wait in the queue; while it cannot start they fail with the
//! reason. Kernels already forked live on in their shells when the zygote dies (their
//! parent is gone, so they are reparented to their shell's init); only their exit codes
//! are no longer reported.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dsbox_runtime::process::message::monotonic_ns;
use dsbox_runtime::{Sandbox, SandboxSpec, SpawnOptions, Stdio};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, watch};

use crate::client::KernelError;
use crate::pool::SandboxError;
use crate::template::{TemplateConfig, ZYGOTE_CONTROL_FD};
use crate::zygote::{
    ControlChannel, FdRole, ZygoteEvent, ZygoteReady, ZygoteRequest, seqpacket_pair,
};

/// Bytes of the zygote's stderr kept for error messages.
const STDERR_TAIL: usize = 8 << 10;

/// How a kernel child ended, as its parent (the zygote) saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChildExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// The state of a template's zygote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ZygoteState {
    /// Starting (preloading); `restarts` counts earlier zygotes of this template.
    Starting { restarts: u64 },
    /// Serving spawn requests.
    Up {
        pid: i32,
        restarts: u64,
        preloaded: Vec<String>,
        failed: Vec<(String, String)>,
    },
    /// The last start failed; retried after a pause.
    Failed { restarts: u64, error: String },
    /// The template is gone.
    Stopped,
}

impl ZygoteState {
    /// How many zygotes of this template died and were replaced.
    pub fn restarts(&self) -> u64 {
        match self {
            ZygoteState::Starting { restarts }
            | ZygoteState::Up { restarts, .. }
            | ZygoteState::Failed { restarts, .. } => *restarts,
            ZygoteState::Stopped => 0,
        }
    }
}

/// What a spawn needs: the (pre-serialized) JoinPlan and the fds of the shell.
pub(crate) struct SpawnRequest {
    pub plan_json: Arc<RawValue>,
    pub pidfd: OwnedFd,
    pub cgroup_procs: Vec<OwnedFd>,
    /// Parent directories of the shell's cgroup leaves.
    pub cgroup_dirs: Vec<PathBuf>,
    /// The kernel's end of its channel. The child waits for the go byte
    /// ([`crate::zygote::GO`]) on it before it joins: the request may go out before the
    /// shell is ready.
    pub channel: OwnedFd,
}

/// A forked kernel child.
#[derive(Debug)]
pub(crate) struct SpawnReply {
    pub pid: u32,
    pub pidfd: Option<OwnedFd>,
    pub exit: oneshot::Receiver<ChildExit>,
    /// The request went out to the zygote / its reply came back (CLOCK_MONOTONIC ns).
    pub sent_ns: u64,
    pub replied_ns: u64,
    /// How long fork() took in the zygote.
    pub fork_ns: Option<u64>,
}

enum Command {
    Spawn(
        SpawnRequest,
        oneshot::Sender<Result<SpawnReply, SandboxError>>,
    ),
    Ping(oneshot::Sender<Result<u64, SandboxError>>),
}

/// The handle templates hold; dropping the last one stops the zygote.
#[derive(Debug)]
pub(crate) struct ZygoteHandle {
    tx: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ZygoteState>,
    template: String,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Spawn(..) => "Spawn",
            Command::Ping(..) => "Ping",
        })
    }
}

impl ZygoteHandle {
    /// Start supervising a zygote for `config` (needs a tokio runtime).
    pub fn start(config: &TemplateConfig) -> ZygoteHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ZygoteState::Starting { restarts: 0 });
        let sup = Supervisor {
            template: config.name(),
            spec: config.zygote_spec(),
            start_timeout: config.zygote_start_timeout,
        };
        tokio::spawn(sup.run(rx, state_tx));
        ZygoteHandle {
            tx,
            state,
            template: config.name(),
        }
    }

    fn gone(&self) -> SandboxError {
        SandboxError::ZygoteUnavailable {
            template: self.template.clone(),
            reason: "the template was dropped".to_owned(),
        }
    }

    /// Ask the zygote for a kernel child: the request is queued at once; the returned
    /// future gives the reply.
    pub fn spawn(
        &self,
        req: SpawnRequest,
    ) -> Result<
        impl std::future::Future<Output = Result<SpawnReply, SandboxError>> + use<>,
        SandboxError,
    > {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Spawn(req, reply))
            .map_err(|_| self.gone())?;
        let gone = self.gone();
        Ok(async move { rx.await.map_err(|_| gone)? })
    }

    /// Round trip to the zygote: how many children it has not reaped yet.
    pub async fn ping(&self) -> Result<u64, SandboxError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Ping(reply))
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    pub fn state(&self) -> ZygoteState {
        self.state.borrow().clone()
    }

    /// Wait until the zygote is up (or its start failed); returns the state then.
    pub async fn wait_started(&self) -> ZygoteState {
        let mut rx = self.state.clone();
        let started = rx
            .wait_for(|s| !matches!(s, ZygoteState::Starting { .. }))
            .await
            .map(|s| s.clone());
        started.unwrap_or(ZygoteState::Stopped)
    }
}

struct Supervisor {
    template: String,
    spec: SandboxSpec,
    start_timeout: Duration,
}

/// A started zygote.
struct Running {
    sandbox: Option<Sandbox>,
    control: ControlChannel,
    stderr: Arc<Mutex<Vec<u8>>>,
    pid: i32,
    ready: ZygoteReady,
    /// `cgroup.procs` of the zygote's cgroup parents that shells lack (cgroup v1: its
    /// freezer hierarchy): children move there, so killing the zygote's cgroup never
    /// takes live kernels along. Opened at the first spawn.
    extra_cgroups: Option<Vec<OwnedFd>>,
}

enum End {
    /// The template dropped its handle.
    Closed,
    /// The zygote died; the reason says how.
    Died(String),
}

fn stderr_tail(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    let b = buf.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&b).trim().to_owned()
}

impl Supervisor {
    async fn run(
        self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        state: watch::Sender<ZygoteState>,
    ) {
        let mut restarts = 0u64;
        let mut next_id = 1u64;
        let mut backoff = Duration::from_millis(250);
        loop {
            state.send_replace(ZygoteState::Starting { restarts });
            let running = tokio::select! {
                r = self.start() => r,
                // Nobody holds the template any more: stop starting.
                _ = state.closed() => return,
            };
            match running {
                Err(error) => {
                    tracing::warn!(template = %self.template, "zygote failed to start: {error}");
                    state.send_replace(ZygoteState::Failed {
                        restarts,
                        error: error.clone(),
                    });
                    let until = tokio::time::Instant::now() + backoff;
                    loop {
                        tokio::select! {
                            cmd = rx.recv() => match cmd {
                                None => return,
                                Some(cmd) => self.refuse(cmd, &error),
                            },
                            _ = tokio::time::sleep_until(until) => break,
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Ok(mut z) => {
                    backoff = Duration::from_millis(250);
                    state.send_replace(ZygoteState::Up {
                        pid: z.pid,
                        restarts,
                        preloaded: z.ready.preloaded.clone(),
                        failed: z.ready.failed.clone(),
                    });
                    let end = self.serve(&mut z, &mut rx, &mut next_id).await;
                    let sandbox = z.sandbox.take();
                    match end {
                        End::Closed => {
                            state.send_replace(ZygoteState::Stopped);
                            let body = br#"{"type":"shutdown"}"#;
                            let _ = z.control.send(body, &[]).await;
                            drop(z);
                            if let Some(sb) = sandbox {
                                let _ = tokio::task::spawn_blocking(move || {
                                    let mut sb = sb;
                                    // The zygote exits when it reads shutdown; give it a
                                    // moment, then destroy kills whatever is left.
                                    for _ in 0..50 {
                                        if matches!(sb.try_wait(), Ok(Some(_))) {
                                            break;
                                        }
                                        std::thread::sleep(Duration::from_millis(10));
                                    }
                                    sb.destroy()
                                })
                                .await;
                            }
                            return;
                        }
                        End::Died(reason) => {
                            tracing::warn!(template = %self.template, "the zygote died ({reason}); starting a new one");
                            restarts += 1;
                            if let Some(sb) = sandbox {
                                tokio::task::spawn_blocking(move || sb.destroy());
                            }
                        }
                    }
                }
            }
        }
    }

    fn refuse(&self, cmd: Command, error: &str) {
        let err = || SandboxError::ZygoteUnavailable {
            template: self.template.clone(),
            reason: format!("it failed to start: {error}"),
        };
        match cmd {
            Command::Spawn(_, reply) => {
                let _ = reply.send(Err(err()));
            }
            Command::Ping(reply) => {
                let _ = reply.send(Err(err()));
            }
        }
    }

    async fn start(&self) -> Result<Running, String> {
        let (parent, child_end) = seqpacket_pair().map_err(|e| e.to_string())?;
        let (err_r, err_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        nix::fcntl::fcntl(
            &err_r,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| format!("fcntl: {e}"))?;
        let spec = self.spec.clone();
        let sandbox = tokio::task::spawn_blocking(move || {
            Sandbox::spawn(
                &spec,
                SpawnOptions {
                    stdin: Stdio::Null,
                    stdout: Stdio::Null,
                    stderr: Stdio::Fd(err_w),
                    extra_fds: vec![(child_end, ZYGOTE_CONTROL_FD)],
                    die_with_runtime: false,
                },
            )
        })
        .await
        .map_err(|e| format!("the sandbox task failed: {e}"))?
        .map_err(|e| format!("cannot start its sandbox: {e}"))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(drain_stderr(err_r, stderr.clone(), self.template.clone()));
        let pid = sandbox.pid();
        let mut control = ControlChannel::new(parent).map_err(|e| e.to_string())?;
        match control.bootstrap(self.start_timeout).await {
            Ok(ready) => {
                if !ready.failed.is_empty() {
                    tracing::warn!(template = %self.template, failed = ?ready.failed, "the zygote could not preload some modules");
                }
                tracing::debug!(template = %self.template, pid, "zygote ready");
                Ok(Running {
                    sandbox: Some(sandbox),
                    control,
                    stderr,
                    pid,
                    ready,
                    extra_cgroups: None,
                })
            }
            Err(reason) => {
                // An interpreter that cannot be executed ends the sandbox at once, with
                // the errno in its report: that, not the closed socket, is the news.
                let mut sandbox = sandbox;
                let mut exec_errno = None;
                for _ in 0..20 {
                    match sandbox.try_wait() {
                        Ok(Some(report)) => {
                            exec_errno = report.exec_errno;
                            break;
                        }
                        Ok(None) => tokio::time::sleep(Duration::from_millis(10)).await,
                        Err(_) => break,
                    }
                }
                let _ = tokio::task::spawn_blocking(move || sandbox.destroy()).await;
                // Let the stderr reader catch up with the zygote's last words.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let tail = stderr_tail(&stderr);
                let reason = match (exec_errno, self.spec.process.as_ref()) {
                    (Some(errno), Some(p)) => format!(
                        "its interpreter {} cannot be executed inside the sandbox ({}): is the rootfs complete? (`dsbox rootfs verify NAME`, or rebuild it); {reason}",
                        p.args.first().map_or("?", String::as_str),
                        nix::errno::Errno::from_raw(errno).desc()
                    ),
                    _ => reason,
                };
                Err(if tail.is_empty() {
                    reason
                } else {
                    format!("{reason}; its stderr: {tail}")
                })
            }
        }
    }

    async fn serve(
        &self,
        z: &mut Running,
        rx: &mut mpsc::UnboundedReceiver<Command>,
        next_id: &mut u64,
    ) -> End {
        type Pending = (oneshot::Sender<Result<SpawnReply, SandboxError>>, u64);
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut pings: HashMap<u64, oneshot::Sender<Result<u64, SandboxError>>> = HashMap::new();
        let mut exits: HashMap<u64, oneshot::Sender<ChildExit>> = HashMap::new();
        let died = |reason: String, z: &Running| {
            let tail = stderr_tail(&z.stderr);
            if tail.is_empty() {
                reason
            } else {
                format!("{reason}; its stderr: {tail}")
            }
        };
        loop {
            tokio::select! {
                // The zygote's messages first: a dead zygote is noticed before another
                // request is sent to it (requests wait in the queue for the next one).
                biased;
                event = z.control.recv() => match event {
                    Err(e) => {
                        let reason = died(format!("{e}"), z);
                        for (_, (reply, _)) in pending.drain() {
                            let _ = reply.send(Err(SandboxError::ZygoteDied {
                                template: self.template.clone(),
                                reason: reason.clone(),
                            }));
                        }
                        for (_, reply) in pings.drain() {
                            let _ = reply.send(Err(self.unavailable(reason.clone())));
                        }
                        return End::Died(reason);
                    }
                    Ok((event, mut fds)) => match event {
                        ZygoteEvent::Spawned { id, pid, pidfd, fork_ns } => {
                            let Some((reply, sent_ns)) = pending.remove(&id) else { continue };
                            let (exit_tx, exit_rx) = oneshot::channel();
                            exits.insert(id, exit_tx);
                            let pidfd = if pidfd && !fds.is_empty() { Some(fds.swap_remove(0)) } else { None };
                            let _ = reply.send(Ok(SpawnReply {
                                pid,
                                pidfd,
                                exit: exit_rx,
                                sent_ns,
                                replied_ns: monotonic_ns(),
                                fork_ns,
                            }));
                        }
                        ZygoteEvent::SpawnFailed { id, step, errno, detail } => {
                            if let Some((reply, _)) = id.and_then(|id| pending.remove(&id)) {
                                let _ = reply.send(Err(SandboxError::Kernel(KernelError::JoinFailed { step, errno, detail })));
                            }
                        }
                        ZygoteEvent::Exited { id, code, signal, .. } => {
                            if let Some(tx) = id.and_then(|id| exits.remove(&id)) {
                                let _ = tx.send(ChildExit { code, signal });
                            }
                        }
                        ZygoteEvent::Pong { id, children } => {
                            if let Some(reply) = id.and_then(|id| pings.remove(&id)) {
                                let _ = reply.send(Ok(children));
                            }
                        }
                        ZygoteEvent::Error { detail } => {
                            tracing::warn!(template = %self.template, "the zygote refused a request: {detail}");
                        }
                        ZygoteEvent::Ready { .. } => {}
                    },
                },
                cmd = rx.recv() => match cmd {
                    None => return End::Closed,
                    Some(Command::Spawn(req, reply)) => {
                        let id = *next_id;
                        *next_id += 1;
                        match self.send_spawn(z, id, req).await {
                            Ok(sent_ns) => { pending.insert(id, (reply, sent_ns)); }
                            Err(e) => { let _ = reply.send(Err(e)); }
                        }
                    }
                    Some(Command::Ping(reply)) => {
                        let id = *next_id;
                        *next_id += 1;
                        let sent = match serde_json::to_vec(&ZygoteRequest::Ping { id }) {
                            Ok(body) => z.control.send(&body, &[]).await.map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        match sent {
                            Ok(()) => { pings.insert(id, reply); }
                            Err(e) => { let _ = reply.send(Err(self.unavailable(e))); }
                        }
                    }
                },
            }
        }
    }

    fn unavailable(&self, reason: String) -> SandboxError {
        SandboxError::ZygoteUnavailable {
            template: self.template.clone(),
            reason,
        }
    }

    /// Send one spawn request (the fds close here once sent).
    async fn send_spawn(
        &self,
        z: &mut Running,
        id: u64,
        req: SpawnRequest,
    ) -> Result<u64, SandboxError> {
        if z.extra_cgroups.is_none() {
            z.extra_cgroups = Some(extra_cgroups(z, &req.cgroup_dirs));
        }
        let extra = z.extra_cgroups.as_deref().unwrap_or_default();
        let mut roles = vec![FdRole::Channel, FdRole::Pidfd];
        let mut raw: Vec<RawFd> = vec![req.channel.as_raw_fd(), req.pidfd.as_raw_fd()];
        for fd in req.cgroup_procs.iter().chain(extra) {
            roles.push(FdRole::Cgroup);
            raw.push(fd.as_raw_fd());
        }
        let body = serde_json::to_vec(&ZygoteRequest::Spawn {
            id,
            plan: &req.plan_json,
            fds: roles,
            go: true,
        })
        .map_err(|e| self.unavailable(format!("cannot encode a spawn request: {e}")))?;
        let sent_ns = monotonic_ns();
        z.control
            .send(&body, &raw)
            .await
            .map_err(|e| SandboxError::ZygoteDied {
                template: self.template.clone(),
                reason: format!("cannot send to it: {e}"),
            })?;
        Ok(sent_ns)
    }
}

/// The zygote's cgroup parents that the shells do not share (see [`Running`]).
fn extra_cgroups(z: &Running, shell_dirs: &[PathBuf]) -> Vec<OwnedFd> {
    let Some(sandbox) = &z.sandbox else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for leaf in sandbox.cgroup_paths() {
        let Some(parent) = leaf.parent() else {
            continue;
        };
        if shell_dirs.iter().any(|d| d == parent) {
            continue;
        }
        let procs = parent.join("cgroup.procs");
        match std::fs::OpenOptions::new().write(true).open(&procs) {
            Ok(f) => out.push(OwnedFd::from(f)),
            Err(e) => tracing::warn!(
                "cannot open {}: {e}; killing the zygote's cgroup would kill its kernels",
                procs.display()
            ),
        }
    }
    out
}

async fn drain_stderr(fd: OwnedFd, tail: Arc<Mutex<Vec<u8>>>, template: String) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let chunk = &buf[..n];
                for line in String::from_utf8_lossy(chunk).lines() {
                    tracing::debug!(template = %template, "zygote stderr: {line}");
                }
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                t.extend_from_slice(chunk);
                if t.len() > STDERR_TAIL {
                    let cut = t.len() - STDERR_TAIL;
                    t.drain(..cut);
                }
            }
        }
    }
}
