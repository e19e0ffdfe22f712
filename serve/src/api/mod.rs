//! The route table ([`router`]) and what every route shares: the state ([`AppState`]),
//! the bearer-token check, the body limits, request logs and metrics, JSON 404/405
//! answers, and the OpenAPI document (generated from the same route registrations, so it
//! cannot drift from the router; `serve/openapi.json` is its snapshot).

pub mod env;
pub mod manager;
pub mod ops;
pub mod sandbox;
pub mod types;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::error::{AppError, ErrorKind};
use crate::metrics::{KindLabel, RouteLabels};

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState(pub Arc<App>);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "dsbox serve",
        description = "Sandboxed, persistent Python kernels over HTTP: DSGym's manager API (unchanged), an environment API for RL trainers, and a direct sandbox API. Errors are JSON: {\"error\", \"detail\", \"kind\"}. With --token-env, every route but /health needs `Authorization: Bearer <token>`.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "manager", description = "DSGym's execution-manager API: integer container ids, /allocate, /session/{id}/execute, ..."),
        (name = "envs", description = "Environments for RL: one task, one sandbox, stepped one model action at a time; the reward is the task's metric"),
        (name = "sandboxes", description = "Direct sandbox API: create with limits and data, execute, upload and download files, delete"),
        (name = "ops", description = "Metrics, API document, server info")
    ),
    components(schemas(crate::error::ErrorBody))
)]
struct ApiDoc;

/// The routes and the OpenAPI document they make.
fn routes(max_upload: usize) -> OpenApiRouter<AppState> {
    let uploads = OpenApiRouter::new()
        .routes(routes!(sandbox::upload_file, sandbox::download_file))
        .layer(DefaultBodyLimit::max(max_upload));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        // DSGym manager API.
        .routes(routes!(manager::health))
        .routes(routes!(manager::allocate))
        .routes(routes!(manager::deallocate))
        .routes(routes!(manager::execute))
        .routes(routes!(manager::ready))
        .routes(routes!(manager::session_health))
        .routes(routes!(manager::restart))
        .routes(routes!(manager::restart_status))
        .routes(routes!(manager::restart_all))
        .routes(routes!(manager::status))
        // Env API.
        .routes(routes!(env::create_env))
        .routes(routes!(env::create_envs))
        .routes(routes!(env::step_env))
        .routes(routes!(env::step_envs))
        .routes(routes!(env::get_env, env::delete_env))
        // Sandbox API.
        .routes(routes!(sandbox::create_sandbox, sandbox::list_sandboxes))
        .routes(routes!(sandbox::get_sandbox, sandbox::delete_sandbox))
        .routes(routes!(sandbox::execute_sandbox))
        .merge(uploads)
        // Operations.
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::info))
        .routes(routes!(ops::openapi_json))
}

/// The OpenAPI document of [`router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes(0).split_for_parts().1
}

/// The only route table of the service.
pub fn router(state: AppState) -> Router {
    let cfg = &state.0.config;
    let (router, _doc) = routes(cfg.max_upload).split_for_parts();
    router
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(cfg.max_body))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn no_route(req: Request) -> AppError {
    AppError::NoRoute {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    }
}

async fn method_not_allowed(req: Request) -> AppError {
    AppError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    }
}

/// `Authorization: Bearer <token>` on every route but `/health`, when a token is set.
async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.0.config.token
        && req.uri().path() != "/health"
    {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
        if !ok {
            return AppError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

/// Compare without an early exit, so response times do not tell how much of a guess
/// was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// Request logs (tracing) and the request/error metrics.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let response = next.run(req).await;
    let status = response.status();
    let metrics = &state.0.metrics;
    if let Some(ErrorKind(kind)) = response.extensions().get::<ErrorKind>() {
        metrics.errors.get_or_create(&KindLabel { kind }).inc();
    }
    metrics
        .requests
        .get_or_create(&RouteLabels {
            route: route.clone().unwrap_or_else(|| "unmatched".into()),
            status: status.as_u16(),
        })
        .inc();
    tracing::info!(
        method = %method,
        path = %path,
        route = route.as_deref().unwrap_or("-"),
        status = status.as_u16(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    response
}
