//! Sandboxed kernels, pooled: [`KernelManager`] (caps on live sandboxes and memory,
//! shared by every template), [`Template`] (one zygote in its own sandbox plus a warm pool
//! of ready kernels) and, from [`Template::acquire`], a [`SandboxKernel`]
//! (see [`crate::sandbox`]).
//!
//! A ready kernel is a *shell* sandbox (runtime shell mode: its own cgroup with the
//! template's limits, every namespace, scratch tmpfs, an empty read-only /data) joined by
//! a child of the zygote (`JoinPlan` + the shell's fds), whose hello has arrived. The
//! pool keeps `pool_size` of them per template, refilled by a background task; acquire
//! pops one (O(1)) and attaches the task's data read-only under /data. When the pool is
//! empty, acquire makes one on the spot (the zygote fork path).
//!
//! Everything here is safe to use from many tasks at once: the zygote is driven by its
//! own task ([`crate::supervisor`]), the pool is a mutex-guarded queue, the caps are a
//! semaphore (live sandboxes) and a check of the memory of dsbox's cgroup (memory), and
//! the blocking work (fork, destroy) runs on tokio's blocking threads.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use dsbox_runtime::attach::{self, AttachError, MountEdit};
use dsbox_runtime::process::message::monotonic_ns;
use dsbox_runtime::sandbox::EarlyJoin;
use dsbox_runtime::{Sandbox, SandboxSpec, SpawnOptions};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};

use crate::client::{KernelClient, KernelControl, KernelError};
use crate::files::FileError;
use crate::sandbox::{AcquireOptions, SandboxKernel, SandboxShared};
use crate::supervisor::{ChildExit, SpawnRequest, ZygoteHandle, ZygoteState};
use crate::template::{TemplateConfig, kernel_join_plan};
use crate::zygote::GO;

/// Errors of the pooled, sandboxed kernel API.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot make a kernel sandbox for template {template}: {source}")]
    Runtime {
        template: String,
        #[source]
        source: dsbox_runtime::Error,
    },
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("cannot attach data: {0}")]
    Attach(#[from] AttachError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("the zygote of template {template} is not available: {reason}")]
    ZygoteUnavailable { template: String, reason: String },
    #[error(
        "the zygote of template {template} died during a spawn ({reason}); a new one is starting, retry"
    )]
    ZygoteDied { template: String, reason: String },
    #[error(
        "{live} kernel sandboxes are live, the limit (max_sandboxes) is {limit}; waited {waited:?}: close sandboxes or raise the limit"
    )]
    TooManySandboxes {
        live: usize,
        limit: usize,
        waited: Duration,
    },
    #[error(
        "dsbox's sandboxes use {used} bytes of memory, the limit (max_memory) is {limit}; waited {waited:?}: close sandboxes or raise the limit"
    )]
    OutOfMemory {
        used: u64,
        limit: u64,
        waited: Duration,
    },
    #[error("invalid data mount {destination}: {reason}")]
    BadDataMount {
        destination: PathBuf,
        reason: &'static str,
    },
    #[error("sandbox {id} is closed")]
    Closed { id: String },
    #[error("sandbox {id} was destroyed after being idle for {idle:?}: acquire a new one")]
    Reclaimed { id: String, idle: Duration },
    #[error("a blocking runtime task failed: {0}")]
    Task(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias of this module.
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// Caps shared by every template of a manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Live kernel sandboxes (pooled and acquired) at most.
    pub max_sandboxes: usize,
    /// Memory of all dsbox sandboxes on this machine (the working set of dsbox's parent
    /// cgroup: usage minus inactive file cache) at which new sandboxes wait; `None`: no cap.
    pub max_memory: Option<u64>,
    /// How long an acquire waits for room under the caps before it fails.
    pub acquire_timeout: Duration,
    /// Shells created at once (each is a fork of this process).
    pub create_parallelism: usize,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        let mem_total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kib| kib * 1024);
        ManagerConfig {
            max_sandboxes: 2048,
            max_memory: mem_total.map(|m| m / 100 * 85),
            acquire_timeout: Duration::from_secs(30),
            create_parallelism: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2),
        }
    }
}

/// Owns the caps and the templates. Cheap to clone; needs a tokio runtime.
#[derive(Debug, Clone)]
pub struct KernelManager {
    inner: Arc<ManagerInner>,
}

#[derive(Debug)]
pub(crate) struct ManagerInner {
    config: ManagerConfig,
    permits: Arc<Semaphore>,
    create_slots: Semaphore,
    /// (zygote key, pool key, template).
    templates: Mutex<Vec<(String, String, Weak<TemplateInner>)>>,
    /// One zygote per key, shared by the templates with that key.
    zygotes: Mutex<Vec<(String, Weak<ZygoteHandle>)>>,
    /// dsbox's parent cgroup dirs with memory accounting (v1 memory or v2 unified).
    memory_dirs: Vec<PathBuf>,
}

impl KernelManager {
    /// A manager with these caps.
    pub fn new(config: ManagerConfig) -> KernelManager {
        let memory_dirs = dsbox_runtime::sandbox::cgroup_system()
            .sandbox_parents(None)
            .into_iter()
            .filter(|d| {
                let parent = d.parent().unwrap_or(d);
                parent.join("memory.usage_in_bytes").exists()
                    || parent.join("memory.current").exists()
            })
            .collect();
        KernelManager {
            inner: Arc::new(ManagerInner {
                permits: Arc::new(Semaphore::new(config.max_sandboxes)),
                create_slots: Semaphore::new(config.create_parallelism.max(1)),
                templates: Mutex::new(Vec::new()),
                zygotes: Mutex::new(Vec::new()),
                memory_dirs,
                config,
            }),
        }
    }

    /// The template for `config`. Templates with the same key (rootfs content, preload
    /// set, sandbox policy: [`TemplateConfig::key`]) share one zygote; one with the same
    /// key *and* the same pool settings is returned as is (so asking again is cheap and
    /// never makes a second pool). A new template's pool fills in the background.
    pub fn template(&self, config: TemplateConfig) -> Result<Template> {
        let key = config.key();
        let pool_key = config.pool_key();
        let mut templates = self.inner.lock_templates();
        templates.retain(|(_, _, w)| w.strong_count() > 0);
        if let Some(t) = templates
            .iter()
            .find(|(k, p, _)| *k == key && *p == pool_key)
            .and_then(|(_, _, w)| w.upgrade())
        {
            return Ok(Template { inner: t });
        }
        let zygote = {
            let mut zygotes = self.inner.zygotes.lock().unwrap_or_else(|e| e.into_inner());
            zygotes.retain(|(_, w)| w.strong_count() > 0);
            match zygotes
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, w)| w.upgrade())
            {
                Some(z) => z,
                None => {
                    let z = Arc::new(ZygoteHandle::start(&config));
                    zygotes.push((key.clone(), Arc::downgrade(&z)));
                    z
                }
            }
        };
        let inner = Arc::new(TemplateInner {
            name: config.name(),
            shell_spec: Arc::new(config.shell_spec()),
            scratch: config.scratch_dirs(),
            zygote,
            config,
            plan_json: OnceLock::new(),
            pool: Mutex::new(VecDeque::new()),
            refill: Arc::new(Notify::new()),
            inflight: AtomicUsize::new(0),
            last_acquire_ns: AtomicU64::new(monotonic_ns()),
            refill_pause_until_ns: AtomicU64::new(0),
            stats: Counters::default(),
            live: Mutex::new(Vec::new()),
            manager: self.inner.clone(),
        });
        tokio::spawn(refill_loop(Arc::downgrade(&inner), inner.refill.clone()));
        templates.push((key, pool_key, Arc::downgrade(&inner)));
        Ok(Template { inner })
    }

    /// Live kernel sandboxes (pooled and acquired).
    pub fn live(&self) -> usize {
        self.inner.config.max_sandboxes - self.inner.permits.available_permits()
    }

    /// The working set of every dsbox sandbox on this machine (bytes), if measurable.
    pub fn memory_used(&self) -> Option<u64> {
        self.inner.memory_used()
    }

    /// The caps.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }
}

impl ManagerInner {
    #[allow(clippy::type_complexity)]
    fn lock_templates(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(String, String, Weak<TemplateInner>)>> {
        self.templates.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn memory_used(&self) -> Option<u64> {
        let dir = self.memory_dirs.first()?;
        // The dsbox dir appears with the first sandbox; before that nothing is used.
        if !dir.exists() {
            return Some(0);
        }
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let (usage, stat) = match read("memory.usage_in_bytes") {
            Some(u) => (u, read("memory.stat").unwrap_or_default()),
            None => (
                read("memory.current")?,
                read("memory.stat").unwrap_or_default(),
            ),
        };
        let usage: u64 = usage.trim().parse().ok()?;
        let inactive = ["total_inactive_file", "inactive_file"]
            .iter()
            .find_map(|k| dsbox_runtime::cgroups::parse_flat_keyed(&stat, k))
            .unwrap_or(0);
        Some(usage.saturating_sub(inactive))
    }

    fn memory_over(&self) -> Option<(u64, u64)> {
        let limit = self.config.max_memory?;
        let used = self.memory_used()?;
        (used >= limit).then_some((used, limit))
    }

    /// Destroy one ready kernel of some pool (another template's first) to make room.
    fn evict_pooled(&self, prefer_not: Option<&TemplateInner>) -> bool {
        let templates: Vec<Arc<TemplateInner>> = self
            .lock_templates()
            .iter()
            .filter_map(|(_, _, w)| w.upgrade())
            .collect();
        let mut order: Vec<&Arc<TemplateInner>> = templates.iter().collect();
        order.sort_by_key(|t| prefer_not.is_some_and(|p| std::ptr::eq(Arc::as_ptr(t), p)));
        for t in order {
            if let Some(ready) = t.lock_pool().pop_back() {
                drop(ready);
                return true;
            }
        }
        false
    }

    /// Room for one more sandbox: a permit of the count cap, under the memory cap.
    /// `wait`: wait (evicting pooled kernels of other templates first) up to the
    /// acquire timeout; else fail at once.
    async fn admit(
        &self,
        wait: bool,
        prefer_not: Option<&TemplateInner>,
    ) -> Result<OwnedSemaphorePermit> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.config.acquire_timeout;
        let limit = self.config.max_sandboxes;
        loop {
            let permit = match self.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let full = || SandboxError::TooManySandboxes {
                        live: limit - self.permits.available_permits(),
                        limit,
                        waited: started.elapsed(),
                    };
                    if !wait {
                        return Err(full());
                    }
                    self.evict_pooled(prefer_not);
                    match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned())
                        .await
                    {
                        Ok(Ok(p)) => p,
                        _ => return Err(full()),
                    }
                }
            };
            match self.memory_over() {
                None => return Ok(permit),
                Some((used, limit)) => {
                    drop(permit);
                    let err = SandboxError::OutOfMemory {
                        used,
                        limit,
                        waited: started.elapsed(),
                    };
                    if !wait || tokio::time::Instant::now() >= deadline {
                        return Err(err);
                    }
                    if !self.evict_pooled(prefer_not) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    created: AtomicU64,
    pool_hits: AtomicU64,
    pool_misses: AtomicU64,
    kernel_restarts: AtomicU64,
    create_failures: AtomicU64,
}

/// A template's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateStats {
    pub name: String,
    pub pool_ready: usize,
    pub pool_size: usize,
    pub created: u64,
    pub pool_hits: u64,
    pub pool_misses: u64,
    pub kernel_restarts: u64,
    pub create_failures: u64,
    pub zygote: ZygoteState,
}

/// A kernel template: one zygote (in its own sandbox) and a warm pool. Cheap to clone;
/// dropping every clone (and every sandbox acquired from it) stops its zygote and
/// destroys its pool.
#[derive(Debug, Clone)]
pub struct Template {
    pub(crate) inner: Arc<TemplateInner>,
}

pub(crate) struct TemplateInner {
    pub(crate) name: String,
    pub(crate) config: TemplateConfig,
    pub(crate) shell_spec: Arc<SandboxSpec>,
    pub(crate) scratch: Vec<PathBuf>,
    zygote: Arc<ZygoteHandle>,
    /// The JoinPlan as JSON: the same for every shell of the template.
    plan_json: OnceLock<Arc<RawValue>>,
    pool: Mutex<VecDeque<Ready>>,
    refill: Arc<Notify>,
    inflight: AtomicUsize,
    last_acquire_ns: AtomicU64,
    refill_pause_until_ns: AtomicU64,
    stats: Counters,
    /// Acquired sandboxes, for idle reclaim (only with `sandbox_idle`).
    live: Mutex<Vec<Weak<SandboxShared>>>,
    pub(crate) manager: Arc<ManagerInner>,
}

impl std::fmt::Debug for TemplateInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A shell with a joined kernel, ready for its first cell.
pub(crate) struct Ready {
    pub shell: Option<Sandbox>,
    pub kernel: Option<KernelProc>,
    pub permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Ready {
    fn drop(&mut self) {
        if let Some(shell) = self.shell.take() {
            destroy_later(shell, self.permit.take());
        }
    }
}

/// The zygote's answer to a spawn request, to await.
type SpawnReplyFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<crate::supervisor::SpawnReply>> + Send>,
>;

/// A spawn request sent while the shell was still starting
/// ([`Sandbox::spawn_with_hook`]): its child waits for the go byte.
struct EarlySpawn {
    reply: SpawnReplyFuture,
    runtime_end: std::os::unix::net::UnixStream,
    plan_json: Arc<RawValue>,
}

impl EarlySpawn {
    fn request(
        zygote: &ZygoteHandle,
        cached_plan: Option<Arc<RawValue>>,
        j: &EarlyJoin<'_>,
    ) -> Result<EarlySpawn> {
        let plan_json = match cached_plan {
            Some(plan) => plan,
            None => plan_json_of(j.plan)?,
        };
        let (req, runtime_end) =
            spawn_request(plan_json.clone(), j.pidfd, &j.cgroup_procs, &j.cgroup_paths)?;
        let reply = Box::pin(zygote.spawn(req)?);
        Ok(EarlySpawn {
            reply,
            runtime_end,
            plan_json,
        })
    }
}

/// The kernels' JoinPlan of a shell, as JSON.
fn plan_json_of(plan: &dsbox_runtime::sandbox::JoinPlan) -> Result<Arc<RawValue>> {
    let plan = kernel_join_plan(plan.clone());
    let json = serde_json::value::to_raw_value(&plan)
        .map_err(|e| KernelError::Protocol(crate::protocol::ProtocolError::Encode(e)))?;
    Ok(Arc::from(json))
}

/// A spawn request for a shell (its init's pidfd, cgroup.procs fds and cgroup leaves),
/// with a fresh channel; the runtime's end is returned. The child waits for the go byte.
fn spawn_request(
    plan_json: Arc<RawValue>,
    pidfd: BorrowedFd<'_>,
    cgroup_procs: &[BorrowedFd<'_>],
    cgroup_paths: &[PathBuf],
) -> Result<(SpawnRequest, std::os::unix::net::UnixStream)> {
    let pidfd = pidfd.try_clone_to_owned()?;
    let cgroup_procs = cgroup_procs
        .iter()
        .map(|fd| fd.try_clone_to_owned())
        .collect::<std::io::Result<Vec<_>>>()?;
    let cgroup_dirs = cgroup_paths
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    let (runtime_end, kernel_end) = std::os::unix::net::UnixStream::pair()?;
    Ok((
        SpawnRequest {
            plan_json,
            pidfd,
            cgroup_procs,
            cgroup_dirs,
            channel: kernel_end.into(),
        },
        runtime_end,
    ))
}

/// Let the child on the other end of `channel` join its shell (send the go byte).
fn send_go(channel: &std::os::unix::net::UnixStream) -> Result<()> {
    let go = [GO];
    // SAFETY: send(2) of a 1-byte local buffer on a socket we own; MSG_NOSIGNAL: a child
    // that is gone is an EPIPE error, not a SIGPIPE.
    let n = unsafe {
        libc::send(
            channel.as_raw_fd(),
            go.as_ptr().cast(),
            1,
            libc::MSG_NOSIGNAL,
        )
    };
    if n != 1 {
        return Err(SandboxError::Io(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Destroy a shell (kills its kernel) off the async threads, then release its permit.
pub(crate) fn destroy_later(shell: Sandbox, permit: Option<OwnedSemaphorePermit>) {
    let work = move || {
        if let Err(e) = shell.destroy() {
            tracing::warn!("destroying a kernel sandbox: {e}");
        }
        drop(permit);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn_blocking(work);
        }
        Err(_) => work(),
    }
}

/// Where a kernel's time went, as CLOCK_MONOTONIC timestamps in ns (the runtime's and the
/// kernel's own; `None` where the kernel did not report).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelTimings {
    /// The kernel was asked for (acquire, or restart).
    pub request_ns: u64,
    /// The shell sandbox was ready (`None`: the kernel joined an existing shell).
    pub shell_ready_ns: Option<u64>,
    /// The spawn request went to the zygote (before `shell_ready_ns` when it was asked
    /// early, see `go_sent_ns`).
    pub spawn_sent_ns: u64,
    /// The kernel was asked for while its shell was still starting, and this is when it
    /// was told to join (the shell was ready). `None`: it was asked for after.
    pub go_sent_ns: Option<u64>,
    /// The child's first instruction after fork (reported by the kernel).
    pub forked_ns: Option<u64>,
    /// The zygote's reply arrived.
    pub spawned_ns: u64,
    /// The child finished joining (seccomp applied; reported by the kernel).
    pub joined_ns: Option<u64>,
    /// The kernel sent its hello (reported by the kernel).
    pub kernel_ready_ns: Option<u64>,
    /// When each join step ended in the child (reported by the kernel).
    pub join_steps: Vec<(String, u64)>,
    /// How long `fork()` took in the zygote (ns, reported by the zygote).
    pub zygote_fork_ns: Option<u64>,
    /// The hello arrived: the first cell is accepted from here on.
    pub ready_ns: u64,
}

impl KernelTimings {
    /// Milliseconds from the request to each step.
    pub fn steps_ms(&self) -> Vec<(&'static str, f64)> {
        let ms = |t: u64| t.saturating_sub(self.request_ns) as f64 / 1e6;
        let mut v = Vec::new();
        if let Some(t) = self.shell_ready_ns {
            v.push(("shell_ready", ms(t)));
        }
        v.push(("spawn_sent", ms(self.spawn_sent_ns)));
        if let Some(t) = self.go_sent_ns {
            v.push(("go_sent", ms(t)));
        }
        if let Some(t) = self.forked_ns {
            v.push(("forked", ms(t)));
        }
        v.push(("spawned", ms(self.spawned_ns)));
        if let Some(t) = self.joined_ns {
            v.push(("joined", ms(t)));
        }
        if let Some(t) = self.kernel_ready_ns {
            v.push(("kernel_ready", ms(t)));
        }
        v.push(("ready", ms(self.ready_ns)));
        v
    }

    /// Request to ready.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.ready_ns.saturating_sub(self.request_ns))
    }
}

/// A joined kernel: its client and its process.
pub(crate) struct KernelProc {
    pub client: KernelClient,
    pub pidfd: Arc<OwnedFd>,
    /// Host pid.
    pub pid: u32,
    pub exit: oneshot::Receiver<ChildExit>,
    pub timings: KernelTimings,
}

impl KernelProc {
    /// SIGKILL the kernel process (its shell lives on).
    pub fn kill(&self) {
        let _ = pidfd_signal(&self.pidfd, libc::SIGKILL);
    }
}

pub(crate) fn pidfd_signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Interrupts a kernel through its pidfd (no pid reuse race).
struct PidfdInterrupt(Arc<OwnedFd>);

impl KernelControl for PidfdInterrupt {
    fn interrupt(&self) -> std::io::Result<()> {
        pidfd_signal(&self.0, libc::SIGINT)
    }
}

impl Template {
    /// A sandbox with a ready kernel: from the warm pool when it has one, else made now.
    /// The options' data is attached read-only under /data.
    ///
    /// ```no_run
    /// # async fn demo(template: dsbox_kernel::Template) -> dsbox_kernel::pool::Result<()> {
    /// use std::time::Duration;
    /// use dsbox_kernel::{AcquireOptions, DataMount};
    /// let mut sandbox = template
    ///     .acquire(AcquireOptions {
    ///         data: vec![DataMount::new("/srv/task/train.csv", "/data/train.csv")],
    ///         ..AcquireOptions::default()
    ///     })
    ///     .await?;
    /// let cell = sandbox.execute("import pandas as pd; len(pd.read_csv('/data/train.csv'))", Duration::from_secs(30)).await?;
    /// println!("{:?}", cell.result_text());
    /// sandbox.close().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self, options: AcquireOptions) -> Result<SandboxKernel> {
        let request_ns = monotonic_ns();
        options.validate()?;
        let t = &self.inner;
        t.last_acquire_ns.store(request_ns, Ordering::Relaxed);
        let popped = t.lock_pool().pop_front();
        t.refill.notify_one();
        match popped {
            Some(ready) => {
                t.stats.pool_hits.fetch_add(1, Ordering::Relaxed);
                let edits = options.pooled_edits(&t.scratch);
                SandboxKernel::from_ready(t.clone(), ready, &edits, request_ns, true)
            }
            None => {
                t.stats.pool_misses.fetch_add(1, Ordering::Relaxed);
                let edits = options.fresh_edits(&t.scratch);
                let ready = t.create(request_ns, true, &edits, false).await?;
                SandboxKernel::from_ready(t.clone(), ready, &[], request_ns, false)
            }
        }
    }

    /// Wait until the zygote has started (or failed to); returns its state. A failed
    /// start is an error naming the reason.
    pub async fn wait_ready(&self) -> Result<ZygoteState> {
        match self.inner.zygote.wait_started().await {
            ZygoteState::Failed { error, .. } => Err(SandboxError::ZygoteUnavailable {
                template: self.inner.name.clone(),
                reason: error,
            }),
            s => Ok(s),
        }
    }

    /// Wait until the warm pool holds `n` ready kernels (or `timeout` passes).
    pub async fn wait_pool(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.inner.lock_pool().len() < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// The template's name, e.g. `analysis[pandas,numpy]`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn config(&self) -> &TemplateConfig {
        &self.inner.config
    }

    /// Counters and the zygote's state.
    pub fn stats(&self) -> TemplateStats {
        let s = &self.inner.stats;
        TemplateStats {
            name: self.inner.name.clone(),
            pool_ready: self.inner.lock_pool().len(),
            pool_size: self.inner.config.pool_size,
            created: s.created.load(Ordering::Relaxed),
            pool_hits: s.pool_hits.load(Ordering::Relaxed),
            pool_misses: s.pool_misses.load(Ordering::Relaxed),
            kernel_restarts: s.kernel_restarts.load(Ordering::Relaxed),
            create_failures: s.create_failures.load(Ordering::Relaxed),
            zygote: self.inner.zygote.state(),
        }
    }

    /// Host pid of the zygote while it is up.
    pub fn zygote_pid(&self) -> Option<i32> {
        match self.inner.zygote.state() {
            ZygoteState::Up { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// How many children the zygote has not reaped (a round trip to it).
    pub async fn zygote_children(&self) -> Result<u64> {
        self.inner.zygote.ping().await
    }

    /// Destroy every ready kernel of the pool now (it refills at the next acquire).
    pub fn drain_pool(&self) {
        let drained: Vec<Ready> = self.inner.lock_pool().drain(..).collect();
        drop(drained);
    }
}

impl TemplateInner {
    fn lock_pool(&self) -> std::sync::MutexGuard<'_, VecDeque<Ready>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn count_restart(&self) {
        self.stats.kernel_restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn register_live(&self, shared: &Arc<SandboxShared>) {
        if self.config.sandbox_idle.is_some() {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            live.retain(|w| w.strong_count() > 0);
            live.push(Arc::downgrade(shared));
        }
    }

    /// A new shell with a joined kernel. `wait`: wait for room under the caps. `edits`:
    /// mount changes made to the shell while the zygote forks the kernel. `warm`: run a
    /// throwaway cell before returning (pool refills: the user's first cell is then as
    /// fast as later ones). A zygote that dies during the spawn is waited for and asked
    /// again, once, with a new shell (the old one may hold a half-joined child).
    async fn create(
        &self,
        request_ns: u64,
        wait: bool,
        edits: &[MountEdit],
        warm: bool,
    ) -> Result<Ready> {
        match self.create_once(request_ns, wait, edits, warm).await {
            Err(SandboxError::ZygoteDied { template, reason }) => {
                tracing::debug!(%template, "retrying a spawn after the zygote died: {reason}");
                self.create_once(request_ns, wait, edits, warm).await
            }
            other => other,
        }
    }

    async fn create_once(
        &self,
        request_ns: u64,
        wait: bool,
        edits: &[MountEdit],
        warm: bool,
    ) -> Result<Ready> {
        let permit = self.manager.admit(wait, Some(self)).await?;
        let slot = self
            .manager
            .create_slots
            .acquire()
            .await
            .map_err(|e| SandboxError::Task(e.to_string()))?;
        let spec = self.shell_spec.clone();
        let zygote = self.zygote.clone();
        let cached_plan = self.plan_json.get().cloned();
        let spawn = move || {
            // The zygote's fork (~1.5-3 ms with its reply) overlaps the rest of the
            // shell's start: the request goes out as soon as init exists, and the child
            // waits for the go byte (sent below, once the shell is ready) before it
            // touches anything of the shell.
            let mut early: Option<EarlySpawn> = None;
            let shell = Sandbox::spawn_with_hook(&spec, SpawnOptions::default(), &mut |j| {
                if early.is_some() {
                    return;
                }
                match EarlySpawn::request(&zygote, cached_plan.clone(), &j) {
                    Ok(e) => early = Some(e),
                    Err(e) => tracing::debug!(
                        "cannot ask for the kernel before its shell is ready ({e}); asking after"
                    ),
                }
            });
            // On an error the early request is dropped here: its child (if forked
            // already) reads EOF instead of the go byte and exits, and dies anyway with
            // the shell's init (it is in init's pid namespace); the zygote reaps it.
            (shell, early)
        };
        // The fork blocks for a few ms. On a multi-threaded runtime, block in place (the
        // worker's other tasks move elsewhere): two thread hand-offs fewer on the path
        // to a ready kernel, which on a busy machine cost milliseconds each.
        let (spawned, early) = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(spawn),
            _ => tokio::task::spawn_blocking(spawn)
                .await
                .map_err(|e| SandboxError::Task(e.to_string()))?,
        };
        let shell = spawned.map_err(|source| SandboxError::Runtime {
            template: self.name.clone(),
            source,
        })?;
        drop(slot);
        // Init out of the caller's process group: a ^C (or ^\, ^Z, a hangup) at the
        // terminal of a CLI must reach the CLI, which interrupts the kernel itself, not
        // end the shell (init ends on a terminating signal). The zygote and its
        // children have a session of their own (see dsbox_zygote.main).
        // SAFETY: setpgid on our own child (init is the runtime's child), which never execs.
        unsafe { libc::setpgid(shell.pid(), shell.pid()) };
        let shell_ready_ns = monotonic_ns();
        let result = async {
            let (reply, runtime_end, go_ns) = match early {
                Some(e) => {
                    self.plan_json.get_or_init(|| e.plan_json.clone());
                    // The shell is ready: the child may join it now.
                    if let Err(go_failed) = send_go(&e.runtime_end) {
                        // The child's end is gone: most likely the zygote died with the
                        // request (its reply says so, and `create` retries that).
                        return match self.spawn_reply(e.reply).await {
                            Err(e @ SandboxError::ZygoteDied { .. }) => Err(e),
                            _ => Err(go_failed),
                        };
                    }
                    (e.reply, e.runtime_end, Some(monotonic_ns()))
                }
                None => {
                    let (req, runtime_end) = self.prepare_spawn(&shell)?;
                    let reply: SpawnReplyFuture = Box::pin(self.zygote.spawn(req)?);
                    (reply, runtime_end, None)
                }
            };
            // The mount edits (~0.1 ms) overlap the child's join; the handle is returned
            // only once they are done.
            let edited = attach::apply(&shell, edits);
            let mut kernel = self
                .connect_spawned(
                    self.spawn_reply(reply).await?,
                    runtime_end,
                    request_ns,
                    Some(shell_ready_ns),
                    go_ns,
                )
                .await?;
            edited?;
            if warm {
                let cell = kernel.client.warm_up(Duration::from_secs(30)).await?;
                if cell.needs_restart() {
                    return Err(SandboxError::Kernel(KernelError::Lost {
                        reason: crate::client::LostReason::Exited,
                    }));
                }
            }
            Ok(kernel)
        }
        .await;
        match result {
            Ok(kernel) => {
                self.stats.created.fetch_add(1, Ordering::Relaxed);
                Ok(Ready {
                    shell: Some(shell),
                    kernel: Some(kernel),
                    permit: Some(permit),
                })
            }
            Err(e) => {
                self.stats.create_failures.fetch_add(1, Ordering::Relaxed);
                destroy_later(shell, Some(permit));
                Err(e)
            }
        }
    }

    /// What the zygote needs to fork a kernel into `shell` (ready: the go byte is on
    /// the channel already).
    pub(crate) fn prepare_spawn(
        &self,
        shell: &Sandbox,
    ) -> Result<(SpawnRequest, std::os::unix::net::UnixStream)> {
        let join = shell.join_plan();
        let plan_json = match self.plan_json.get() {
            Some(plan) => plan.clone(),
            None => {
                let plan = plan_json_of(&join.plan)?;
                self.plan_json.get_or_init(|| plan).clone()
            }
        };
        let (req, runtime_end) = spawn_request(
            plan_json,
            join.pidfd,
            &join.cgroup_procs,
            &shell.cgroup_paths(),
        )?;
        send_go(&runtime_end)?;
        Ok((req, runtime_end))
    }

    /// Fork a kernel into `shell` and wait for its hello.
    pub(crate) async fn finish_spawn(
        &self,
        req: SpawnRequest,
        runtime_end: std::os::unix::net::UnixStream,
        request_ns: u64,
        shell_ready_ns: Option<u64>,
    ) -> Result<KernelProc> {
        let reply = self.spawn_reply(self.zygote.spawn(req)?).await?;
        self.connect_spawned(reply, runtime_end, request_ns, shell_ready_ns, None)
            .await
    }

    /// The zygote's answer to a spawn request, within the hello timeout: a zygote that
    /// is alive but stuck must not hang the caller (a late child finds its channel closed
    /// and exits).
    async fn spawn_reply(
        &self,
        reply: impl std::future::Future<Output = Result<crate::supervisor::SpawnReply>>,
    ) -> Result<crate::supervisor::SpawnReply> {
        let timeout = self.config.client.hello_timeout;
        tokio::time::timeout(timeout, reply)
            .await
            .map_err(|_| SandboxError::ZygoteUnavailable {
                template: self.name.clone(),
                reason: format!("it did not answer a spawn request within {timeout:?}"),
            })?
    }

    /// The zygote forked the kernel: wait for its hello on the channel.
    async fn connect_spawned(
        &self,
        reply: crate::supervisor::SpawnReply,
        runtime_end: std::os::unix::net::UnixStream,
        request_ns: u64,
        shell_ready_ns: Option<u64>,
        go_sent_ns: Option<u64>,
    ) -> Result<KernelProc> {
        let pidfd = Arc::new(reply.pidfd.ok_or_else(|| SandboxError::ZygoteUnavailable {
            template: self.name.clone(),
            reason: "it did not send the child's pidfd (Python without os.pidfd_open?)".into(),
        })?);
        runtime_end.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(runtime_end)?;
        let control = Arc::new(PidfdInterrupt(pidfd.clone()));
        let client = match KernelClient::connect(stream, control, self.config.client.clone()).await
        {
            Ok(c) => c,
            Err(e) => {
                let _ = pidfd_signal(&pidfd, libc::SIGKILL);
                return Err(e.into());
            }
        };
        let info = client.info();
        let timings = KernelTimings {
            request_ns,
            shell_ready_ns,
            spawn_sent_ns: reply.sent_ns,
            go_sent_ns,
            forked_ns: info.timing.as_ref().map(|t| t.forked_ns),
            spawned_ns: reply.replied_ns,
            joined_ns: info.timing.as_ref().map(|t| t.joined_ns),
            kernel_ready_ns: info.timing.as_ref().map(|t| t.ready_ns),
            join_steps: info
                .timing
                .as_ref()
                .map(|t| t.steps.clone())
                .unwrap_or_default(),
            zygote_fork_ns: reply.fork_ns,
            ready_ns: info.hello_received_ns,
        };
        Ok(KernelProc {
            client,
            pidfd,
            pid: reply.pid,
            exit: reply.exit,
            timings,
        })
    }

    /// Destroy acquired sandboxes idle for longer than `sandbox_idle`.
    fn reclaim_idle(&self) {
        let Some(idle) = self.config.sandbox_idle else {
            return;
        };
        let live: Vec<Arc<SandboxShared>> = {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            live.retain(|w| w.strong_count() > 0);
            live.iter().filter_map(Weak::upgrade).collect()
        };
        for s in live {
            s.reclaim_if_idle(idle);
        }
    }
}

impl Drop for TemplateInner {
    fn drop(&mut self) {
        let drained: Vec<Ready> = self.lock_pool().drain(..).collect();
        drop(drained);
    }
}

/// Keeps the pool at `pool_size`, empties it after `pool_idle` without acquires, and
/// reclaims idle acquired sandboxes. Holds the template weakly: ends with it.
async fn refill_loop(weak: Weak<TemplateInner>, notify: Arc<Notify>) {
    loop {
        let tick = {
            let Some(t) = weak.upgrade() else { return };
            t.reclaim_idle();
            let idle_for = Duration::from_nanos(
                monotonic_ns().saturating_sub(t.last_acquire_ns.load(Ordering::Relaxed)),
            );
            if idle_for > t.config.pool_idle {
                let drained: Vec<Ready> = t.lock_pool().drain(..).collect();
                drop(drained);
            } else if monotonic_ns() >= t.refill_pause_until_ns.load(Ordering::Relaxed) {
                let parallel = t.config.refill_parallelism.max(1);
                loop {
                    let have = t.lock_pool().len() + t.inflight.load(Ordering::Relaxed);
                    if have >= t.config.pool_size || t.inflight.load(Ordering::Relaxed) >= parallel
                    {
                        break;
                    }
                    t.inflight.fetch_add(1, Ordering::Relaxed);
                    let w = Arc::downgrade(&t);
                    let n = notify.clone();
                    tokio::spawn(async move {
                        let Some(t) = w.upgrade() else { return };
                        let edits = AcquireOptions::default().fresh_edits(&t.scratch);
                        let result = t.create(monotonic_ns(), false, &edits, true).await;
                        t.inflight.fetch_sub(1, Ordering::Relaxed);
                        match result {
                            Ok(ready) => {
                                t.lock_pool().push_back(ready);
                                n.notify_one();
                            }
                            Err(
                                SandboxError::TooManySandboxes { .. }
                                | SandboxError::OutOfMemory { .. },
                            ) => {
                                // At a cap: the pool stays smaller until room frees up.
                            }
                            Err(e) => {
                                tracing::warn!(template = %t.name, "refilling the pool: {e}");
                                // Pause refilling for a moment: a failing zygote restarts
                                // with its own backoff; do not spin on it.
                                t.refill_pause_until_ns
                                    .store(monotonic_ns() + 500_000_000, Ordering::Relaxed);
                                n.notify_one();
                            }
                        }
                    });
                }
            }
            let mut tick = t.config.pool_idle / 4;
            if let Some(idle) = t.config.sandbox_idle {
                tick = tick.min(idle / 4);
            }
            tick.clamp(Duration::from_millis(50), Duration::from_secs(5))
        };
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(tick) => {}
        }
    }
}
