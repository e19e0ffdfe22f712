//! dsbox-serve: the HTTP service behind `dsbox serve` — sandboxed, persistent Python
//! kernels for three kinds of clients:
//!
//! * **DSGym's manager API, unchanged** ([`api::manager`]): `/allocate`,
//!   `/deallocate/{id}`, `/session/{id}/execute|ready|health|restart|restart-status`,
//!   `/restart`, `/status`, `/health`, with the reference's JSON shapes, status codes,
//!   output items and integer ids. Containers come from warm pools (not a fixed set).
//! * **An environment API for RL trainers** ([`api::env`], [`env`]): create an env from
//!   a task (the server's suites or a posted record), step it with model actions under
//!   the agent loop's scaffold rules, get the task metric's reward at `done`; batch forms.
//! * **A direct sandbox API** ([`api::sandbox`]): create with limits and data mounts,
//!   execute, upload/download files, delete.
//!
//! Main types: [`App`] (state: kernel manager, templates, the sandboxes of each API,
//! metrics, idle reclaim, shutdown), [`api::router`] (the only route table),
//! [`AppError`] (JSON errors), [`ServeConfig`]. The OpenAPI document
//! ([`api::openapi`], `GET /openapi.json`) is generated from the route registrations and
//! snapshot-tested against `serve/openapi.json`.
//!
//! ```no_run
//! # async fn demo(config: dsbox_serve::ServeConfig) -> std::io::Result<()> {
//! let app = dsbox_serve::App::start(config).expect("templates start");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! dsbox_serve::serve(listener, app, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

pub mod api;
pub mod app;
pub mod config;
pub mod env;
pub mod error;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;

pub use api::{AppState, openapi, router};
pub use app::{Api, App, StartError};
pub use config::{SandboxCaps, ServeConfig};
pub use error::AppError;

/// Serve `app` on `listener` until `shutdown` resolves; then destroy every sandbox
/// (requests still running end with errors), let the in-flight requests finish, stop.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(AppState(app.clone()));
    let closing = app.clone();
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down");
            closing.shutdown().await;
        })
        .await;
    // Also when the listener failed: nothing may outlive the server.
    app.shutdown().await;
    result
}
