//! The environment API for RL trainers: create an env from a task id of the server's
//! suites (the built-in `starter` always; the DSGym suites with `--data-root`) or from a
//! whole task record, step it with the model's actions, read the reward at `done`.
//! Batch forms create and step many envs in one request (concurrently).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use dsbox_agent::model::{Message, ToolCall};
use dsbox_agent::protocol::{DEFAULT_MAX_TURNS, DEFAULT_OBSERVATION_CAP};
use dsbox_agent::sandbox::SandboxRequest;
use dsbox_agent::scaffold::ScaffoldKind;
use dsbox_kernel::AcquireOptions;
use dsbox_tasks::{Metric, Prompts, SuiteDef, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::AppState;
use crate::api::types::{MessageDoc, timeout_secs};
use crate::app::{Api, App, CLOSE_GRACE, HasSlot};
use crate::env::{Action, EnvSession, EnvSettings, first_messages};
use crate::error::{AppError, ErrorBody, Json, Path, Result};

/// Default cell timeout of env steps.
const ENV_CELL_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvRequest {
    /// A task id of this server's suites, e.g. `starter/top-region` or `qrdata/0`.
    #[schema(nullable = false)]
    pub task_id: Option<String>,
    /// Or a whole task record (dsbox's task schema: `question` is required; `data`
    /// paths are sandbox paths under /data, resolved in the server's data tree; `host`
    /// is not accepted).
    #[schema(value_type = Object, nullable = false)]
    pub task: Option<Value>,
    /// `react` (tags, default) or `tools` (OpenAI tool calls).
    #[schema(nullable = false)]
    pub scaffold: Option<String>,
    /// Turn limit (default 15).
    #[schema(nullable = false)]
    pub max_turns: Option<u32>,
    /// Seconds per cell (default 180).
    #[schema(nullable = false)]
    pub cell_timeout: Option<f64>,
    /// Observations longer than this (characters) keep head and tail (default 16000).
    #[schema(nullable = false)]
    pub observation_cap: Option<usize>,
    /// Return figures as base64 in `info.images`.
    #[serde(default)]
    pub images: bool,
    /// A template (container type) of this server; default: the first.
    #[schema(nullable = false)]
    pub template: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreateEnvResponse {
    pub env_id: String,
    pub task_id: String,
    /// The conversation's first messages: system and user prompt.
    #[schema(value_type = Vec<MessageDoc>)]
    pub messages: Vec<Message>,
    pub scaffold: String,
    pub max_turns: u32,
    /// The task's metric (the reward at `done`).
    pub metric: String,
    /// Data files the task names that the server does not have (not mounted).
    pub missing_data: Vec<String>,
}

/// A task record sent by a client: its data resolved in the server's data tree only.
fn task_from_record(app: &App, record: Value, n: u64) -> Result<Task> {
    let mut task: Task = serde_json::from_value(record)
        .map_err(|e| AppError::BadRequest(format!("`task` is not a valid task record: {e}")))?;
    if task.id.is_empty() {
        task.id = format!("custom/{n}");
    }
    if task.suite.is_empty() {
        task.suite = "custom".into();
    }
    for d in &mut task.data {
        if d.host.is_some() {
            return Err(AppError::BadRequest(format!(
                "task data `{}`: `host` is chosen by the server (from its data tree), not by clients",
                d.path
            )));
        }
        let rest = d
            .path
            .strip_prefix("/data/")
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                AppError::BadRequest(format!(
                    "task data `{}` must be a path under /data, e.g. /data/qrdata/data/x.csv",
                    d.path
                ))
            })?;
        match crate::api::sandbox::resolve_data(app, rest) {
            Ok(host) => d.host = Some(host),
            // Missing files are reported (missing_data) and not mounted, as in eval;
            // escapes and a server without data are errors.
            Err(AppError::BadRequest(m)) if m.contains("does not exist") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(task)
}

/// The suite entry whose prompt style a task gets: its own suite's when the server knows
/// it, else a plain analysis entry.
fn suite_def(app: &App, task: &Task) -> SuiteDef {
    if let Ok(def) = app.suites().get(&task.suite) {
        return def.clone();
    }
    SuiteDef {
        name: "custom".into(),
        description: String::new(),
        format: dsbox_tasks::SuiteFormat::Dsbox,
        files: Vec::new(),
        track: task.track,
        metric: None,
        data_dir: None,
        shared_data: Vec::new(),
        leaderboard: None,
        answers_dir: None,
        prompt: Default::default(),
        origin: Default::default(),
    }
}

async fn create_one(app: &Arc<App>, req: CreateEnvRequest) -> Result<CreateEnvResponse> {
    let (task, def) = match (req.task_id, req.task) {
        (Some(id), None) => {
            let (suite, task) = app.find_task(&id).await?;
            (task, suite.def.clone())
        }
        (None, Some(record)) => {
            let n = app.envs.len() as u64;
            let task = task_from_record(app, record, n)?;
            let def = suite_def(app, &task);
            (task, def)
        }
        (Some(_), Some(_)) => {
            return Err(AppError::BadRequest(
                "give either `task_id` or `task`, not both".into(),
            ));
        }
        (None, None) => {
            return Err(AppError::BadRequest(
                "give `task_id` (e.g. starter/top-region) or a whole `task` record".into(),
            ));
        }
    };
    Metric::for_task(&task)
        .map_err(|e| AppError::BadRequest(format!("task {} cannot be scored: {e}", task.id)))?;
    let scaffold: ScaffoldKind = match req.scaffold.as_deref() {
        None => ScaffoldKind::React,
        Some(s) => s.parse().map_err(AppError::BadRequest)?,
    };
    let max_turns = req.max_turns.unwrap_or(DEFAULT_MAX_TURNS);
    if max_turns == 0 || max_turns > app.config.max_turns_cap {
        return Err(AppError::BadRequest(format!(
            "`max_turns` must be between 1 and {}",
            app.config.max_turns_cap
        )));
    }
    let cell_timeout = timeout_secs(
        req.cell_timeout,
        ENV_CELL_TIMEOUT.min(app.config.exec_timeout),
        app.config.max_exec_timeout,
    )?;
    let observation_cap = req.observation_cap.unwrap_or(DEFAULT_OBSERVATION_CAP);
    if observation_cap < 100 {
        return Err(AppError::BadRequest(
            "`observation_cap` must be at least 100 characters".into(),
        ));
    }
    let prompt = Prompts::builtin()
        .render(&task, &def)
        .map_err(AppError::from)?;
    let messages = first_messages(scaffold, &prompt);
    // Only the task's own files (plus /submission for prediction tasks).
    let request = SandboxRequest::for_task(&task, 0);
    let options = AcquireOptions {
        data: request
            .data
            .iter()
            .map(|d| dsbox_kernel::DataMount::new(&d.host, &d.sandbox_path))
            .collect(),
        writable_submission: request.submission,
    };
    let template = app.template(req.template.as_deref())?;
    let (env_id, slot) = app
        .acquire(Api::Env, template, options)
        .await
        .map_err(|e| e.full_as(StatusCode::TOO_MANY_REQUESTS, app.config.retry_after_secs))?;
    let settings = EnvSettings {
        scaffold,
        max_turns,
        cell_timeout,
        observation_cap,
        images: req.images,
    };
    let response = CreateEnvResponse {
        env_id: env_id.clone(),
        task_id: task.id.clone(),
        messages: messages.clone(),
        scaffold: scaffold.as_str().into(),
        max_turns,
        metric: task.metric.name.clone(),
        missing_data: request.missing.clone(),
    };
    let session = EnvSession::new(
        env_id.clone(),
        task,
        settings,
        request.missing,
        slot,
        messages,
    );
    app.envs.insert(env_id, Arc::new(session));
    Ok(response)
}

/// Create an env: a sandbox with only the task's data, and the first messages.
#[utoipa::path(post, path = "/v1/envs", tag = "envs",
    request_body = CreateEnvRequest,
    responses(
        (status = 201, body = CreateEnvResponse),
        (status = 400, description = "bad request (unknown scaffold, bad record, ...)", body = ErrorBody),
        (status = 404, description = "unknown task id", body = ErrorBody),
        (status = 429, description = "the server is full (Retry-After set)", body = ErrorBody),
    ))]
pub async fn create_env(
    State(AppState(app)): State<AppState>,
    Json(req): Json<CreateEnvRequest>,
) -> Result<(StatusCode, Json<CreateEnvResponse>)> {
    Ok((StatusCode::CREATED, Json(create_one(&app, req).await?)))
}

/// One result of a batch: the value, or the error (with its HTTP status).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchItem<T> {
    Ok(T),
    Err {
        /// The HTTP status this item alone would have had.
        status: u16,
        #[serde(flatten)]
        error: ErrorBody,
    },
}

fn batch_item<T>(r: Result<T>) -> BatchItem<T> {
    match r {
        Ok(v) => BatchItem::Ok(v),
        Err(e) => {
            let message = e.to_string();
            BatchItem::Err {
                status: e.status().as_u16(),
                error: ErrorBody {
                    error: message.clone(),
                    detail: message,
                    kind: e.kind().into(),
                },
            }
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvsRequest {
    pub envs: Vec<CreateEnvRequest>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreateEnvsResponse {
    /// One per request, in order: a created env, or `{status, error, detail, kind}`.
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<BatchItem<CreateEnvResponse>>,
}

/// Create many envs at once (concurrently); each item succeeds or fails on its own.
#[utoipa::path(post, path = "/v1/envs/batch", tag = "envs",
    request_body = CreateEnvsRequest,
    responses((status = 200, body = CreateEnvsResponse)))]
pub async fn create_envs(
    State(AppState(app)): State<AppState>,
    Json(req): Json<CreateEnvsRequest>,
) -> Json<CreateEnvsResponse> {
    let results =
        futures_util::future::join_all(req.envs.into_iter().map(|r| create_one(&app, r))).await;
    Json(CreateEnvsResponse {
        results: results.into_iter().map(batch_item).collect(),
    })
}

/// A tool call as OpenAI sends it (`{id, type, function: {name, arguments}}`) or flat.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ToolCallIn {
    OpenAi {
        id: String,
        function: FunctionIn,
    },
    Flat {
        id: String,
        name: String,
        arguments: String,
    },
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct FunctionIn {
    pub name: String,
    pub arguments: String,
}

/// The model's reply: its text, or an assistant message with tool calls.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ActionIn {
    Text(String),
    Message {
        #[serde(default)]
        content: Option<String>,
        #[serde(default)]
        tool_calls: Vec<ToolCallIn>,
    },
}

impl From<ActionIn> for Action {
    fn from(a: ActionIn) -> Action {
        match a {
            ActionIn::Text(text) => Action {
                text,
                tool_calls: Vec::new(),
            },
            ActionIn::Message {
                content,
                tool_calls,
            } => Action {
                text: content.unwrap_or_default(),
                tool_calls: tool_calls
                    .into_iter()
                    .map(|c| match c {
                        ToolCallIn::OpenAi { id, function } => ToolCall {
                            id,
                            name: function.name,
                            arguments: function.arguments,
                        },
                        ToolCallIn::Flat {
                            id,
                            name,
                            arguments,
                        } => ToolCall {
                            id,
                            name,
                            arguments,
                        },
                    })
                    .collect(),
            },
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    pub action: ActionIn,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepResponse {
    /// Messages to append after the model's reply (the reply itself, cut after its first
    /// action as the scaffold does, is `info.assistant`).
    #[schema(value_type = Vec<MessageDoc>)]
    pub observations: Vec<Message>,
    /// 0 before `done`; at `done` the task metric's score (null: it cannot be scored
    /// here, `info.note` says why).
    pub reward: Option<f64>,
    pub done: bool,
    /// turn, max_turns, assistant, cells (status, duration), images (when asked for),
    /// and at `done`: end_reason, answer, metric, details, note.
    #[schema(value_type = Object)]
    pub info: Value,
}

fn env(app: &App, id: &str) -> Result<Arc<EnvSession>> {
    app.envs
        .get(&id.to_owned())
        .map_err(|reason| AppError::NotFound {
            what: "env",
            id: id.to_owned(),
            reason,
        })
}

async fn step_one(app: &Arc<App>, id: &str, action: ActionIn) -> Result<StepResponse> {
    let e = env(app, id)?;
    let out = e.step(app, action.into()).await?;
    Ok(StepResponse {
        observations: out.observations,
        reward: out.reward,
        done: out.done,
        info: out.info,
    })
}

/// Take one action.
#[utoipa::path(post, path = "/v1/envs/{id}/step", tag = "envs",
    params(("id" = String, Path)),
    request_body = StepRequest,
    responses(
        (status = 200, body = StepResponse),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the env is done", body = ErrorBody),
    ))]
pub async fn step_env(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<StepRequest>,
) -> Result<Json<StepResponse>> {
    Ok(Json(step_one(&app, &id, req.action).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchStep {
    pub env_id: String,
    pub action: ActionIn,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepEnvsRequest {
    pub steps: Vec<BatchStep>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepEnvsResponse {
    /// One per step, in order: a step result, or `{status, error, detail, kind}`.
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<BatchItem<StepResponse>>,
}

/// Step many envs at once (concurrently; steps of one env run in order).
#[utoipa::path(post, path = "/v1/envs/step", tag = "envs",
    request_body = StepEnvsRequest,
    responses((status = 200, body = StepEnvsResponse)))]
pub async fn step_envs(
    State(AppState(app)): State<AppState>,
    Json(req): Json<StepEnvsRequest>,
) -> Json<StepEnvsResponse> {
    let results = futures_util::future::join_all(req.steps.into_iter().map(|s| {
        let app = app.clone();
        async move { step_one(&app, &s.env_id, s.action).await }
    }))
    .await;
    Json(StepEnvsResponse {
        results: results.into_iter().map(batch_item).collect(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnvInfo {
    pub env_id: String,
    pub task_id: String,
    pub turns: u32,
    pub max_turns: u32,
    pub done: bool,
    pub reward: Option<f64>,
    pub answer: Option<String>,
    /// The whole conversation so far.
    #[schema(value_type = Vec<MessageDoc>)]
    pub messages: Vec<Message>,
}

/// An env's conversation and state.
#[utoipa::path(get, path = "/v1/envs/{id}", tag = "envs",
    params(("id" = String, Path)),
    responses((status = 200, body = EnvInfo), (status = 404, body = ErrorBody)))]
pub async fn get_env(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EnvInfo>> {
    let e = env(&app, &id)?;
    let (messages, turns, done, reward, answer) = e.snapshot().await;
    Ok(Json(EnvInfo {
        env_id: id,
        task_id: e.task.id.clone(),
        turns,
        max_turns: e.settings.max_turns,
        done,
        reward: if done { reward } else { Some(0.0) },
        answer,
        messages,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnvDeleted {
    pub env_id: String,
    /// `deleted`.
    pub status: String,
}

/// Delete an env (its sandbox is destroyed).
#[utoipa::path(delete, path = "/v1/envs/{id}", tag = "envs",
    params(("id" = String, Path)),
    responses((status = 200, body = EnvDeleted), (status = 404, body = ErrorBody)))]
pub async fn delete_env(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    let e = app
        .envs
        .remove(&id, "deleted")
        .ok_or_else(|| AppError::NotFound {
            what: "env",
            id: id.clone(),
            reason: app.envs.get(&id).err().flatten(),
        })?;
    e.slot().close(CLOSE_GRACE).await;
    Ok(Json(EnvDeleted {
        env_id: id,
        status: "deleted".into(),
    }))
}
