//! The direct sandbox API: `POST /v1/sandboxes` (template, limits within the server's
//! caps, read-only data from the server's data tree by relative path), execute, raw file
//! upload/download in the scratch dirs, delete. A full server answers 429 with
//! `Retry-After`. Cells that time out are interrupted and keep their state (dsbox's
//! semantics; a kernel that does not stop is restarted and the error item says so).

use std::path::{Component, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use dsbox_kernel::{AcquireOptions, DataMount, KernelLimits, OutputItem, Truncation};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::api::types::{OutputItemDoc, Size, timeout_secs};
use crate::app::{Api, App, CLOSE_GRACE, Slot, status_name};
use crate::error::{AppError, ErrorBody, Json, Path, Query, Result};

/// Data to show read-only under /data: a path relative to the server's data tree
/// (`qrdata/data/stent365.csv` appears at `/data/qrdata/data/stent365.csv`), or an object
/// naming where it appears.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DataRequest {
    Path(String),
    Mount {
        /// Relative to the server's data tree; no `..`, no absolute paths.
        source: String,
        /// Under /data (default: `/data/<source>`).
        #[schema(nullable = false)]
        destination: Option<String>,
    },
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// A template (container type) of this server; default: the first.
    #[schema(nullable = false)]
    pub template: Option<String>,
    /// Memory limit: bytes or `512M`/`2G` (at most the server's cap).
    #[schema(nullable = false)]
    pub memory: Option<Size>,
    /// Process limit (fork bombs stop there).
    #[schema(nullable = false)]
    pub pids: Option<u64>,
    /// CPU quota in cores.
    #[schema(nullable = false)]
    pub cpus: Option<f64>,
    /// Size of each scratch tmpfs (/tmp, /workdir, /submission).
    #[schema(nullable = false)]
    pub scratch_size: Option<Size>,
    /// Read-only data from the server's data tree (needs `--data-root`).
    #[serde(default)]
    pub data: Vec<DataRequest>,
    /// Keep /submission writable (read-only otherwise).
    #[serde(default)]
    pub writable_submission: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LimitsInfo {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
    pub scratch_size: u64,
}

impl From<&KernelLimits> for LimitsInfo {
    fn from(l: &KernelLimits) -> Self {
        LimitsInfo {
            memory: l.memory,
            pids: l.pids,
            cpus: l.cpus,
            scratch_size: l.scratch_size,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MountInfo {
    /// Relative to the server's data tree.
    pub source: String,
    pub destination: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxInfo {
    pub id: String,
    pub template: String,
    pub busy: bool,
    pub idle_seconds: f64,
    /// Kernels replaced in this sandbox (restarts and lost kernels).
    pub restarts: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreateSandboxResponse {
    pub id: String,
    pub template: String,
    pub limits: LimitsInfo,
    pub data: Vec<MountInfo>,
    /// Request to ready, in milliseconds (a warm pool hit is well under one).
    pub acquire_ms: f64,
    pub pool_hit: bool,
}

/// `source` under the data tree: relative, only normal components, and still inside the
/// tree once symlinks are resolved.
pub fn resolve_data(app: &App, source: &str) -> Result<PathBuf> {
    let tree = app.data_tree.as_ref().ok_or_else(|| {
        AppError::BadRequest(
            "this server has no data: start dsbox serve with --data-root DIR to mount data".into(),
        )
    })?;
    let rel = std::path::Path::new(source);
    if source.is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(AppError::BadRequest(format!(
            "data `{source}`: give a path relative to the server's data tree, without `..` (e.g. qrdata/data/stent365.csv)"
        )));
    }
    let path = tree.join(rel);
    let real = path.canonicalize().map_err(|_| {
        AppError::BadRequest(format!(
            "data `{source}` does not exist in the server's data tree"
        ))
    })?;
    if !real.starts_with(tree) {
        return Err(AppError::BadRequest(format!(
            "data `{source}` leads outside the server's data tree (a symlink): refused"
        )));
    }
    Ok(real)
}

fn data_mounts(app: &App, data: &[DataRequest]) -> Result<(Vec<DataMount>, Vec<MountInfo>)> {
    let mut mounts = Vec::new();
    let mut info = Vec::new();
    for d in data {
        let (source, destination) = match d {
            DataRequest::Path(s) => (s.clone(), None),
            DataRequest::Mount {
                source,
                destination,
            } => (source.clone(), destination.clone()),
        };
        let host = resolve_data(app, &source)?;
        let clean: PathBuf = std::path::Path::new(&source)
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let destination = destination.unwrap_or_else(|| format!("/data/{}", clean.display()));
        let dest = PathBuf::from(&destination);
        if !dest.is_absolute()
            || !dest.starts_with("/data")
            || dest == std::path::Path::new("/data")
            || dest.components().any(|c| matches!(c, Component::ParentDir))
        {
            return Err(AppError::BadRequest(format!(
                "data destination `{destination}` must be below /data, without `..` (e.g. /data/train.csv)"
            )));
        }
        mounts.push(DataMount::new(host, dest));
        info.push(MountInfo {
            source,
            destination,
        });
    }
    Ok((mounts, info))
}

fn limits(app: &App, base: &KernelLimits, req: &CreateSandboxRequest) -> Result<KernelLimits> {
    let caps = &app.config.caps;
    let mut l = base.clone();
    if let Some(m) = &req.memory {
        let bytes = m.bytes("memory")?;
        if !(16 << 20..=caps.memory).contains(&bytes) {
            return Err(AppError::BadRequest(format!(
                "`memory` must be between 16 MiB and this server's cap of {} MiB",
                caps.memory >> 20
            )));
        }
        l.memory = Some(bytes);
    }
    if let Some(p) = req.pids {
        if !(16..=caps.pids).contains(&p) {
            return Err(AppError::BadRequest(format!(
                "`pids` must be between 16 and this server's cap of {}",
                caps.pids
            )));
        }
        l.pids = Some(p);
    }
    if let Some(c) = req.cpus {
        if !(c.is_finite() && c >= 0.01 && c <= caps.cpus) {
            return Err(AppError::BadRequest(format!(
                "`cpus` must be between 0.01 and this server's cap of {}",
                caps.cpus
            )));
        }
        l.cpus = Some(c);
    }
    if let Some(s) = &req.scratch_size {
        let bytes = s.bytes("scratch_size")?;
        if !(1 << 20..=caps.scratch_size).contains(&bytes) {
            return Err(AppError::BadRequest(format!(
                "`scratch_size` must be between 1 MiB and this server's cap of {} MiB",
                caps.scratch_size >> 20
            )));
        }
        l.scratch_size = bytes;
    }
    Ok(l)
}

/// Create a sandbox with a ready kernel.
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes",
    request_body = CreateSandboxRequest,
    responses(
        (status = 201, body = CreateSandboxResponse),
        (status = 400, description = "unknown template, limits over the caps, bad data paths", body = ErrorBody),
        (status = 429, description = "the server is full (Retry-After set)", body = ErrorBody),
    ))]
pub async fn create_sandbox(
    State(AppState(app)): State<AppState>,
    Json(req): Json<CreateSandboxRequest>,
) -> Result<(StatusCode, Json<CreateSandboxResponse>)> {
    let (mounts, data_info) = data_mounts(&app, &req.data)?;
    let (tname, base) = app.template(req.template.as_deref())?;
    let wanted = limits(&app, &base.config().limits, &req)?;
    let template = app.template_with_limits(Some(&tname), wanted.clone())?;
    let options = AcquireOptions {
        data: mounts,
        writable_submission: req.writable_submission,
    };
    let (id, slot) = app
        .acquire(Api::Sandbox, template, options)
        .await
        .map_err(|e| e.full_as(StatusCode::TOO_MANY_REQUESTS, app.config.retry_after_secs))?;
    let (acquire_ms, pool_hit) = slot
        .with_kernel(|k| {
            Box::pin(async move {
                let t = k.acquire_timings();
                Ok((t.total().as_secs_f64() * 1e3, t.pool_hit))
            })
        })
        .await
        .unwrap_or((0.0, false));
    app.sandboxes.insert(id.clone(), slot);
    Ok((
        StatusCode::CREATED,
        Json(CreateSandboxResponse {
            id,
            template: tname,
            limits: LimitsInfo::from(&wanted),
            data: data_info,
            acquire_ms,
            pool_hit,
        }),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxInfo>,
}

fn info(id: &str, slot: &Slot) -> SandboxInfo {
    SandboxInfo {
        id: id.to_owned(),
        template: slot.template.clone(),
        busy: slot.is_busy(),
        idle_seconds: slot.idle_for().as_secs_f64(),
        restarts: slot.restarts(),
    }
}

/// Every sandbox of this API.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes",
    responses((status = 200, body = SandboxList)))]
pub async fn list_sandboxes(State(AppState(app)): State<AppState>) -> Json<SandboxList> {
    Json(SandboxList {
        sandboxes: app
            .sandboxes
            .values()
            .iter()
            .map(|(id, s)| info(id, s))
            .collect(),
    })
}

fn sandbox(app: &App, id: &str) -> Result<Arc<Slot>> {
    app.sandboxes
        .get(&id.to_owned())
        .map_err(|reason| AppError::NotFound {
            what: "sandbox",
            id: id.to_owned(),
            reason,
        })
}

/// One sandbox.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path)),
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorBody)))]
pub async fn get_sandbox(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxInfo>> {
    let slot = sandbox(&app, &id)?;
    Ok(Json(info(&id, &slot)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedResponse {
    pub id: String,
    /// `deleted`.
    pub status: String,
}

/// Destroy the sandbox and everything in it.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path)),
    responses((status = 200, body = DeletedResponse), (status = 404, body = ErrorBody)))]
pub async fn delete_sandbox(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeletedResponse>> {
    let slot = app
        .sandboxes
        .remove(&id, "deleted")
        .ok_or_else(|| AppError::NotFound {
            what: "sandbox",
            id: id.clone(),
            reason: app.sandboxes.get(&id).err().flatten(),
        })?;
    slot.close(CLOSE_GRACE).await;
    Ok(Json(DeletedResponse {
        id,
        status: "deleted".into(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxExecuteRequest {
    pub code: String,
    /// Seconds (default `--exec-timeout`): then KeyboardInterrupt, the state is kept.
    #[schema(nullable = false)]
    pub timeout: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxExecuteResponse {
    #[schema(value_type = Vec<OutputItemDoc>)]
    pub outputs: Vec<OutputItem>,
    /// ok, error, interrupted, timed_out (state kept), timed_out_restarted, kernel_lost.
    pub status: String,
    pub execution_count: Option<u64>,
    /// Wall time of the cell in the server, in milliseconds.
    pub duration_ms: f64,
    /// What the per-cell output caps cut (bytes per stream, images, items).
    #[schema(value_type = Object)]
    pub truncation: Truncation,
}

/// Run a cell.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/execute", tag = "sandboxes",
    params(("id" = String, Path)),
    request_body = SandboxExecuteRequest,
    responses(
        (status = 200, body = SandboxExecuteResponse),
        (status = 404, body = ErrorBody),
        (status = 500, description = "the cell could not run (the sandbox was destroyed from outside)", body = ErrorBody),
    ))]
pub async fn execute_sandbox(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<SandboxExecuteRequest>,
) -> Result<Json<SandboxExecuteResponse>> {
    let slot = sandbox(&app, &id)?;
    let timeout = timeout_secs(
        req.timeout,
        app.config.exec_timeout,
        app.config.max_exec_timeout,
    )?;
    let started = std::time::Instant::now();
    let cell = slot.execute(&app.metrics, req.code, timeout, false).await?;
    Ok(Json(SandboxExecuteResponse {
        status: status_name(&cell.status).into(),
        execution_count: cell.execution_count,
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
        truncation: cell.truncation,
        outputs: cell.items,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct FileQuery {
    /// Absolute path in a scratch dir: /workdir, /tmp or /submission.
    pub path: String,
    /// Downloads: fail if the file is larger (default `--max-download`).
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadResponse {
    pub path: String,
    pub bytes: u64,
}

/// Write a file (the raw request body) into a scratch dir; parents are created, the
/// file belongs to the sandbox's user.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files", tag = "sandboxes",
    params(("id" = String, Path), FileQuery),
    request_body(content = String, content_type = "application/octet-stream", description = "the file's bytes"),
    responses(
        (status = 200, body = UploadResponse),
        (status = 400, description = "a path outside the scratch dirs", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, description = "larger than --max-upload", body = ErrorBody),
    ))]
pub async fn upload_file(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    body: std::result::Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<UploadResponse>> {
    let body = body?;
    let slot = sandbox(&app, &id)?;
    let n = body.len() as u64;
    let path = q.path.clone();
    slot.with_kernel(move |k| {
        Box::pin(async move {
            k.upload(&path, &body).await?;
            Ok(())
        })
    })
    .await?;
    Ok(Json(UploadResponse {
        path: q.path,
        bytes: n,
    }))
}

/// Read a regular file from a scratch dir (raw bytes).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", tag = "sandboxes",
    params(("id" = String, Path), FileQuery),
    responses(
        (status = 200, content_type = "application/octet-stream", body = String, description = "the file's bytes"),
        (status = 400, description = "a path outside the scratch dirs, or not a regular file", body = ErrorBody),
        (status = 404, description = "no such sandbox or file", body = ErrorBody),
        (status = 413, description = "larger than max_bytes", body = ErrorBody),
    ))]
pub async fn download_file(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<Response> {
    let slot = sandbox(&app, &id)?;
    let max = q
        .max_bytes
        .unwrap_or(app.config.max_download)
        .min(app.config.max_download);
    let path = q.path;
    let data = slot
        .with_kernel(move |k| Box::pin(async move { Ok(k.download(&path, max).await?) }))
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}
