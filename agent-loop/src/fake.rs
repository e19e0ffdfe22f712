//! A fake OpenAI-compatible server for tests: real HTTP on `127.0.0.1:0` (axum), speaking
//! the real protocol — `POST /v1/chat/completions` (messages, `tools`, `stop`, usage,
//! `finish_reason`) and `GET /v1/models` — with replies chosen per request by a closure
//! or taken from a queue: text, tool calls, an HTTP status (optionally with
//! `Retry-After`), a delay, or a connection closed in the middle of the response body.
//!
//! Like a real server it applies the request's stop sequences (the reply is cut before
//! the first one and `finish_reason` is `stop`), checks the API key when one is set
//! (401), and answers 404 for a model it does not serve.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::model::estimate_tokens;

/// One scripted reply.
#[derive(Debug, Clone, PartialEq)]
pub enum FakeReply {
    /// Assistant text; the request's stop sequences apply.
    Text(String),
    /// Assistant text exactly as given, with this finish reason (no stop handling).
    Raw {
        content: String,
        finish_reason: String,
    },
    /// Tool calls: (name, arguments as JSON text).
    ToolCalls(Vec<(String, String)>),
    /// An HTTP error status with an OpenAI-style error body.
    Status {
        status: u16,
        retry_after: Option<String>,
        message: String,
    },
    /// Wait, then reply.
    Delay(Duration, Box<FakeReply>),
    /// Send the headers and part of the body, then close the connection.
    CloseMidResponse,
}

impl FakeReply {
    pub fn text(text: impl Into<String>) -> FakeReply {
        FakeReply::Text(text.into())
    }

    pub fn status(status: u16) -> FakeReply {
        FakeReply::Status {
            status,
            retry_after: None,
            message: format!("fake server: status {status}"),
        }
    }

    pub fn retry_after(status: u16, value: impl Into<String>) -> FakeReply {
        FakeReply::Status {
            status,
            retry_after: Some(value.into()),
            message: format!("fake server: status {status}, retry later"),
        }
    }

    pub fn delayed(delay: Duration, reply: FakeReply) -> FakeReply {
        FakeReply::Delay(delay, Box::new(reply))
    }

    pub fn tool_call(name: &str, arguments: Value) -> FakeReply {
        FakeReply::ToolCalls(vec![(name.to_owned(), arguments.to_string())])
    }
}

/// A request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeRequest {
    /// 0-based, in arrival order (chat completions only).
    pub index: usize,
    pub body: Value,
    pub authorization: Option<String>,
}

impl FakeRequest {
    pub fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    fn content_of(m: &Value) -> String {
        match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    }

    /// The content of the first user message (the task prompt).
    pub fn first_user(&self) -> String {
        self.messages()
            .iter()
            .find(|m| m["role"] == "user")
            .map(Self::content_of)
            .unwrap_or_default()
    }

    /// The content of the last message.
    pub fn last_content(&self) -> String {
        self.messages()
            .last()
            .map(Self::content_of)
            .unwrap_or_default()
    }

    /// Assistant messages so far (the turn number of this request, minus one).
    pub fn assistant_turns(&self) -> usize {
        self.messages()
            .iter()
            .filter(|m| m["role"] == "assistant")
            .count()
    }

    pub fn stop(&self) -> Vec<String> {
        match self.body.get("stop") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn model(&self) -> &str {
        self.body.get("model").and_then(Value::as_str).unwrap_or("")
    }

    pub fn has_tools(&self) -> bool {
        self.body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty())
    }
}

type Handler = dyn Fn(&FakeRequest) -> FakeReply + Send + Sync;

/// How the fake picks replies.
pub enum Script {
    /// In order; `then` once the queue is empty.
    Queue {
        replies: VecDeque<FakeReply>,
        then: FakeReply,
    },
    /// Computed per request.
    Handler(Arc<Handler>),
}

impl Script {
    pub fn queue(replies: impl IntoIterator<Item = FakeReply>) -> Script {
        Script::Queue {
            replies: replies.into_iter().collect(),
            then: FakeReply::status(500),
        }
    }

    pub fn handler(f: impl Fn(&FakeRequest) -> FakeReply + Send + Sync + 'static) -> Script {
        Script::Handler(Arc::new(f))
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Models served (others get 404); listed at GET /v1/models.
    pub models: Vec<String>,
    /// When set, requests must carry `Authorization: Bearer <key>` (else 401).
    pub api_key: Option<String>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            models: vec!["fake-model".into()],
            api_key: None,
        }
    }
}

struct Shared {
    config: FakeConfig,
    script: Mutex<Script>,
    requests: Mutex<Vec<FakeRequest>>,
}

/// A running fake server; stopped when dropped.
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Listen on 127.0.0.1 (a free port) and serve until dropped.
    pub async fn start(config: FakeConfig, script: Script) -> std::io::Result<FakeServer> {
        FakeServer::start_on(0, config, script).await
    }

    /// Listen on 127.0.0.1:`port` (0: a free port) and serve until dropped.
    pub async fn start_on(
        port: u16,
        config: FakeConfig,
        script: Script,
    ) -> std::io::Result<FakeServer> {
        let shared = Arc::new(Shared {
            config,
            script: Mutex::new(script),
            requests: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("fake LLM server: {e}");
            }
        });
        Ok(FakeServer { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Chat-completion requests received so far.
    pub fn requests(&self) -> Vec<FakeRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Replace the script (e.g. between phases of a test).
    pub fn set_script(&self, script: Script) {
        *self.shared.script.lock().unwrap_or_else(|e| e.into_inner()) = script;
    }
}

fn error_body(status: StatusCode, message: &str, code: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}).to_string(),
    )
        .into_response()
}

async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = check_key(&shared, &headers) {
        return r;
    }
    let data: Vec<Value> = shared
        .config
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "dsbox-fake"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

fn check_key(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let key = shared.config.api_key.as_ref()?;
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if sent == Some(format!("Bearer {key}").as_str()) {
        None
    } else {
        Some(error_body(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_api_key",
        ))
    }
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = check_key(&shared, &headers) {
        return r;
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error_body(
                StatusCode::BAD_REQUEST,
                &format!("invalid JSON: {e}"),
                "invalid_json",
            );
        }
    };
    let model = body.get("model").and_then(Value::as_str).unwrap_or("");
    if !shared.config.models.iter().any(|m| m == model) {
        return error_body(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist."),
            "model_not_found",
        );
    }
    let request = {
        let mut requests = shared.requests.lock().unwrap_or_else(|e| e.into_inner());
        let r = FakeRequest {
            index: requests.len(),
            body,
            authorization: headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        requests.push(r.clone());
        r
    };
    let reply = {
        let mut script = shared.script.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *script {
            Script::Queue { replies, then } => replies.pop_front().unwrap_or_else(|| then.clone()),
            Script::Handler(f) => {
                let f = f.clone();
                drop(script);
                f(&request)
            }
        }
    };
    respond(&request, reply).await
}

fn respond(
    request: &FakeRequest,
    reply: FakeReply,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + '_>> {
    Box::pin(async move {
        match reply {
            FakeReply::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                respond(request, *inner).await
            }
            FakeReply::Status {
                status,
                retry_after,
                message,
            } => {
                let code =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut r = error_body(code, &message, "fake_error");
                if let Some(v) = retry_after
                    && let Ok(v) = v.parse()
                {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            }
            FakeReply::CloseMidResponse => {
                let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                    Ok(Bytes::from_static(
                        b"{\"id\": \"chatcmpl-fake\", \"choices\": [",
                    )),
                    Err(std::io::Error::other(
                        "fake server: connection closed mid-response",
                    )),
                ];
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::CONTENT_LENGTH, "4096")
                    .body(Body::from_stream(futures_util::stream::iter(chunks)))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
            }
            FakeReply::Text(text) => {
                let stops = request.stop();
                let cut = stops
                    .iter()
                    .filter_map(|s| text.find(s.as_str()))
                    .min()
                    .unwrap_or(text.len());
                completion(request, Some(text[..cut].to_owned()), Vec::new(), "stop")
            }
            FakeReply::Raw {
                content,
                finish_reason,
            } => completion(request, Some(content), Vec::new(), &finish_reason),
            FakeReply::ToolCalls(calls) => completion(request, None, calls, "tool_calls"),
        }
    })
}

fn completion(
    request: &FakeRequest,
    content: Option<String>,
    calls: Vec<(String, String)>,
    finish_reason: &str,
) -> Response {
    let prompt_tokens: u64 = request
        .messages()
        .iter()
        .map(|m| estimate_tokens(&FakeRequest::content_of(m)))
        .sum();
    let completion_tokens = content.as_deref().map_or(0, estimate_tokens)
        + calls.iter().map(|(_, a)| estimate_tokens(a)).sum::<u64>();
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = calls
            .iter()
            .enumerate()
            .map(|(i, (name, args))| {
                json!({"id": format!("call_{}_{i}", request.index), "type": "function",
                       "function": {"name": name, "arguments": args}})
            })
            .collect();
    }
    axum::Json(json!({
        "id": format!("chatcmpl-fake-{}", request.index),
        "object": "chat.completion",
        "created": 0,
        "model": request.model(),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response()
}
