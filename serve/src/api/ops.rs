//! Operations: Prometheus metrics, the OpenAPI document, server info.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use dsbox_kernel::TemplateStats;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::AppState;
use crate::error::Json;

/// Prometheus text exposition (see docs/serve.md for the metrics).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(AppState(app)): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.render_metrics(),
    )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "the OpenAPI 3 document of this server", body = Object)))]
pub async fn openapi_json() -> impl IntoResponse {
    axum::Json(crate::api::openapi())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateInfo {
    /// The container type.
    pub name: String,
    /// Rootfs and preload set, e.g. `analysis[pandas,numpy]`.
    pub template: String,
    #[schema(value_type = Object)]
    pub stats: TemplateStats,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InfoResponse {
    pub version: String,
    pub uptime_seconds: f64,
    /// Container types (the first is the default) with their pools and zygotes.
    pub templates: Vec<TemplateInfo>,
    pub max_sandboxes: usize,
    /// Kernel sandboxes alive (held and pooled).
    pub live_sandboxes: usize,
    pub containers: usize,
    pub sandboxes: usize,
    pub envs: usize,
    /// Whether the manager API mounts a data tree at /data.
    pub data: bool,
    /// The LLM judge for judge metrics, if any.
    pub judge: Option<String>,
    pub exec_timeout_seconds: f64,
    pub idle_timeout_seconds: Option<f64>,
}

/// What this server serves and holds.
#[utoipa::path(get, path = "/v1/info", tag = "ops",
    responses((status = 200, body = InfoResponse)))]
pub async fn info(State(AppState(app)): State<AppState>) -> Json<InfoResponse> {
    Json(InfoResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: app.uptime().as_secs_f64(),
        templates: app
            .all_templates()
            .into_iter()
            .map(|(name, t)| TemplateInfo {
                name,
                template: t.name().to_owned(),
                stats: t.stats(),
            })
            .collect(),
        max_sandboxes: app.config.manager.max_sandboxes,
        live_sandboxes: app.manager.live(),
        containers: app.containers.len(),
        sandboxes: app.sandboxes.len(),
        envs: app.envs.len(),
        data: app.data_tree.is_some(),
        judge: app.config.judge_name.clone(),
        exec_timeout_seconds: app.config.exec_timeout.as_secs_f64(),
        idle_timeout_seconds: app.config.idle_timeout.map(|d| d.as_secs_f64()),
    })
}
