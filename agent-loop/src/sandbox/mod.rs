//! Where an episode's code runs: the [`CodeSandbox`] trait (execute, upload, download,
//! close) and the [`SandboxFactory`] that makes one per episode from a task's data.
//!
//! Backends:
//! * [`cold`] — the kernel program as the payload of a fresh `dsbox-runtime` sandbox per
//!   episode (a new Python per episode: slower, but real isolation today).
//! * [`pool`] — a `dsbox-kernel` template: a zygote holding the profile's modules and a
//!   warm pool of ready sandboxed kernels (a kernel in about a millisecond).
//!
//! [`make_factory`] picks one from a [`BackendConfig`]; pooled is the default.

pub mod cold;
pub mod pool;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use dsbox_kernel::{CellResult, CellStatus, KernelManager, ManagerConfig};
use dsbox_rootfs::Rootfs;
use dsbox_tasks::task::DataKind;
use dsbox_tasks::{Task, Track};
use serde::Serialize;

use crate::model::BoxFuture;

pub use cold::{ColdConfig, ColdFactory};
pub use pool::{PooledFactory, PooledSandbox};

/// Why a sandbox could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start a sandbox for {label}: {detail}")]
    Start { label: String, detail: String },
    #[error("the sandbox of {label} failed: {detail}")]
    Failed { label: String, detail: String },
    #[error("the sandbox of {label} is gone ({detail}); its kernel could not be restarted")]
    Gone { label: String, detail: String },
    #[error("{label}: {path}: {detail}")]
    Transfer {
        label: String,
        path: String,
        detail: String,
    },
}

/// Which backend makes the episodes' sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Kernels forked from a zygote that already imported pandas and numpy, from a warm
    /// pool ([`pool`]).
    #[default]
    Pooled,
    /// A fresh sandbox and a fresh Python per episode ([`cold`]).
    Cold,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Pooled => "pooled",
            Backend::Cold => "cold",
        }
    }
}

/// Settings of an episode sandbox, whichever the backend.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub backend: Backend,
    /// Memory limit per sandbox (the reference's 2 GB by default).
    pub memory: Option<u64>,
    /// CPU quota per sandbox, in cores.
    pub cpus: Option<f64>,
    /// Ready kernels the pooled backend keeps warm (the run's concurrency is a good
    /// value: every episode then starts on a ready kernel).
    pub pool_size: usize,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            backend: Backend::Pooled,
            memory: Some(2 << 30),
            cpus: None,
            pool_size: 2,
        }
    }
}

/// The factory of `config.backend` over `rootfs`. The pooled backend starts its zygote
/// at once, so this must run inside a tokio runtime.
pub fn make_factory(rootfs: &Rootfs, config: &BackendConfig) -> Result<Arc<dyn SandboxFactory>> {
    match config.backend {
        Backend::Cold => {
            let mut cold = ColdConfig::from_rootfs(rootfs);
            cold.memory = config.memory;
            cold.cpus = config.cpus;
            Ok(Arc::new(ColdFactory::new(cold)))
        }
        Backend::Pooled => {
            let manager = KernelManager::new(ManagerConfig::default());
            let factory = PooledFactory::from_rootfs(&manager, rootfs, config).map_err(|e| {
                SandboxError::Start {
                    label: format!("the kernel template of rootfs {}", rootfs.name),
                    detail: e.to_string(),
                }
            })?;
            Ok(Arc::new(factory))
        }
    }
}

/// Result alias of the sandbox layer.
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// A host file or directory bound read-only into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataMount {
    /// Where the sandbox sees it (`/data/...`).
    pub sandbox_path: String,
    pub host: PathBuf,
    pub kind: DataKind,
}

/// What one episode's sandbox holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxRequest {
    /// Names the sandbox in errors and logs (`<task id>#<trajectory>`).
    pub label: String,
    /// Only these files are mounted.
    pub data: Vec<DataMount>,
    /// A writable `/submission` (prediction tasks).
    pub submission: bool,
    /// Sandbox paths the task names whose host file is missing (not mounted).
    pub missing: Vec<String>,
}

impl SandboxRequest {
    /// The request for one trajectory of `task`: its data files that exist on the host,
    /// and `/submission` for prediction tasks.
    pub fn for_task(task: &Task, trajectory: u32) -> SandboxRequest {
        let mut data = Vec::new();
        let mut missing = Vec::new();
        for d in &task.data {
            match &d.host {
                Some(host) if host.exists() => data.push(DataMount {
                    sandbox_path: d.path.clone(),
                    host: host.clone(),
                    kind: d.kind,
                }),
                _ => missing.push(d.path.clone()),
            }
        }
        SandboxRequest {
            label: format!("{}#{trajectory}", task.id),
            data,
            submission: task.track == Track::Prediction || task.submission.is_some(),
            missing,
        }
    }
}

/// Which backend and rootfs made the sandboxes of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BackendInfo {
    pub backend: String,
    pub rootfs: String,
    pub rootfs_hash: String,
}

/// A live sandbox with a kernel that keeps state between cells.
pub trait CodeSandbox: Send {
    /// Run one cell. `Err` only when the cell could not run at all; a cell that raised,
    /// timed out or killed its kernel is an `Ok` result whose items say so.
    fn execute<'a>(
        &'a mut self,
        code: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<CellResult>>;

    /// Write a file inside the sandbox (e.g. under /workdir).
    fn upload<'a>(&'a mut self, path: &'a str, data: &'a [u8]) -> BoxFuture<'a, Result<()>>;

    /// Read a file from inside the sandbox (at most `max_bytes`).
    fn download<'a>(&'a mut self, path: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Vec<u8>>>;

    /// Release the sandbox and everything in it.
    fn close(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}

/// Makes one sandbox per episode.
pub trait SandboxFactory: Send + Sync {
    fn create<'a>(
        &'a self,
        request: &'a SandboxRequest,
    ) -> BoxFuture<'a, Result<Box<dyn CodeSandbox>>>;

    fn info(&self) -> BackendInfo;

    /// Wait until the backend can make sandboxes — an error names why it cannot (e.g. the
    /// pooled backend's zygote did not start) — then at most `timeout` until `sandboxes`
    /// of them can be handed out without a start cost; whether they can. Backends
    /// without a warm pool are ready at once.
    fn warm(&self, sandboxes: usize, timeout: Duration) -> BoxFuture<'_, Result<bool>> {
        let _ = (sandboxes, timeout);
        Box::pin(async { Ok(true) })
    }
}

/// Chunk size of [`download_via_kernel`]: its base64 (plus quotes) stays under the
/// kernel's per-value cap of 256 KiB.
const DOWNLOAD_CHUNK: u64 = 96 << 10;
/// Chunk size of [`upload_via_kernel`]: the code frame stays small.
const UPLOAD_CHUNK: usize = 256 << 10;

fn py_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "''".into())
}

fn transfer_error(label: &str, path: &str, cell: &CellResult) -> SandboxError {
    let detail = match cell.error() {
        Some((name, value, _)) => format!("{name}: {value}"),
        None => format!("{:?}", cell.status),
    };
    SandboxError::Transfer {
        label: label.into(),
        path: path.into(),
        detail,
    }
}

/// Upload through the kernel itself, in base64 chunks (works with any backend).
pub async fn upload_via_kernel(
    sandbox: &mut dyn CodeSandbox,
    label: &str,
    path: &str,
    data: &[u8],
) -> Result<()> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(UPLOAD_CHUNK).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let mode = if i == 0 { "wb" } else { "ab" };
        let code = format!(
            "import base64 as __b64, os as __os\n__os.makedirs(__os.path.dirname({p}) or '.', exist_ok=True)\nwith open({p}, {m}) as __f: __f.write(__b64.b64decode({d}))\ndel __b64, __os, __f",
            p = py_str(path),
            m = py_str(mode),
            d = py_str(&b64.encode(chunk)),
        );
        let cell = sandbox.execute(&code, Duration::from_secs(60)).await?;
        if cell.status != CellStatus::Ok {
            return Err(transfer_error(label, path, &cell));
        }
    }
    Ok(())
}

/// Download through the kernel itself, in base64 chunks returned as values.
pub async fn download_via_kernel(
    sandbox: &mut dyn CodeSandbox,
    label: &str,
    path: &str,
    max_bytes: u64,
) -> Result<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    loop {
        let n = DOWNLOAD_CHUNK;
        let code = format!(
            "(lambda __f: (__f.seek({off}), __import__('base64').b64encode(__f.read({n})).decode(), __f.close())[1])(open({p}, 'rb'))",
            off = out.len(),
            p = py_str(path),
        );
        let cell = sandbox.execute(&code, Duration::from_secs(60)).await?;
        let text = match (&cell.status, cell.result_text()) {
            (CellStatus::Ok, Some(t)) => t.trim().trim_matches('\''),
            _ => return Err(transfer_error(label, path, &cell)),
        };
        let chunk = b64.decode(text).map_err(|e| SandboxError::Transfer {
            label: label.into(),
            path: path.into(),
            detail: format!("bad chunk: {e}"),
        })?;
        let done = (chunk.len() as u64) < n;
        out.extend_from_slice(&chunk);
        if out.len() as u64 > max_bytes {
            return Err(SandboxError::Transfer {
                label: label.into(),
                path: path.into(),
                detail: format!("larger than {max_bytes} bytes"),
            });
        }
        if done {
            return Ok(out);
        }
    }
}
