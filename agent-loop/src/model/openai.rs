//! An OpenAI-compatible chat-completions client (vLLM, SGLang, llama.cpp server, Ollama,
//! OpenAI, Together, ...: only the base URL and the model name change).
//!
//! Retries with exponential back-off and jitter on 429, 5xx and connection errors, and
//! honours `Retry-After` (seconds or an HTTP date) and `retry-after-ms`. A semaphore caps
//! the requests in flight. Timeouts are not retried: a request that took the whole
//! timeout would likely take it again, and the episode's wall budget is better spent on
//! the next turn. 401/403 and 404 are reported at once with what to fix.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use dsbox_tasks::{Judge, JudgeError, JudgeRequest};
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::{
    BoxFuture, ChatRequest, Completion, Message, Model, ModelError, Role, ToolCall, Usage,
    restore_stop_tag,
};

/// Settings of an [`OpenAiModel`].
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// e.g. `http://localhost:8000/v1` (the path up to `/chat/completions`).
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// The variable the key came from (named in errors).
    pub api_key_env: String,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Whole request, body included.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries after the first attempt (429, 5xx, connection errors).
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The longest `Retry-After` honoured; longer values are cut to this.
    pub max_retry_after: Duration,
    /// Requests in flight at once.
    pub max_concurrent: usize,
}

impl OpenAiConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> OpenAiConfig {
        OpenAiConfig {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            model: model.into(),
            api_key: None,
            api_key_env: "OPENAI_API_KEY".into(),
            temperature: None,
            top_p: None,
            max_tokens: None,
            request_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            max_retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
            max_concurrent: 64,
        }
    }

    /// Read the API key from `var` (absent or empty: no key is sent).
    pub fn with_key_from_env(mut self, var: &str) -> OpenAiConfig {
        self.api_key_env = var.to_owned();
        self.api_key = std::env::var(var).ok().filter(|k| !k.trim().is_empty());
        self
    }
}

/// Totals over all requests of one client.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

/// What one client has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    pub requests: u64,
    pub retries: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A model behind an OpenAI-compatible HTTP API.
#[derive(Debug, Clone)]
pub struct OpenAiModel {
    config: Arc<OpenAiConfig>,
    http: reqwest::Client,
    permits: Arc<Semaphore>,
    counters: Arc<Counters>,
}

/// What one HTTP attempt gave.
enum Attempt {
    Reply(StatusCode, HeaderMap, Vec<u8>),
    Failed(reqwest::Error),
}

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<UsageJson>,
}

#[derive(Deserialize)]
struct Choice {
    message: ResponseMessage,
    #[serde(default)]
    finish_reason: Option<String>,
    /// vLLM: the stop string (or token id) that ended the completion.
    #[serde(default)]
    stop_reason: Option<Value>,
}

#[derive(Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ResponseToolCall>>,
}

#[derive(Deserialize)]
struct ResponseToolCall {
    #[serde(default)]
    id: String,
    function: ResponseFunction,
}

#[derive(Deserialize)]
struct ResponseFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
struct UsageJson {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

impl OpenAiModel {
    pub fn new(config: OpenAiConfig) -> Result<OpenAiModel, ModelError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("dsbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ModelError::BadResponse {
                base_url: config.base_url.clone(),
                detail: format!("cannot build the HTTP client: {e}"),
            })?;
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        Ok(OpenAiModel {
            config: Arc::new(config),
            http,
            permits,
            counters: Arc::new(Counters::default()),
        })
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// Requests, retries and tokens so far.
    pub fn stats(&self) -> ClientStats {
        let c = &self.counters;
        ClientStats {
            requests: c.requests.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            prompt_tokens: c.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: c.completion_tokens.load(Ordering::Relaxed),
        }
    }

    /// Check, before a run starts, that the server answers, accepts the key and knows
    /// the model: one completion of at most one token. Connection errors are not retried,
    /// so a wrong `--base-url` fails at once.
    pub async fn preflight(&self) -> Result<(), ModelError> {
        let request = ChatRequest {
            messages: vec![Message::user("Reply with OK.")],
            max_tokens: Some(1),
            temperature: Some(0.0),
            ..ChatRequest::default()
        };
        self.send(&request, false).await.map(|_| ())
    }

    /// The model names the server lists at `GET /models` (None when it does not answer
    /// that in the OpenAI shape).
    pub async fn list_models(&self) -> Option<Vec<String>> {
        let mut req = self
            .http
            .get(format!("{}/models", self.config.base_url))
            .timeout(Duration::from_secs(10));
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body: Value = resp.json().await.ok()?;
        let names = body
            .get("data")?
            .as_array()?
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect();
        Some(names)
    }

    fn body(&self, request: &ChatRequest) -> Value {
        let cfg = &self.config;
        let mut messages = Vec::with_capacity(request.messages.len());
        for m in &request.messages {
            push_message_json(&mut messages, m, request.multimodal);
        }
        let mut body = json!({ "model": cfg.model, "messages": messages });
        let obj = body.as_object_mut().expect("json! object");
        if let Some(t) = request.temperature.or(cfg.temperature) {
            obj.insert("temperature".into(), json!(t));
        }
        if let Some(p) = cfg.top_p {
            obj.insert("top_p".into(), json!(p));
        }
        if let Some(n) = request.max_tokens.or(cfg.max_tokens) {
            obj.insert("max_tokens".into(), json!(n));
        }
        if !request.stop.is_empty() {
            obj.insert("stop".into(), json!(request.stop));
        }
        if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters}})
                })
                .collect();
            obj.insert("tools".into(), Value::Array(tools));
        }
        if request.json {
            obj.insert("response_format".into(), json!({"type": "json_object"}));
        }
        body
    }

    async fn attempt(&self, body: &Value) -> Attempt {
        let _permit = self.permits.acquire().await;
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let mut req = self
            .http
            .post(format!("{}/chat/completions", self.config.base_url))
            .timeout(self.config.request_timeout)
            .json(body);
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Failed(e),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        match resp.bytes().await {
            Ok(bytes) => Attempt::Reply(status, headers, bytes.to_vec()),
            Err(e) => Attempt::Failed(e),
        }
    }

    /// Send with retries. `retry_connect`: whether connection failures are retried.
    async fn send(
        &self,
        request: &ChatRequest,
        retry_connect: bool,
    ) -> Result<Completion, ModelError> {
        let cfg = &self.config;
        let base_url = || cfg.base_url.clone();
        let body = self.body(request);
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let last = attempts > cfg.max_retries;
            // What went wrong this time, and how long the server asked us to wait.
            let (error, retry_after) = match self.attempt(&body).await {
                Attempt::Reply(status, headers, bytes) => {
                    if status.is_success() {
                        return self.parse(request, &bytes, attempts, started.elapsed());
                    }
                    let text = error_text(&bytes);
                    match status.as_u16() {
                        401 | 403 => {
                            return Err(ModelError::Unauthorized {
                                base_url: base_url(),
                                status: status.as_u16(),
                                key_env: cfg.api_key_env.clone(),
                                key_set: cfg.api_key.is_some(),
                            });
                        }
                        404 => {
                            return Err(ModelError::UnknownModel {
                                base_url: base_url(),
                                model: cfg.model.clone(),
                                available: self.list_models().await,
                            });
                        }
                        429 | 500..=599 => (
                            ModelError::Status {
                                base_url: base_url(),
                                status: status.as_u16(),
                                body: text,
                                attempts,
                            },
                            retry_after(&headers),
                        ),
                        code => {
                            return Err(ModelError::Status {
                                base_url: base_url(),
                                status: code,
                                body: text,
                                attempts,
                            });
                        }
                    }
                }
                Attempt::Failed(e) if e.is_timeout() => {
                    return Err(ModelError::Timeout {
                        base_url: base_url(),
                        after: cfg.request_timeout,
                        attempts,
                    });
                }
                Attempt::Failed(e) if e.is_connect() => {
                    let err = ModelError::Unreachable {
                        base_url: base_url(),
                        detail: root_cause(&e),
                        attempts,
                    };
                    if !retry_connect {
                        return Err(err);
                    }
                    (err, None)
                }
                Attempt::Failed(e) => (
                    ModelError::Connection {
                        base_url: base_url(),
                        detail: root_cause(&e),
                        attempts,
                    },
                    None,
                ),
            };
            if last {
                return Err(error);
            }
            let delay = match retry_after {
                Some(d) => d.min(cfg.max_retry_after),
                None => backoff(cfg.backoff_base, cfg.backoff_max, attempts),
            };
            tracing::debug!(%error, ?delay, attempts, "retrying the model request");
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
        }
    }

    fn parse(
        &self,
        request: &ChatRequest,
        bytes: &[u8],
        attempts: u32,
        latency: Duration,
    ) -> Result<Completion, ModelError> {
        let bad = |detail: String| ModelError::BadResponse {
            base_url: self.config.base_url.clone(),
            detail,
        };
        let resp: ChatResponse = serde_json::from_slice(bytes).map_err(|e| {
            bad(format!(
                "{e} in {}",
                truncate(&String::from_utf8_lossy(bytes), 300)
            ))
        })?;
        let choice = resp
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| bad("the reply has no choices".into()))?;
        let finish_reason = choice.finish_reason.unwrap_or_default();
        let stop_reason = choice.stop_reason.as_ref().and_then(Value::as_str);
        let raw = choice.message.content.unwrap_or_default();
        let text = restore_stop_tag(&raw, &finish_reason, stop_reason, &request.stop);
        let tool_calls = choice
            .message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, c)| ToolCall {
                id: if c.id.is_empty() {
                    format!("call_{i}")
                } else {
                    c.id
                },
                name: c.function.name,
                arguments: c.function.arguments,
            })
            .collect();
        let usage = resp
            .usage
            .map(|u| Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: if u.total_tokens > 0 {
                    u.total_tokens
                } else {
                    u.prompt_tokens + u.completion_tokens
                },
            })
            .unwrap_or_default();
        self.counters
            .prompt_tokens
            .fetch_add(usage.prompt_tokens, Ordering::Relaxed);
        self.counters
            .completion_tokens
            .fetch_add(usage.completion_tokens, Ordering::Relaxed);
        Ok(Completion {
            text,
            tool_calls,
            finish_reason,
            usage,
            attempts,
            latency,
        })
    }
}

impl Model for OpenAiModel {
    fn name(&self) -> &str {
        &self.config.model
    }

    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        Box::pin(self.send(request, true))
    }
}

impl Judge for OpenAiModel {
    fn judge<'a>(&'a self, request: &'a JudgeRequest) -> BoxFuture<'a, Result<String, JudgeError>> {
        Box::pin(async move {
            let chat = judge_chat(request);
            self.complete(&chat)
                .await
                .map(|c| c.text)
                .map_err(|e| JudgeError(e.to_string()))
        })
    }
}

/// Any [`Model`] as a [`Judge`] (temperature 0).
#[derive(Debug, Clone)]
pub struct ModelJudge<M>(pub M);

impl<M: Model> Judge for ModelJudge<M> {
    fn judge<'a>(&'a self, request: &'a JudgeRequest) -> BoxFuture<'a, Result<String, JudgeError>> {
        Box::pin(async move {
            let chat = judge_chat(request);
            self.0
                .complete(&chat)
                .await
                .map(|c| c.text)
                .map_err(|e| JudgeError(e.to_string()))
        })
    }
}

fn judge_chat(request: &JudgeRequest) -> ChatRequest {
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        messages.push(Message::system(system.clone()));
    }
    messages.push(Message::user(request.user.clone()));
    ChatRequest {
        messages,
        temperature: Some(0.0),
        max_tokens: request.max_tokens,
        json: request.json,
        ..ChatRequest::default()
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn image_parts(m: &Message) -> Vec<Value> {
    m.images
        .iter()
        .filter_map(|img| {
            let data = img.base64.as_ref()?;
            Some(json!({"type": "image_url", "image_url": {"url": format!("data:{};base64,{data}", img.mime)}}))
        })
        .collect()
}

/// One message in the OpenAI shape. Images become image parts of a user message; a tool
/// message cannot carry images, so they follow it in a user message of their own.
fn push_message_json(out: &mut Vec<Value>, m: &Message, multimodal: bool) {
    let images = if multimodal {
        image_parts(m)
    } else {
        Vec::new()
    };
    match m.role {
        Role::Tool => {
            out.push(json!({"role": "tool", "tool_call_id": m.tool_call_id.clone().unwrap_or_default(), "content": m.content}));
            if !images.is_empty() {
                let mut parts =
                    vec![json!({"type": "text", "text": "Figures from the tool call above:"})];
                parts.extend(images);
                out.push(json!({"role": "user", "content": parts}));
            }
        }
        Role::Assistant if !m.tool_calls.is_empty() => {
            let calls: Vec<Value> = m
                .tool_calls
                .iter()
                .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                .collect();
            let content = if m.content.is_empty() {
                Value::Null
            } else {
                json!(m.content)
            };
            out.push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
        }
        role if !images.is_empty() => {
            let mut parts = vec![json!({"type": "text", "text": m.content})];
            parts.extend(images);
            out.push(json!({"role": role_name(role), "content": parts}));
        }
        role => out.push(json!({"role": role_name(role), "content": m.content})),
    }
}

/// The error message of an OpenAI-style error body, else the body itself (shortened).
fn error_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        let msg = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .and_then(Value::as_str);
        if let Some(m) = msg {
            return truncate(m, 500);
        }
    }
    let t = text.trim();
    if t.is_empty() {
        "(empty body)".into()
    } else {
        truncate(t, 500)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The innermost cause ("Connection refused (os error 111)"), which says more than
/// reqwest's "error sending request".
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Exponential back-off with "equal jitter": half the step fixed, half random, so
/// clients that failed together do not retry together.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let step = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    let half = step / 2;
    half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
}

/// `retry-after-ms`, else `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = get("retry-after")?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = parse_http_date(value)?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form RFC 9110 requires senders
/// to use. (No crate in the tree parses HTTP dates; this is the one form that matters.)
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + sec;
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            784_111_777
        );
        assert!(parse_http_date("yesterday").is_none());
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut past = HeaderMap::new();
        past.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&past), Some(Duration::ZERO));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 1..20 {
            let d = backoff(base, max, attempt);
            let step = (base * (1 << (attempt - 1).min(16))).min(max);
            assert!(d >= step / 2 && d <= step, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn images_go_in_user_parts_and_after_tool_messages() {
        let img = super::super::ImageRef {
            mime: "image/png".into(),
            file: None,
            base64: Some("AAAA".into()),
        };
        let mut user = Message::user("look");
        user.images.push(img.clone());
        let mut out = Vec::new();
        push_message_json(&mut out, &user, true);
        assert_eq!(
            out[0]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        let mut tool = Message::tool("c1", "done");
        tool.images.push(img);
        let mut out = Vec::new();
        push_message_json(&mut out, &tool, true);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["role"], "tool");
        assert_eq!(out[1]["role"], "user");
        // Without --multimodal images are not sent.
        let mut out = Vec::new();
        push_message_json(&mut out, &user, false);
        assert_eq!(out[0]["content"], "look");
    }
}
