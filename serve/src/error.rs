//! [`AppError`]: every way a request can fail, as an HTTP status and a JSON body that
//! names the problem, plus the extractors ([`Json`], [`Path`], [`Query`]) whose
//! rejections become the same JSON errors (axum's own rejections are plain text).
//!
//! The body is `{"error": "<one line>", "detail": "<the same line>", "kind": "<kind>"}`:
//! `error` as Flask-style services write it, `detail` as FastAPI's (DSGym's manager is a
//! FastAPI app) so a client written for either finds the message.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dsbox_kernel::SandboxError;
use dsbox_kernel::files::FileError;
use dsbox_tasks::TasksError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request itself is wrong (a field, a value, a path).
    #[error("{0}")]
    BadRequest(String),
    /// The body is not JSON, or not the JSON this endpoint takes.
    #[error("{message}")]
    BadJson { status: StatusCode, message: String },
    /// A manager-API container id that is not allocated (DSGym answers 400).
    #[error(
        "container {id} is not allocated{}: allocate one with POST /allocate",
        reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
    )]
    NotAllocated { id: u64, reason: Option<String> },
    /// An id of the sandbox or env API that does not exist (any more).
    #[error(
        "{what} `{id}` does not exist{}",
        reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
    )]
    NotFound {
        what: &'static str,
        id: String,
        reason: Option<String>,
    },
    /// `container_type` / `template` names no template of this server.
    #[error("unknown container type `{name}`: this server has {known}")]
    UnknownType { name: String, known: String },
    /// No room for another sandbox (the caps on live sandboxes or memory).
    #[error("{message}")]
    Full {
        message: String,
        /// 503 for the DSGym manager API (as the reference), 429 for the v1 APIs.
        status: StatusCode,
        retry_after_secs: u64,
    },
    /// The env is done; it takes no more steps.
    #[error("{0}")]
    Conflict(String),
    #[error("missing or wrong bearer token: send `Authorization: Bearer <token>`")]
    Unauthorized,
    #[error("no route {method} {path}: see GET /openapi.json for the API")]
    NoRoute { method: String, path: String },
    #[error("{method} is not allowed on {path}: see GET /openapi.json for the API")]
    MethodNotAllowed { method: String, path: String },
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The sandbox was destroyed while the request ran (deallocated, reclaimed, shut down).
    #[error("{0}")]
    Gone(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Tasks(#[from] TasksError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias of the service.
pub type Result<T, E = AppError> = std::result::Result<T, E>;

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// One line naming the problem (and the fix where there is one).
    pub error: String,
    /// The same line (FastAPI's field name).
    pub detail: String,
    /// A stable machine-readable kind, e.g. `not_allocated`, `bad_json`, `full`.
    pub kind: String,
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) | AppError::NotAllocated { .. } => StatusCode::BAD_REQUEST,
            AppError::UnknownType { .. } => StatusCode::BAD_REQUEST,
            AppError::BadJson { status, .. } => *status,
            AppError::NotFound { .. } | AppError::NoRoute { .. } => StatusCode::NOT_FOUND,
            AppError::Full { status, .. } => *status,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            AppError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Gone(_) => StatusCode::GONE,
            AppError::Sandbox(e) => sandbox_status(e),
            AppError::Tasks(e) => match e {
                TasksError::UnknownTask { .. } | TasksError::UnknownSuite { .. } => {
                    StatusCode::NOT_FOUND
                }
                TasksError::DataRootMissing { .. } => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `kind` field (also the `kind` label of the errors metric).
    pub fn kind(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "bad_request",
            AppError::BadJson { .. } => "bad_json",
            AppError::NotAllocated { .. } => "not_allocated",
            AppError::NotFound { .. } => "not_found",
            AppError::UnknownType { .. } => "unknown_type",
            AppError::Full { .. } => "full",
            AppError::Conflict(_) => "conflict",
            AppError::Unauthorized => "unauthorized",
            AppError::NoRoute { .. } => "no_route",
            AppError::MethodNotAllowed { .. } => "method_not_allowed",
            AppError::ShuttingDown => "shutting_down",
            AppError::Gone(_) => "gone",
            AppError::Sandbox(e) => match e {
                SandboxError::TooManySandboxes { .. } | SandboxError::OutOfMemory { .. } => "full",
                SandboxError::BadDataMount { .. } => "bad_data_mount",
                SandboxError::File(_) => "file",
                SandboxError::Closed { .. } | SandboxError::Reclaimed { .. } => "gone",
                SandboxError::Kernel(dsbox_kernel::KernelError::Protocol(_)) => "bad_request",
                _ => "sandbox",
            },
            AppError::Tasks(e) => match e {
                TasksError::UnknownTask { .. } | TasksError::UnknownSuite { .. } => "not_found",
                TasksError::DataRootMissing { .. } => "no_data_root",
                _ => "tasks",
            },
            AppError::Internal(_) => "internal",
        }
    }

    /// Map "no room" errors of the kernel pool to [`AppError::Full`] with the status the
    /// calling API uses.
    pub fn full_as(self, status: StatusCode, retry_after_secs: u64) -> AppError {
        match self {
            AppError::Sandbox(
                e @ (SandboxError::TooManySandboxes { .. } | SandboxError::OutOfMemory { .. }),
            ) => AppError::Full {
                message: e.to_string(),
                status,
                retry_after_secs,
            },
            other => other,
        }
    }
}

fn sandbox_status(e: &SandboxError) -> StatusCode {
    match e {
        SandboxError::TooManySandboxes { .. } | SandboxError::OutOfMemory { .. } => {
            StatusCode::TOO_MANY_REQUESTS
        }
        SandboxError::BadDataMount { .. } => StatusCode::BAD_REQUEST,
        SandboxError::File(f) => match f {
            FileError::BadPath { .. } | FileError::NotScratch { .. } => StatusCode::BAD_REQUEST,
            FileError::NotRegular { .. } => StatusCode::BAD_REQUEST,
            FileError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            FileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                StatusCode::NOT_FOUND
            }
            FileError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        },
        SandboxError::Closed { .. } | SandboxError::Reclaimed { .. } => StatusCode::GONE,
        // Code too large for one request frame.
        SandboxError::Kernel(dsbox_kernel::KernelError::Protocol(_)) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(kind = self.kind(), "{message}");
        } else {
            tracing::debug!(kind = self.kind(), status = status.as_u16(), "{message}");
        }
        let body = ErrorBody {
            error: message.clone(),
            detail: message,
            kind: self.kind().to_owned(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        response.extensions_mut().insert(ErrorKind(self.kind()));
        let retry = match &self {
            AppError::Full {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            AppError::ShuttingDown => None,
            AppError::Sandbox(
                SandboxError::TooManySandboxes { .. } | SandboxError::OutOfMemory { .. },
            ) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if matches!(self, AppError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Marks a response as an error of this kind (read by the metrics middleware).
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> Self {
        let status = match &r {
            JsonRejection::BytesRejection(_) => r.status(),
            // Syntax errors are 400; well-formed JSON of the wrong shape is 422.
            _ => r.status(),
        };
        let message = match &r {
            JsonRejection::JsonSyntaxError(_) => {
                format!("the body is not valid JSON: {}", r.body_text())
            }
            JsonRejection::JsonDataError(_) => {
                format!(
                    "the JSON body does not fit this endpoint: {}",
                    r.body_text()
                )
            }
            _ => r.body_text(),
        };
        AppError::BadJson { status, message }
    }
}

impl From<BytesRejection> for AppError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is larger than this server accepts (--max-body; uploads: --max-upload)".to_owned()
        } else {
            format!("cannot read the request body: {}", r.body_text())
        };
        AppError::BadJson { status, message }
    }
}

impl From<PathRejection> for AppError {
    fn from(r: PathRejection) -> Self {
        AppError::BadRequest(format!("bad path parameter: {}", r.body_text()))
    }
}

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> Self {
        AppError::BadRequest(format!("bad query string: {}", r.body_text()))
    }
}

/// A JSON body, parsed whatever its `Content-Type` (DSGym's clients and `curl -d` do not
/// always set it); errors name the field and what was expected.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(AppError::BadJson {
                status: StatusCode::BAD_REQUEST,
                message: "the request body is empty: this endpoint takes a JSON object".into(),
            });
        }
        let axum::Json(v) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Json(v))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Path parameters with JSON errors.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct Path<T>(pub T);

/// Query parameters with JSON errors.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct Query<T>(pub T);

/// Parts-only helper so handlers can name the method and path in errors.
pub fn route_of(parts: &Parts) -> (String, String) {
    (parts.method.to_string(), parts.uri.path().to_owned())
}
