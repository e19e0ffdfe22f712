//! DSGym's execution-manager API, unchanged for its clients: integer container ids,
//! `/allocate`, `/deallocate/{id}`, `/session/{id}/...`, `/restart`, `/status` (see
//! dsgym-behaviour.md §5 and docs/serve.md).
//!
//! Unlike the reference, containers are not a fixed set: `/allocate` takes a sandbox from
//! the warm pool of the container type's template (made on demand up to
//! `--max-sandboxes`), `/deallocate` destroys it, and ids come from a counter (never
//! reused). A cell that times out is interrupted and then its kernel restarted (all
//! variables lost), with a `TimeoutError` item, as the reference does.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use dsbox_kernel::{AcquireOptions, OutputItem};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::api::types::{OutputItemDoc, timeout_secs};
use crate::app::{Api, CLOSE_GRACE, HasSlot, Slot};
use crate::error::{AppError, ErrorBody, Json, Path, Query, Result};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// Always `ok` while the server runs.
    pub status: String,
}

/// The service is up (never needs the token).
#[utoipa::path(get, path = "/health", tag = "manager",
    responses((status = 200, body = HealthResponse)))]
pub async fn health() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AllocateQuery {
    /// A template (rootfs profile) this server serves; default: the first one.
    pub container_type: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AllocateResponse {
    pub container_id: u64,
}

/// Take a sandbox with a ready kernel (from the warm pool, else made now).
#[utoipa::path(post, path = "/allocate", tag = "manager", params(AllocateQuery),
    responses(
        (status = 200, body = AllocateResponse),
        (status = 400, description = "unknown container type", body = ErrorBody),
        (status = 503, description = "no room for another sandbox (Retry-After set)", body = ErrorBody),
    ))]
pub async fn allocate(
    State(AppState(app)): State<AppState>,
    Query(q): Query<AllocateQuery>,
) -> Result<Json<AllocateResponse>> {
    let template = app.template(q.container_type.as_deref())?;
    let options = AcquireOptions {
        data: app.data_tree_mounts(),
        // As the reference's containers: /submission is writable.
        writable_submission: true,
    };
    let (key, slot) = app
        .acquire(Api::Manager, template, options)
        .await
        .map_err(|e| e.full_as(StatusCode::SERVICE_UNAVAILABLE, app.config.retry_after_secs))?;
    let id: u64 = key
        .parse()
        .map_err(|_| AppError::Internal(format!("container key {key} is not a number")))?;
    app.containers.insert(id, slot);
    Ok(Json(AllocateResponse { container_id: id }))
}

fn container(app: &crate::app::App, id: u64) -> Result<std::sync::Arc<Slot>> {
    app.containers
        .get(&id)
        .map_err(|reason| AppError::NotAllocated { id, reason })
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeallocateResponse {
    /// `deallocated`.
    pub status: String,
    pub container_id: u64,
}

/// Destroy the container's sandbox (nothing of it survives); its id is never reused.
#[utoipa::path(post, path = "/deallocate/{id}", tag = "manager",
    params(("id" = u64, Path, description = "a container id from /allocate")),
    responses(
        (status = 200, body = DeallocateResponse),
        (status = 400, description = "not allocated", body = ErrorBody),
    ))]
pub async fn deallocate(
    State(AppState(app)): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<DeallocateResponse>> {
    let slot = app
        .containers
        .remove(&id, "deallocated")
        .ok_or_else(|| AppError::NotAllocated {
            id,
            reason: app.containers.get(&id).err().flatten(),
        })?;
    slot.close(CLOSE_GRACE).await;
    Ok(Json(DeallocateResponse {
        status: "deallocated".into(),
        container_id: id,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ExecuteRequest {
    /// Python code (a cell: state persists between cells).
    pub code: String,
    /// Seconds before the cell is interrupted and the kernel restarted (default 180,
    /// `--exec-timeout`).
    #[schema(nullable = false)]
    pub timeout: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecuteResponse {
    /// The cell's output items, in order.
    #[schema(value_type = Vec<OutputItemDoc>)]
    pub outputs: Vec<OutputItem>,
}

/// Run a cell in the container's kernel.
#[utoipa::path(post, path = "/session/{id}/execute", tag = "manager",
    params(("id" = u64, Path, description = "a container id from /allocate")),
    request_body = ExecuteRequest,
    responses(
        (status = 200, body = ExecuteResponse),
        (status = 400, description = "not allocated, or a bad timeout", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 422, description = "the body is JSON of the wrong shape", body = ErrorBody),
    ))]
pub async fn execute(
    State(AppState(app)): State<AppState>,
    Path(id): Path<u64>,
    Json(req): Json<ExecuteRequest>,
) -> Result<Json<ExecuteResponse>> {
    let slot = container(&app, id)?;
    let timeout = timeout_secs(
        req.timeout,
        app.config.exec_timeout,
        app.config.max_exec_timeout,
    )?;
    match slot.execute(&app.metrics, req.code, timeout, true).await {
        Ok(cell) => Ok(Json(ExecuteResponse {
            outputs: cell.items,
        })),
        Err(AppError::Gone(_)) => Err(AppError::NotAllocated {
            id,
            reason: Some("deallocated while the cell waited".into()),
        }),
        // The cell could not run at all (the sandbox was destroyed from outside and no
        // kernel can start in it): as an error item, the way DSGym's clients read
        // failures, saying what to do.
        Err(e @ AppError::Sandbox(_)) => Ok(Json(ExecuteResponse {
            outputs: vec![sandbox_error_item(id, &e)],
        })),
        Err(e) => Err(e),
    }
}

fn sandbox_error_item(id: u64, e: &AppError) -> OutputItem {
    let value = format!(
        "the sandbox of container {id} cannot run code ({e}): deallocate it and allocate a new one"
    );
    OutputItem::Error {
        name: "SandboxError".into(),
        traceback: vec![format!("SandboxError: {value}")],
        value,
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadyResponse {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<String>,
}

/// Whether the container's kernel can take a cell now (not running one, not
/// restarting). `/session/{id}/health` checks that the kernel answers.
#[utoipa::path(get, path = "/session/{id}/ready", tag = "manager",
    params(("id" = u64, Path)),
    responses(
        (status = 200, body = ReadyResponse),
        (status = 400, description = "not allocated", body = ErrorBody),
    ))]
pub async fn ready(
    State(AppState(app)): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<ReadyResponse>> {
    let slot = container(&app, id)?;
    let (ready, reason) = if slot.is_restarting() {
        (false, Some("the kernel is restarting".to_owned()))
    } else if slot.is_busy() {
        (false, Some("the kernel is running a cell".to_owned()))
    } else if slot.is_closed() {
        (false, Some("the container is being destroyed".to_owned()))
    } else {
        // No probe cell here (it would show in the kernel's execution counts): a kernel
        // lost since its last cell is replaced before the next one runs.
        (true, None)
    };
    Ok(Json(ReadyResponse { ready, reason }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionHealthResponse {
    /// `healthy`, `busy` (running a cell) or `unhealthy`.
    pub status: String,
    pub container_id: u64,
    pub container_type: String,
    /// Kernels replaced in this container (restarts and lost kernels).
    pub restarts: u64,
    /// Seconds since the last request finished.
    pub idle_seconds: f64,
}

/// The container's kernel: alive, busy or not answering.
#[utoipa::path(get, path = "/session/{id}/health", tag = "manager",
    params(("id" = u64, Path)),
    responses(
        (status = 200, body = SessionHealthResponse),
        (status = 400, description = "not allocated", body = ErrorBody),
    ))]
pub async fn session_health(
    State(AppState(app)): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<SessionHealthResponse>> {
    let slot = container(&app, id)?;
    let idle = slot.idle_for();
    let status = match slot.probe().await {
        None => "busy",
        Some(true) => "healthy",
        Some(false) => "unhealthy",
    };
    Ok(Json(SessionHealthResponse {
        status: status.into(),
        container_id: id,
        container_type: slot.template.clone(),
        restarts: slot.restarts(),
        idle_seconds: idle.as_secs_f64(),
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RestartResponse {
    /// `restarted`.
    pub status: String,
    pub container_id: u64,
}

/// Restart the container's kernel: variables are lost, files in /workdir stay.
#[utoipa::path(post, path = "/session/{id}/restart", tag = "manager",
    params(("id" = u64, Path)),
    responses(
        (status = 200, body = RestartResponse),
        (status = 400, description = "not allocated", body = ErrorBody),
    ))]
pub async fn restart(
    State(AppState(app)): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<RestartResponse>> {
    let slot = container(&app, id)?;
    slot.restart().await.map_err(|e| match e {
        AppError::Gone(_) => AppError::NotAllocated { id, reason: None },
        other => other,
    })?;
    Ok(Json(RestartResponse {
        status: "restarted".into(),
        container_id: id,
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RestartStatusResponse {
    pub container_id: u64,
    /// `restarting` or `ready`.
    pub status: String,
    pub restarting: bool,
    /// Kernels replaced in this container so far.
    pub restarts: u64,
}

/// Whether a restart is in progress (restarts finish before `/restart` answers).
#[utoipa::path(get, path = "/session/{id}/restart-status", tag = "manager",
    params(("id" = u64, Path)),
    responses(
        (status = 200, body = RestartStatusResponse),
        (status = 400, description = "not allocated", body = ErrorBody),
    ))]
pub async fn restart_status(
    State(AppState(app)): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<RestartStatusResponse>> {
    let slot = container(&app, id)?;
    let restarting = slot.is_restarting();
    Ok(Json(RestartStatusResponse {
        container_id: id,
        status: if restarting { "restarting" } else { "ready" }.into(),
        restarting,
        restarts: slot.restarts(),
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RestartFailure {
    pub container_id: u64,
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RestartAllResponse {
    /// `restarted`.
    pub status: String,
    pub restarted: Vec<u64>,
    pub failed: Vec<RestartFailure>,
}

/// Restart the kernel of every allocated container.
#[utoipa::path(post, path = "/restart", tag = "manager",
    responses((status = 200, body = RestartAllResponse)))]
pub async fn restart_all(State(AppState(app)): State<AppState>) -> Json<RestartAllResponse> {
    let all = app.containers.values();
    let results = futures_util::future::join_all(
        all.iter()
            .map(|(id, slot)| async move { (*id, slot.restart().await) }),
    )
    .await;
    let mut restarted = Vec::new();
    let mut failed = Vec::new();
    for (id, r) in results {
        match r {
            Ok(()) => restarted.push(id),
            Err(e) => failed.push(RestartFailure {
                container_id: id,
                error: e.to_string(),
            }),
        }
    }
    Json(RestartAllResponse {
        status: "restarted".into(),
        restarted,
        failed,
    })
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusResponse {
    /// Sandboxes that can still be allocated (`--max-sandboxes` minus those held by
    /// clients of any API).
    pub available_containers: usize,
    /// The same per container type (they share the cap).
    pub available_by_type: BTreeMap<String, usize>,
    /// Containers allocated through this API.
    pub allocated_containers: usize,
    /// `--max-sandboxes`.
    pub total_containers: usize,
    pub allocated_container_ids: Vec<u64>,
}

/// Counts, with the reference's keys.
#[utoipa::path(get, path = "/status", tag = "manager",
    responses((status = 200, body = StatusResponse)))]
pub async fn status(State(AppState(app)): State<AppState>) -> Json<StatusResponse> {
    let total = app.config.manager.max_sandboxes;
    let open_envs = app
        .envs
        .values()
        .iter()
        .filter(|(_, e)| !e.slot().is_closed())
        .count();
    let held = app.containers.len() + app.sandboxes.len() + open_envs;
    let available = total.saturating_sub(held);
    let ids = app.containers.ids();
    Json(StatusResponse {
        available_containers: available,
        available_by_type: app
            .type_names()
            .into_iter()
            .map(|t| (t, available))
            .collect(),
        allocated_containers: ids.len(),
        total_containers: total,
        allocated_container_ids: ids,
    })
}
