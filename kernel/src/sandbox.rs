//! An acquired sandbox with a persistent kernel: [`SandboxKernel`].
//!
//! `execute` runs cells; a kernel lost in a cell (killed by a timeout after its interrupt
//! grace, crashed, OOM-killed, broke the protocol) is killed and replaced at once by a
//! fresh child of the zygote joining the *same* shell: the files in /workdir, /tmp and
//! /submission and the attached data stay, the Python state is lost (the cell's error
//! item says so). `upload`/`download` move files in the scratch dirs from outside
//! ([`crate::files`]). `close` destroys the sandbox; dropping it does so in the
//! background.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dsbox_runtime::Sandbox;
use dsbox_runtime::attach::{self, MountEdit};
use dsbox_runtime::cgroups::CgroupStats;
use dsbox_runtime::process::message::monotonic_ns;
use dsbox_runtime::spec::{SANDBOX_GID, SANDBOX_UID};
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;

use crate::client::{CellResult, CellStatus, LostReason};
use crate::files::SandboxFiles;
use crate::pool::{
    KernelProc, KernelTimings, Ready, Result, SandboxError, TemplateInner, destroy_later,
};
use crate::supervisor::ChildExit;
use crate::template::DATA_DIR;

/// A host file or directory to show read-only at `destination` (under /data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataMount {
    pub source: PathBuf,
    pub destination: PathBuf,
}

impl DataMount {
    pub fn new(source: impl Into<PathBuf>, destination: impl Into<PathBuf>) -> DataMount {
        DataMount {
            source: source.into(),
            destination: destination.into(),
        }
    }
}

/// What a sandbox gets at acquire time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AcquireOptions {
    /// Task data, attached read-only under /data (only these files are visible there).
    pub data: Vec<DataMount>,
    /// Keep /submission writable (prediction tasks); otherwise it is made read-only.
    pub writable_submission: bool,
}

impl AcquireOptions {
    /// Check the data mounts (destinations below /data, sources that exist).
    pub(crate) fn validate(&self) -> Result<()> {
        for d in &self.data {
            let bad = |reason| SandboxError::BadDataMount {
                destination: d.destination.clone(),
                reason,
            };
            let under_data = d.destination.starts_with(DATA_DIR)
                && d.destination != Path::new(DATA_DIR)
                && d.destination.is_absolute();
            if !under_data {
                return Err(bad("data goes below /data, e.g. /data/train.csv"));
            }
            if d.destination
                .components()
                .any(|c| matches!(c, Component::ParentDir))
            {
                return Err(bad("`..` is not allowed"));
            }
            if !d.source.exists() {
                return Err(bad("its source does not exist on the host"));
            }
        }
        Ok(())
    }

    fn attach(&self) -> impl Iterator<Item = MountEdit> + '_ {
        self.data.iter().map(|d| MountEdit::AttachReadOnly {
            source: d.source.clone(),
            destination: d.destination.clone(),
        })
    }

    /// The mount changes for a shell as the runtime made it (/data and /submission
    /// writable): attach the data, then make /data (and /submission unless it stays
    /// writable) read-only. Pooled shells get these for the default options before
    /// their kernel is ready.
    pub(crate) fn fresh_edits(&self, scratch: &[PathBuf]) -> Vec<MountEdit> {
        let mut edits: Vec<MountEdit> = self.attach().collect();
        edits.push(MountEdit::MakeReadOnly {
            path: PathBuf::from(DATA_DIR),
        });
        let submission = Path::new(SUBMISSION_DIR);
        if !self.writable_submission && scratch.iter().any(|d| d == submission) {
            edits.push(MountEdit::MakeReadOnly {
                path: submission.to_path_buf(),
            });
        }
        edits
    }

    /// The mount changes for a pooled shell (prepared with the default options' edits):
    /// nothing for the default options.
    pub(crate) fn pooled_edits(&self, scratch: &[PathBuf]) -> Vec<MountEdit> {
        let mut edits = Vec::new();
        if !self.data.is_empty() {
            edits.push(MountEdit::MakeWritable {
                path: PathBuf::from(DATA_DIR),
            });
            edits.extend(self.attach());
            edits.push(MountEdit::MakeReadOnly {
                path: PathBuf::from(DATA_DIR),
            });
        }
        let submission = Path::new(SUBMISSION_DIR);
        if self.writable_submission && scratch.iter().any(|d| d == submission) {
            edits.push(MountEdit::MakeWritable {
                path: submission.to_path_buf(),
            });
        }
        edits
    }
}

/// The scratch dir a task's answer goes to.
const SUBMISSION_DIR: &str = "/submission";

/// How an acquire went (CLOCK_MONOTONIC ns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AcquireTimings {
    pub request_ns: u64,
    /// The handle was returned (kernel ready, data attached).
    pub acquired_ns: u64,
    /// Taken from the warm pool (else made for this request).
    pub pool_hit: bool,
    /// How the kernel was made (for a pool hit: when the pool made it).
    pub kernel: KernelTimings,
}

impl AcquireTimings {
    /// Request to handle returned.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.acquired_ns.saturating_sub(self.request_ns))
    }
}

#[derive(Debug, Clone, Copy)]
enum Ended {
    Closed,
    Reclaimed(Duration),
}

struct Slot {
    shell: Option<Sandbox>,
    permit: Option<OwnedSemaphorePermit>,
    busy: bool,
    last_used: Instant,
    ended: Option<Ended>,
}

/// The part of a sandbox the template's reaper may end (idle reclaim).
pub(crate) struct SandboxShared {
    id: String,
    slot: Mutex<Slot>,
}

impl SandboxShared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn reclaim_if_idle(&self, idle: Duration) {
        let mut slot = self.lock();
        if slot.shell.is_some() && !slot.busy && slot.last_used.elapsed() >= idle {
            slot.ended = Some(Ended::Reclaimed(idle));
            if let Some(shell) = slot.shell.take() {
                tracing::debug!(sandbox = %self.id, "reclaiming an idle sandbox");
                destroy_later(shell, slot.permit.take());
            }
        }
    }
}

/// Marks the sandbox busy (not reclaimable) while an operation runs.
struct Busy(Arc<SandboxShared>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut slot = self.0.lock();
        slot.busy = false;
        slot.last_used = Instant::now();
    }
}

/// Interrupts one kernel process (see [`SandboxKernel::interrupter`]).
#[derive(Debug, Clone)]
pub struct Interrupter(Arc<std::os::fd::OwnedFd>);

impl Interrupter {
    /// Send SIGINT to the kernel (through its pidfd: never another process).
    pub fn interrupt(&self) -> std::io::Result<()> {
        crate::pool::pidfd_signal(&self.0, libc::SIGINT)
    }
}

/// A sandbox with a persistent kernel, from [`crate::Template::acquire`]. One task uses
/// it at a time (`&mut self`); many sandboxes may be used from many tasks at once.
pub struct SandboxKernel {
    template: Arc<TemplateInner>,
    shared: Arc<SandboxShared>,
    kernel: Option<KernelProc>,
    files: SandboxFiles,
    acquire: AcquireTimings,
    restarts: u64,
    oom_kills_seen: u64,
}

impl std::fmt::Debug for SandboxKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxKernel")
            .field("id", &self.shared.id)
            .field("template", &self.template.name)
            .field("restarts", &self.restarts)
            .finish_non_exhaustive()
    }
}

impl SandboxKernel {
    pub(crate) fn from_ready(
        template: Arc<TemplateInner>,
        mut ready: Ready,
        edits: &[MountEdit],
        request_ns: u64,
        pool_hit: bool,
    ) -> Result<SandboxKernel> {
        let (Some(shell), Some(kernel)) = (ready.shell.take(), ready.kernel.take()) else {
            return Err(SandboxError::Task("a pooled kernel was incomplete".into()));
        };
        let permit = ready.permit.take();
        if let Err(e) = attach::apply(&shell, edits) {
            destroy_later(shell, permit);
            return Err(e.into());
        }
        let files = SandboxFiles {
            init_pid: shell.pid(),
            scratch: template.scratch.clone(),
            uid: SANDBOX_UID,
            gid: SANDBOX_GID,
        };
        // Nothing ran in the shell before: no OOM kill yet (reading the counters would
        // cost four cgroup file reads on the acquire path).
        let oom_kills_seen = 0;
        let shared = Arc::new(SandboxShared {
            id: shell.id().to_owned(),
            slot: Mutex::new(Slot {
                shell: Some(shell),
                permit,
                busy: false,
                last_used: Instant::now(),
                ended: None,
            }),
        });
        template.register_live(&shared);
        let acquire = AcquireTimings {
            request_ns,
            acquired_ns: monotonic_ns(),
            pool_hit,
            kernel: kernel.timings.clone(),
        };
        Ok(SandboxKernel {
            template,
            shared,
            kernel: Some(kernel),
            files,
            acquire,
            restarts: 0,
            oom_kills_seen,
        })
    }

    /// The sandbox's id (its shell's id and cgroup name).
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// How the acquire went.
    pub fn acquire_timings(&self) -> &AcquireTimings {
        &self.acquire
    }

    /// How the current kernel was made (after a restart: the replacement's).
    pub fn kernel_timings(&self) -> Option<&KernelTimings> {
        self.kernel.as_ref().map(|k| &k.timings)
    }

    /// Host pid of the current kernel process.
    pub fn kernel_pid(&self) -> Option<u32> {
        self.kernel.as_ref().map(|k| k.pid)
    }

    /// Something that interrupts the current kernel (SIGINT: `KeyboardInterrupt` in the
    /// running cell) from another task, e.g. on ^C in a REPL while `execute` runs.
    pub fn interrupter(&self) -> Option<Interrupter> {
        self.kernel.as_ref().map(|k| Interrupter(k.pidfd.clone()))
    }

    /// Host pid of the sandbox's init.
    pub fn init_pid(&self) -> i32 {
        self.files.init_pid
    }

    /// How many times the kernel was replaced after being lost.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// The shell's cgroup counters (memory, OOM kills, pids events).
    pub fn cgroup(&self) -> Option<CgroupStats> {
        self.shared.lock().shell.as_ref().and_then(Sandbox::cgroup)
    }

    /// Paths of the shell's cgroup leaves.
    pub fn cgroup_paths(&self) -> Vec<PathBuf> {
        self.shared
            .lock()
            .shell
            .as_ref()
            .map(Sandbox::cgroup_paths)
            .unwrap_or_default()
    }

    fn begin(&self) -> Result<Busy> {
        let mut slot = self.shared.lock();
        let id = self.shared.id.clone();
        match slot.ended {
            Some(Ended::Reclaimed(idle)) => return Err(SandboxError::Reclaimed { id, idle }),
            Some(Ended::Closed) => return Err(SandboxError::Closed { id }),
            None if slot.shell.is_none() => return Err(SandboxError::Closed { id }),
            None => {}
        }
        slot.busy = true;
        Ok(Busy(self.shared.clone()))
    }

    /// Run one cell. `Err` only when it could not run at all (the sandbox is closed,
    /// the code is too large, no kernel could be started); a cell that raised, timed out
    /// or lost its kernel is an `Ok` whose status and items say so.
    ///
    /// ```no_run
    /// # async fn demo(mut sandbox: dsbox_kernel::SandboxKernel) -> dsbox_kernel::pool::Result<()> {
    /// use std::time::Duration;
    /// let cell = sandbox.execute("import numpy as np; np.arange(4).sum()", Duration::from_secs(10)).await?;
    /// assert_eq!(cell.result_text(), Some("6"));
    /// # Ok(()) }
    /// ```
    pub async fn execute(&mut self, code: &str, timeout: Duration) -> Result<CellResult> {
        let _busy = self.begin()?;
        if self.kernel.is_none() {
            self.start_kernel().await?;
        }
        let Some(kernel) = self.kernel.as_mut() else {
            return Err(SandboxError::Closed {
                id: self.shared.id.clone(),
            });
        };
        let mut result = kernel.client.execute(code, timeout).await?;
        if result.needs_restart() {
            self.replace_kernel(&mut result).await;
        }
        Ok(result)
    }

    /// A fresh kernel in this sandbox's shell (asked twice when the zygote dies during
    /// the first spawn; a half-joined child of the dead zygote exits when its channel,
    /// dropped here, closes).
    async fn start_kernel(&mut self) -> Result<()> {
        match self.start_kernel_once().await {
            Err(SandboxError::ZygoteDied { .. }) => self.start_kernel_once().await,
            other => other,
        }
    }

    async fn start_kernel_once(&mut self) -> Result<()> {
        let request_ns = monotonic_ns();
        let (req, runtime_end) = {
            let slot = self.shared.lock();
            let shell = slot.shell.as_ref().ok_or_else(|| SandboxError::Closed {
                id: self.shared.id.clone(),
            })?;
            self.template.prepare_spawn(shell)?
        };
        let kernel = self
            .template
            .finish_spawn(req, runtime_end, request_ns, None)
            .await?;
        self.kernel = Some(kernel);
        Ok(())
    }

    /// Kill the lost kernel, say how it died, start its replacement.
    async fn replace_kernel(&mut self, result: &mut CellResult) {
        let Some(mut lost) = self.kernel.take() else {
            return;
        };
        lost.kill();
        if matches!(result.status, CellStatus::KernelLost(LostReason::Exited)) {
            let exit = tokio::time::timeout(Duration::from_millis(500), &mut lost.exit)
                .await
                .ok()
                .and_then(|r| r.ok());
            let detail = self.describe_death(exit);
            result.set_exit_detail(&detail);
        }
        drop(lost);
        self.restarts += 1;
        self.template.count_restart();
        if let Err(e) = self.start_kernel().await {
            tracing::warn!(sandbox = %self.shared.id, "could not start a replacement kernel ({e}); retrying at the next cell");
        }
    }

    fn describe_death(&mut self, exit: Option<ChildExit>) -> String {
        let mut detail = match exit {
            Some(ChildExit {
                code: Some(code), ..
            }) => format!("the process exited with code {code}"),
            Some(ChildExit {
                signal: Some(sig), ..
            }) => match nix::sys::signal::Signal::try_from(sig) {
                Ok(name) => format!("the process was killed by signal {sig} ({name})"),
                Err(_) => format!("the process was killed by signal {sig}"),
            },
            _ => "its exit status is unknown".to_owned(),
        };
        let limit = self.template.config.limits.memory;
        if let Some(stats) = self.cgroup()
            && stats.oom_kills > self.oom_kills_seen
        {
            self.oom_kills_seen = stats.oom_kills;
            detail.push_str(&match limit {
                Some(l) => format!(
                    "; the sandbox reached its memory limit ({} MiB) and the kernel was killed by the OOM killer",
                    l >> 20
                ),
                None => "; the kernel was killed by the OOM killer".to_owned(),
            });
        }
        detail
    }

    /// Write `data` to `path` in a scratch dir (parents created; owned by the sandbox's
    /// user). Symlinks resolve inside that scratch dir.
    pub async fn upload(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let _busy = self.begin()?;
        let files = self.files.clone();
        let path = path.to_owned();
        let data = data.to_vec();
        tokio::task::spawn_blocking(move || files.write(&path, &data))
            .await
            .map_err(|e| SandboxError::Task(e.to_string()))??;
        Ok(())
    }

    /// Read the regular file `path` (at most `max_bytes`) from a scratch dir.
    pub async fn download(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>> {
        let _busy = self.begin()?;
        let files = self.files.clone();
        let path = path.to_owned();
        let data = tokio::task::spawn_blocking(move || files.read(&path, max_bytes))
            .await
            .map_err(|e| SandboxError::Task(e.to_string()))??;
        Ok(data)
    }

    /// Destroy the sandbox (its kernel and everything in it) and wait until it is gone.
    pub async fn close(mut self) -> Result<()> {
        self.kernel = None;
        let (shell, permit) = {
            let mut slot = self.shared.lock();
            if slot.ended.is_none() {
                slot.ended = Some(Ended::Closed);
            }
            (slot.shell.take(), slot.permit.take())
        };
        let Some(shell) = shell else {
            return Ok(());
        };
        let result = tokio::task::spawn_blocking(move || {
            let r = shell.destroy();
            drop(permit);
            r
        })
        .await
        .map_err(|e| SandboxError::Task(e.to_string()))?;
        result.map_err(|source| SandboxError::Runtime {
            template: self.template.name.clone(),
            source,
        })
    }
}

impl Drop for SandboxKernel {
    fn drop(&mut self) {
        let mut slot = self.shared.lock();
        if slot.ended.is_none() {
            slot.ended = Some(Ended::Closed);
        }
        if let Some(shell) = slot.shell.take() {
            destroy_later(shell, slot.permit.take());
        }
    }
}
