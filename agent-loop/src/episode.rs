//! One episode: a model, a scaffold and a sandbox solving one task once, recorded as a
//! [`Trajectory`] with DSGym's fields (prediction, ground_truth, query, turns,
//! conversation, extra_info) plus dsbox's (model, timings, tokens, cells, images).
//!
//! The sandbox starts while the first model request is in flight, and it is always
//! released: closed at the end, and destroyed by its `Drop` if the episode is cancelled
//! (wall budget, Ctrl-C).

use std::time::{Duration, Instant};

use dsbox_kernel::{CellStatus, LostReason, Truncation};
use dsbox_tasks::{RenderedPrompt, Task};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{ChatRequest, Completion, ImageRef, Message, Model, ModelError, Usage};
use crate::protocol::{self, DEFAULT_MAX_TURNS, DEFAULT_OBSERVATION_CAP};
use crate::sandbox::{CodeSandbox, SandboxError, SandboxFactory, SandboxRequest};
use crate::scaffold::{Scaffold, Step};

/// Settings of every episode of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeSettings {
    pub max_turns: u32,
    /// Per cell.
    #[serde(with = "secs")]
    pub cell_timeout: Duration,
    /// Whole episode (model calls, cells, sandbox start).
    #[serde(with = "opt_secs")]
    pub episode_budget: Option<Duration>,
    /// Send figures to the model as image parts.
    pub multimodal: bool,
    /// Observations longer than this (characters) keep head and tail.
    pub observation_cap: usize,
    /// Largest submission file kept (prediction tasks).
    pub max_submission_bytes: u64,
}

impl Default for EpisodeSettings {
    fn default() -> Self {
        EpisodeSettings {
            max_turns: DEFAULT_MAX_TURNS,
            cell_timeout: Duration::from_secs(180),
            episode_budget: Some(Duration::from_secs(30 * 60)),
            multimodal: false,
            observation_cap: DEFAULT_OBSERVATION_CAP,
            max_submission_bytes: 256 << 20,
        }
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|v| Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// How an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The model gave an answer.
    Answered,
    /// The turn limit came first (no answer).
    MaxTurns,
    /// A model request failed (after retries).
    ModelError,
    /// The sandbox could not be started or was lost for good.
    SandboxError,
    /// The episode's wall budget ran out.
    EpisodeTimeout,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Answered => "answered",
            EndReason::MaxTurns => "max_turns",
            EndReason::ModelError => "model_error",
            EndReason::SandboxError => "sandbox_error",
            EndReason::EpisodeTimeout => "episode_timeout",
        }
    }

    /// Infrastructure failures (the episode says nothing about the model's skill);
    /// `--retry-errors` redoes them on resume.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            EndReason::ModelError | EndReason::SandboxError | EndReason::EpisodeTimeout
        )
    }
}

/// One executed cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellRecord {
    /// The turn whose reply asked for it (1-based).
    pub turn: u32,
    /// ok, error, timed_out, interrupted, kernel_lost, not_run.
    pub status: String,
    pub duration_ms: f64,
    /// Characters the observation cap removed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chars_cut: usize,
    /// What the kernel's output caps removed.
    #[serde(default, skip_serializing_if = "is_default")]
    pub truncation: Truncation,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_default(t: &Truncation) -> bool {
    !t.any()
}

/// Where time went, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EpisodeTimings {
    pub wall_s: f64,
    pub model_s: f64,
    pub exec_s: f64,
    pub sandbox_start_s: f64,
}

/// A metric's verdict on one trajectory (DSGym's `{score, details, success, error}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricOutcome {
    pub score: Option<f64>,
    #[serde(default)]
    pub details: serde_json::Map<String, Value>,
    pub success: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// DSPredict: where the submission lands on the offline boards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaderboard: Option<dsbox_tasks::LeaderboardResult>,
}

/// One episode, as written to `trajectories/<suite>/prediction_<index>_traj_<j>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    pub prediction: Option<String>,
    pub ground_truth: Option<String>,
    pub query: String,
    pub turns: u32,
    pub conversation: Vec<Message>,
    pub extra_info: Value,
    pub task_id: String,
    pub suite: String,
    pub index: usize,
    pub trajectory: u32,
    pub model: String,
    pub scaffold: String,
    pub end_reason: EndReason,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_kind: Option<String>,
    pub tokens: Usage,
    pub timings: EpisodeTimings,
    pub cells: Vec<CellRecord>,
    /// Figures the cells produced (files relative to the run directory).
    #[serde(default)]
    pub images: Vec<String>,
    /// The submission file kept from /submission (relative to the run directory).
    #[serde(default)]
    pub submission: Option<String>,
    /// The task metric's verdict by metric name (DSGym's `metrics`), set once scored.
    #[serde(default)]
    pub metrics: std::collections::BTreeMap<String, MetricOutcome>,
    /// The primary metric's score (None: not scored or not evaluable).
    #[serde(default)]
    pub score: Option<f64>,
}

/// Where an episode's figures and submission files go.
pub trait ArtifactSink: Send + Sync {
    /// Save figure `n` of a trajectory; returns its path relative to the run directory.
    fn save_image(
        &self,
        task: &Task,
        trajectory: u32,
        n: usize,
        mime: &str,
        data: &[u8],
    ) -> Option<String>;
    /// Save a trajectory's submission file; returns its path relative to the run dir.
    fn save_submission(&self, task: &Task, trajectory: u32, data: &[u8]) -> Option<String>;
}

/// Keeps nothing.
#[derive(Debug, Default)]
pub struct DiscardArtifacts;

impl ArtifactSink for DiscardArtifacts {
    fn save_image(&self, _: &Task, _: u32, _: usize, _: &str, _: &[u8]) -> Option<String> {
        None
    }

    fn save_submission(&self, _: &Task, _: u32, _: &[u8]) -> Option<String> {
        None
    }
}

/// What an episode needs besides the task.
pub struct EpisodeContext<'a> {
    pub model: &'a dyn Model,
    pub factory: &'a dyn SandboxFactory,
    pub scaffold: &'a dyn Scaffold,
    pub settings: &'a EpisodeSettings,
    pub artifacts: &'a dyn ArtifactSink,
}

/// An episode's result: the trajectory, and the model error that stopped it when that
/// error means the whole run should stop ([`ModelError::is_fatal`]).
#[derive(Debug)]
pub struct EpisodeOutcome {
    pub trajectory: Trajectory,
    pub fatal: Option<ModelError>,
}

/// Mutable state, kept outside the driving future so a cancelled episode still has
/// its conversation.
struct State {
    messages: Vec<Message>,
    turns: u32,
    answer: Option<String>,
    end: Option<(EndReason, Option<String>, Option<String>)>,
    fatal: Option<ModelError>,
    tokens: Usage,
    model_time: Duration,
    exec_time: Duration,
    sandbox_start: Duration,
    cells: Vec<CellRecord>,
    images: Vec<String>,
    image_count: usize,
    trajectory: u32,
    sandbox: Option<Box<dyn CodeSandbox>>,
}

impl State {
    fn end(&mut self, reason: EndReason, error: Option<String>, kind: Option<&str>) {
        if self.end.is_none() {
            self.end = Some((reason, error, kind.map(str::to_owned)));
        }
    }

    fn model_failed(&mut self, e: ModelError) {
        self.end(EndReason::ModelError, Some(e.to_string()), Some(e.kind()));
        if e.is_fatal() {
            self.fatal = Some(e);
        }
    }
}

fn status_name(status: &CellStatus) -> &'static str {
    match status {
        CellStatus::Ok => "ok",
        CellStatus::Error => "error",
        CellStatus::Interrupted => "interrupted",
        CellStatus::TimedOut => "timed_out",
        CellStatus::KernelLost(LostReason::Unresponsive) => "timed_out_lost",
        CellStatus::KernelLost(_) => "kernel_lost",
    }
}

/// Run one episode of `task` (trajectory `trajectory`, task position `index` in its
/// suite's selection).
pub async fn run_episode(
    ctx: &EpisodeContext<'_>,
    task: &Task,
    prompt: &RenderedPrompt,
    index: usize,
    trajectory: u32,
) -> EpisodeOutcome {
    let started = Instant::now();
    let mut st = State {
        messages: ctx.scaffold.initial_messages(prompt),
        turns: 0,
        answer: None,
        end: None,
        fatal: None,
        tokens: Usage::default(),
        model_time: Duration::ZERO,
        exec_time: Duration::ZERO,
        sandbox_start: Duration::ZERO,
        cells: Vec::new(),
        images: Vec::new(),
        image_count: 0,
        trajectory,
        sandbox: None,
    };
    let request = SandboxRequest::for_task(task, trajectory);
    if !request.missing.is_empty() {
        tracing::warn!(task = %task.id, missing = ?request.missing, "data files missing on the host are not mounted");
    }
    let drive = drive(ctx, &mut st, task, &request);
    let timed_out = match ctx.settings.episode_budget {
        Some(budget) => tokio::time::timeout(budget, drive).await.is_err(),
        None => {
            drive.await;
            false
        }
    };
    if timed_out {
        let budget = ctx.settings.episode_budget.unwrap_or_default();
        st.end(
            EndReason::EpisodeTimeout,
            Some(format!(
                "the episode ran out of its wall budget of {}",
                humantime::format_duration(budget)
            )),
            Some("episode-timeout"),
        );
    }
    // The submission is read before the sandbox goes away.
    let mut submission = None;
    if let (Some(path), Some(sandbox)) = (&task.submission, st.sandbox.as_mut()) {
        match sandbox
            .download(path, ctx.settings.max_submission_bytes)
            .await
        {
            Ok(data) => submission = ctx.artifacts.save_submission(task, trajectory, &data),
            Err(e) => tracing::info!(task = %task.id, "no submission: {e}"),
        }
    }
    if let Some(sandbox) = st.sandbox.take()
        && let Err(e) = sandbox.close().await
    {
        tracing::warn!(task = %task.id, "closing the sandbox: {e}");
    }
    let (end_reason, error, error_kind) =
        st.end.take().unwrap_or((EndReason::MaxTurns, None, None));
    let extra_info = json!({
        "task_id": task.id,
        "suite": task.suite,
        "index": index,
        "trajectory": trajectory,
        "metric": task.metric,
        "track": task.track,
        "data": task.data.iter().map(|d| &d.path).collect::<Vec<_>>(),
        "missing_data": request.missing,
        "metadata": task.metadata,
    });
    EpisodeOutcome {
        trajectory: Trajectory {
            prediction: st.answer,
            ground_truth: task.answer_text(),
            query: task.question.clone(),
            turns: st.turns,
            conversation: st.messages,
            extra_info,
            task_id: task.id.clone(),
            suite: task.suite.clone(),
            index,
            trajectory,
            model: ctx.model.name().to_owned(),
            scaffold: ctx.scaffold.kind().as_str().to_owned(),
            end_reason,
            error,
            error_kind,
            tokens: st.tokens,
            timings: EpisodeTimings {
                wall_s: started.elapsed().as_secs_f64(),
                model_s: st.model_time.as_secs_f64(),
                exec_s: st.exec_time.as_secs_f64(),
                sandbox_start_s: st.sandbox_start.as_secs_f64(),
            },
            cells: st.cells,
            images: st.images,
            submission,
            metrics: Default::default(),
            score: None,
        },
        fatal: st.fatal,
    }
}

async fn call_model(model: &dyn Model, request: ChatRequest) -> Result<Completion, ModelError> {
    model.complete(&request).await
}

/// The episode's loop. Everything it learns is in `st`, so cancelling it loses nothing.
async fn drive(ctx: &EpisodeContext<'_>, st: &mut State, task: &Task, request: &SandboxRequest) {
    let settings = ctx.settings;
    // The sandbox starts while the first request is in flight.
    let first_request = ctx.scaffold.request(&st.messages, settings.multimodal);
    let sandbox_started = Instant::now();
    let (sandbox, first) = tokio::join!(
        async {
            let r = ctx.factory.create(request).await;
            (r, sandbox_started.elapsed())
        },
        call_model(ctx.model, first_request)
    );
    let (sandbox, start_time) = sandbox;
    st.sandbox_start = start_time;
    match sandbox {
        Ok(s) => st.sandbox = Some(s),
        Err(e) => {
            st.end(
                EndReason::SandboxError,
                Some(e.to_string()),
                Some("sandbox"),
            );
            return;
        }
    }
    let mut next = Some(first);
    loop {
        let reply = match next.take() {
            Some(r) => r,
            None => {
                let req = ctx.scaffold.request(&st.messages, settings.multimodal);
                call_model(ctx.model, req).await
            }
        };
        let completion = match reply {
            Ok(c) => c,
            Err(e) => {
                st.model_failed(e);
                return;
            }
        };
        st.turns += 1;
        st.tokens.add(&completion.usage);
        st.model_time += completion.latency;
        let interpreted = ctx.scaffold.interpret(&completion);
        st.messages.push(interpreted.assistant);
        if let Some(answer) = interpreted.answer {
            st.answer = Some(answer);
            st.end(EndReason::Answered, None, None);
            return;
        }
        if st.turns >= settings.max_turns {
            st.end(
                EndReason::MaxTurns,
                Some(format!("no answer within {} turns", settings.max_turns)),
                Some("no-answer"),
            );
            return;
        }
        if interpreted.steps.is_empty() {
            st.messages.push(ctx.scaffold.no_action());
            continue;
        }
        for step in interpreted.steps {
            match step {
                Step::Invalid { call_id, message } => {
                    st.messages
                        .push(ctx.scaffold.execution_error(Some(&call_id), &message));
                }
                Step::Execute { code, call_id } => {
                    if !execute(ctx, st, task, &code, call_id.as_deref()).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Run one cell and add its observation. `false` when the sandbox is gone for good.
async fn execute(
    ctx: &EpisodeContext<'_>,
    st: &mut State,
    task: &Task,
    code: &str,
    call_id: Option<&str>,
) -> bool {
    let settings = ctx.settings;
    let Some(sandbox) = st.sandbox.as_mut() else {
        st.end(
            EndReason::SandboxError,
            Some("no sandbox".into()),
            Some("sandbox"),
        );
        return false;
    };
    let started = Instant::now();
    let result = sandbox.execute(code, settings.cell_timeout).await;
    let elapsed = started.elapsed();
    st.exec_time += elapsed;
    match result {
        Ok(cell) => {
            let cleaned =
                protocol::clean_output(&cell.items, &cell.truncation, settings.observation_cap);
            let mut images = Vec::new();
            for img in cleaned.images {
                st.image_count += 1;
                let bytes = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    img.base64.as_bytes(),
                )
                .unwrap_or_default();
                let file = ctx.artifacts.save_image(
                    task,
                    st.trajectory,
                    st.image_count,
                    &img.mime,
                    &bytes,
                );
                if let Some(f) = &file {
                    st.images.push(f.clone());
                }
                images.push(ImageRef {
                    mime: img.mime,
                    file,
                    base64: settings.multimodal.then(|| img.base64.into()),
                });
            }
            st.cells.push(CellRecord {
                turn: st.turns,
                status: status_name(&cell.status).into(),
                duration_ms: elapsed.as_secs_f64() * 1e3,
                chars_cut: cleaned.chars_cut,
                truncation: cell.truncation,
            });
            st.messages
                .push(ctx.scaffold.observation(call_id, &cleaned.text, images));
            true
        }
        Err(e) => {
            st.cells.push(CellRecord {
                turn: st.turns,
                status: "not_run".into(),
                duration_ms: elapsed.as_secs_f64() * 1e3,
                chars_cut: 0,
                truncation: Truncation::default(),
            });
            st.messages
                .push(ctx.scaffold.execution_error(call_id, &e.to_string()));
            if matches!(e, SandboxError::Gone { .. }) {
                st.end(
                    EndReason::SandboxError,
                    Some(e.to_string()),
                    Some("sandbox"),
                );
                return false;
            }
            true
        }
    }
}
