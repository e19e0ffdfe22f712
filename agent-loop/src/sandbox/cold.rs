//! The "cold" backend: one fresh `dsbox-runtime` sandbox per episode whose payload is the
//! kernel program (`python -c BOOTSTRAP --channel-fd 3`). The Python environment of the
//! rootfs is bound at /opt/dsbox/env, the kernel's channel is passed as fd 3, the task's
//! data files are bound read-only at their /data paths, and /submission is a writable
//! tmpfs only for prediction tasks. Every episode pays a Python start and its imports;
//! the pooled zygote backend (dsbox-kernel phase 2) removes that cost.
//!
//! A kernel lost during a cell (crash, OOM kill, no response to an interrupt) is replaced
//! by a new sandbox before the next cell, as DSGym's manager restarts its kernel: the
//! cell's error item says the state is lost.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dsbox_kernel::standalone::BOOTSTRAP;
use dsbox_kernel::{CellResult, ClientConfig, KERNEL_PY, KernelClient, KernelControl, LostReason};
use dsbox_rootfs::{Rootfs, RootfsLayout};
use dsbox_runtime::spec::{Mount, ProcessSpec, Root};
use dsbox_runtime::{ExitReport, ExitStatus, Sandbox, SandboxSpec, SpawnOptions, Stdio};
use tokio::io::AsyncWriteExt;

use super::{
    BackendInfo, CodeSandbox, Result, SandboxError, SandboxFactory, SandboxRequest,
    download_via_kernel, upload_via_kernel,
};
use crate::model::BoxFuture;

/// The fd number of the kernel's channel inside the sandbox.
const CHANNEL_FD: i32 = 3;
/// Bytes of the kernel's stderr kept for a start failure.
const STDERR_KEEP: usize = 16 << 10;

/// How the cold backend builds sandboxes.
#[derive(Debug, Clone)]
pub struct ColdConfig {
    pub rootfs_name: String,
    pub rootfs_hash: String,
    pub root: Root,
    /// Host directory bound read-only at /opt/dsbox/env (host-layout rootfs).
    pub env_dir: Option<PathBuf>,
    /// The interpreter inside the sandbox.
    pub python: String,
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
    /// Size of each scratch tmpfs (/tmp, /workdir, /submission).
    pub scratch_size: u64,
    /// Extra environment of the kernel.
    pub env: Vec<(String, String)>,
    pub client: ClientConfig,
    pub cgroup_parent: Option<PathBuf>,
}

impl ColdConfig {
    /// Sandboxes from a built rootfs, with the reference's 2 GB memory limit.
    pub fn from_rootfs(rootfs: &Rootfs) -> ColdConfig {
        let (root, env_dir) = match &rootfs.layout {
            RootfsLayout::Host { env_dir } => (Root::Host, Some(env_dir.clone())),
            RootfsLayout::Dir { root } => (Root::Dir(root.clone()), None),
        };
        ColdConfig {
            rootfs_name: rootfs.name.clone(),
            rootfs_hash: rootfs.content_hash.clone(),
            root,
            env_dir,
            python: rootfs.python.display().to_string(),
            memory: Some(2 << 30),
            pids: Some(512),
            cpus: None,
            scratch_size: 512 << 20,
            // Several sandboxes share the cores: one BLAS/OpenMP thread each.
            env: ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"]
                .iter()
                .map(|k| (k.to_string(), "1".to_string()))
                .collect(),
            client: ClientConfig::default(),
            cgroup_parent: None,
        }
    }

    /// The runtime spec of one episode's sandbox.
    pub fn spec(&self, request: &SandboxRequest) -> std::result::Result<SandboxSpec, String> {
        let mut spec = SandboxSpec {
            process: Some(ProcessSpec {
                args: vec![
                    self.python.clone(),
                    "-c".into(),
                    BOOTSTRAP.into(),
                    "--channel-fd".into(),
                    CHANNEL_FD.to_string(),
                ],
                env: self.env.clone(),
                ..ProcessSpec::default()
            }),
            root: self.root.clone(),
            cgroup_parent: self.cgroup_parent.clone(),
            ..SandboxSpec::default()
        };
        if let Some(env_dir) = &self.env_dir {
            spec.mounts.push(Mount::Bind {
                source: env_dir.clone(),
                destination: dsbox_rootfs::ENV_PATH.into(),
                readonly: true,
            });
        }
        for d in &request.data {
            spec.mounts.push(Mount::Bind {
                source: d.host.clone(),
                destination: d.sandbox_path.clone().into(),
                readonly: true,
            });
        }
        spec.scratch.dirs = vec!["/tmp".into(), "/workdir".into()];
        if request.submission {
            spec.scratch.dirs.push("/submission".into());
        }
        spec.scratch.size = self.scratch_size;
        spec.limits.memory = self.memory;
        spec.limits.pids = self.pids;
        spec.limits.cpus = self.cpus;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

/// Ids of the sandboxes a factory made that are not destroyed yet.
type LiveSet = Arc<Mutex<BTreeSet<String>>>;

/// Makes [`ColdSandbox`]es.
#[derive(Debug, Clone)]
pub struct ColdFactory {
    config: Arc<ColdConfig>,
    live: LiveSet,
}

impl ColdFactory {
    pub fn new(config: ColdConfig) -> ColdFactory {
        ColdFactory {
            config: Arc::new(config),
            live: LiveSet::default(),
        }
    }

    pub fn config(&self) -> &ColdConfig {
        &self.config
    }

    /// The runtime ids of the sandboxes this factory made that still exist.
    pub fn live(&self) -> Vec<String> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl SandboxFactory for ColdFactory {
    fn create<'a>(
        &'a self,
        request: &'a SandboxRequest,
    ) -> BoxFuture<'a, Result<Box<dyn CodeSandbox>>> {
        Box::pin(async move {
            let running = start(&self.config, &self.live, request).await?;
            Ok(Box::new(ColdSandbox {
                config: self.config.clone(),
                live: self.live.clone(),
                request: request.clone(),
                running: Some(running),
                restarts: 0,
            }) as Box<dyn CodeSandbox>)
        })
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: "cold".into(),
            rootfs: self.config.rootfs_name.clone(),
            rootfs_hash: self.config.rootfs_hash.clone(),
        }
    }
}

/// Interrupts the kernel: SIGINT to the sandbox's init (through a pidfd, so a reused pid
/// is never signalled), which forwards it to its payload, the kernel.
struct InitInterrupt(OwnedFd);

impl KernelControl for InitInterrupt {
    fn interrupt(&self) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGINT,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A runtime sandbox registered in its factory's live set until it is destroyed, by
/// [`release`] or, if the episode was cancelled, by this guard's `Drop` (blocking, but
/// nothing leaks).
struct Tracked {
    sandbox: Option<Sandbox>,
    id: String,
    live: LiveSet,
}

impl Tracked {
    fn new(sandbox: Sandbox, live: &LiveSet) -> Tracked {
        let id = sandbox.id().to_owned();
        live.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        Tracked {
            sandbox: Some(sandbox),
            id,
            live: live.clone(),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take()
            && let Err(e) = sandbox.destroy()
        {
            tracing::warn!("destroying sandbox {}: {e}", self.id);
        }
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// A sandbox whose kernel said hello.
struct Running {
    sandbox: Tracked,
    client: KernelClient,
}

/// One episode's sandbox. Dropping it destroys the sandbox too (blocking), so a
/// cancelled episode never leaks one; [`CodeSandbox::close`] does it off the async
/// threads.
pub struct ColdSandbox {
    config: Arc<ColdConfig>,
    live: LiveSet,
    request: SandboxRequest,
    running: Option<Running>,
    restarts: u32,
}

impl std::fmt::Debug for ColdSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColdSandbox")
            .field("label", &self.request.label)
            .field("running", &self.running.is_some())
            .field("restarts", &self.restarts)
            .finish()
    }
}

fn start_error(request: &SandboxRequest, detail: impl Into<String>) -> SandboxError {
    SandboxError::Start {
        label: request.label.clone(),
        detail: detail.into(),
    }
}

/// Build the sandbox, send the kernel program, wait for its hello.
async fn start(
    config: &Arc<ColdConfig>,
    live: &LiveSet,
    request: &SandboxRequest,
) -> Result<Running> {
    let spec = config.spec(request).map_err(|e| start_error(request, e))?;
    let (parent, child) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| start_error(request, format!("socketpair: {e}")))?;
    let (err_read, err_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| start_error(request, format!("pipe: {e}")))?;
    let opts = SpawnOptions {
        stdin: Stdio::Null,
        stdout: Stdio::Null,
        stderr: Stdio::Fd(err_write),
        extra_fds: vec![(OwnedFd::from(child), CHANNEL_FD)],
        // Threads of the blocking pool come and go; the kernel ends when its channel
        // closes instead (also when this process is killed).
        die_with_runtime: false,
    };
    let sandbox = tokio::task::spawn_blocking(move || Sandbox::spawn(&spec, opts))
        .await
        .map_err(|e| start_error(request, format!("spawn task: {e}")))?
        .map_err(|e| start_error(request, e.to_string()))?;
    let sandbox = Tracked::new(sandbox, live);
    let connected = async {
        let pidfd = sandbox
            .sandbox
            .as_ref()
            .ok_or("the sandbox is gone")?
            .pidfd()
            .try_clone_to_owned()
            .map_err(|e| format!("dup pidfd: {e}"))?;
        parent
            .set_nonblocking(true)
            .map_err(|e| format!("channel: {e}"))?;
        let mut stream =
            tokio::net::UnixStream::from_std(parent).map_err(|e| format!("channel: {e}"))?;
        let mut program = (KERNEL_PY.len() as u32).to_be_bytes().to_vec();
        program.extend_from_slice(KERNEL_PY.as_bytes());
        stream
            .write_all(&program)
            .await
            .map_err(|e| format!("sending the kernel program: {e}"))?;
        KernelClient::connect(
            stream,
            Arc::new(InitInterrupt(pidfd)),
            config.client.clone(),
        )
        .await
        .map_err(|e| e.to_string())
    }
    .await;
    match connected {
        Ok(client) => Ok(Running { sandbox, client }),
        Err(detail) => {
            let report = release(sandbox).await;
            let stderr = tokio::task::spawn_blocking(move || read_some(err_read))
                .await
                .unwrap_or_default();
            let mut detail = format!("the kernel did not start: {detail}");
            if let Some(r) = report {
                detail.push_str(&format!(" ({})", describe(&r)));
            }
            if !stderr.is_empty() {
                detail.push_str(&format!("; its stderr: {stderr}"));
            }
            Err(start_error(request, detail))
        }
    }
}

/// What a start failure printed (the writers are gone by now, so this ends).
fn read_some(fd: OwnedFd) -> String {
    let mut file = std::fs::File::from(fd);
    let mut buf = Vec::new();
    let _ = (&mut file).take(STDERR_KEEP as u64).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_owned()
}

/// How the payload ended, in words.
fn describe(report: &ExitReport) -> String {
    if let Some(reason) = &report.killed {
        return format!("killed: {reason}");
    }
    match report.status {
        ExitStatus::Exited(code) => format!("the kernel exited with code {code}"),
        ExitStatus::Signaled(sig) => format!("the kernel was killed by signal {sig}"),
    }
}

/// End a sandbox off the async threads: give a payload that is leaving a moment to go
/// (its exit status says why, e.g. an OOM kill), then kill and destroy. Returns how it
/// ended.
async fn release(mut tracked: Tracked) -> Option<ExitReport> {
    tokio::task::spawn_blocking(move || {
        let mut sandbox = tracked.sandbox.take()?;
        let deadline = Instant::now() + Duration::from_millis(500);
        let report = loop {
            match sandbox.try_wait() {
                Ok(Some(r)) => break Some(r),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = sandbox.kill();
                    break sandbox.wait().ok();
                }
                Err(e) => {
                    tracing::warn!("waiting for sandbox {}: {e}", sandbox.id());
                    break None;
                }
            }
        };
        if let Err(e) = sandbox.destroy() {
            tracing::warn!("destroying a sandbox: {e}");
        }
        // Leaves the live set now that the sandbox is destroyed.
        drop(tracked);
        report
    })
    .await
    .ok()
    .flatten()
}

impl ColdSandbox {
    /// How many times the kernel was replaced after being lost.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    async fn run_cell(&mut self, code: &str, timeout: Duration) -> Result<CellResult> {
        let label = self.request.label.clone();
        let running = self.running.as_mut().ok_or_else(|| SandboxError::Gone {
            label: label.clone(),
            detail: "an earlier restart failed".into(),
        })?;
        let mut result =
            running
                .client
                .execute(code, timeout)
                .await
                .map_err(|e| SandboxError::Failed {
                    label: label.clone(),
                    detail: e.to_string(),
                })?;
        if let dsbox_kernel::CellStatus::KernelLost(reason) = &result.status {
            let reason = reason.clone();
            let old = self.running.take().map(|r| r.sandbox);
            if let Some(sandbox) = old {
                let report = release(sandbox).await;
                if reason == LostReason::Exited
                    && let Some(r) = &report
                {
                    result.set_exit_detail(&describe(r));
                }
            }
            match start(&self.config, &self.live, &self.request).await {
                Ok(r) => {
                    self.running = Some(r);
                    self.restarts += 1;
                }
                Err(e) => tracing::warn!("{label}: the kernel could not be restarted: {e}"),
            }
        }
        Ok(result)
    }
}

impl CodeSandbox for ColdSandbox {
    fn execute<'a>(
        &'a mut self,
        code: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<CellResult>> {
        Box::pin(self.run_cell(code, timeout))
    }

    fn upload<'a>(&'a mut self, path: &'a str, data: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let label = self.request.label.clone();
            upload_via_kernel(self, &label, path, data).await
        })
    }

    fn download<'a>(&'a mut self, path: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(async move {
            let label = self.request.label.clone();
            download_via_kernel(self, &label, path, max_bytes).await
        })
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let running = self.running.take();
        Box::pin(async move {
            if let Some(r) = running {
                drop(r.client);
                release_now(r.sandbox).await;
            }
            Ok(())
        })
    }
}

/// Kill and destroy at once (the episode is over; how it ended does not matter).
async fn release_now(mut tracked: Tracked) {
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(mut sandbox) = tracked.sandbox.take() {
            let _ = sandbox.kill();
            if let Err(e) = sandbox.destroy() {
                tracing::warn!("destroying a sandbox: {e}");
            }
        }
        drop(tracked);
    })
    .await;
}
