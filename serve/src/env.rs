//! Environments for RL trainers: one task, one sandbox holding only that task's data, a
//! scaffold (the agent-loop crate's `react` tag protocol or `tools`), stepped one model
//! action at a time. The rules are exactly those of `dsbox eval`'s episodes: a reply with
//! `<answer>` ends the episode (nothing runs), the turn limit ends it, a reply with
//! neither code nor answer gets the scaffold's fixed message, code runs in the persistent
//! kernel and its cleaned output comes back as the observation. At the end the task's
//! metric gives the reward.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dsbox_agent::model::{Completion, Message, ToolCall};
use dsbox_agent::protocol;
use dsbox_agent::scaffold::{ScaffoldKind, Step};
use dsbox_tasks::{Metric, Task};
use serde::Serialize;
use serde_json::{Value, json};

use crate::app::{App, HasSlot, Slot, status_name};
use crate::error::{AppError, Result};

/// How an env plays.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvSettings {
    pub scaffold: ScaffoldKind,
    pub max_turns: u32,
    #[serde(serialize_with = "secs")]
    pub cell_timeout: Duration,
    /// Observations longer than this (characters) keep head and tail.
    pub observation_cap: usize,
    /// Return figures (base64) in `info.images`.
    pub images: bool,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Why an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Answered,
    MaxTurns,
    /// The sandbox was lost for good (its kernel could not be restarted).
    SandboxError,
}

#[derive(Debug, Default)]
struct EnvState {
    messages: Vec<Message>,
    turns: u32,
    done: bool,
    answer: Option<String>,
    end_reason: Option<EndReason>,
    reward: Option<f64>,
}

/// One environment.
pub struct EnvSession {
    pub id: String,
    pub task: Task,
    pub settings: EnvSettings,
    /// Sandbox paths the task names whose host file is missing (not mounted).
    pub missing_data: Vec<String>,
    slot: Arc<Slot>,
    state: tokio::sync::Mutex<EnvState>,
}

impl HasSlot for EnvSession {
    fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }
}

impl std::fmt::Debug for EnvSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvSession")
            .field("id", &self.id)
            .field("task", &self.task.id)
            .finish_non_exhaustive()
    }
}

/// What a step returns.
#[derive(Debug, Clone, Serialize)]
pub struct StepOutcome {
    /// Messages to append after the model's (cut) reply: the observation(s).
    pub observations: Vec<Message>,
    /// The metric's score at the end; 0.0 before; null when the metric cannot score
    /// here (an LLM-judge metric without a judge, an unscorable task).
    pub reward: Option<f64>,
    pub done: bool,
    pub info: Value,
}

/// The model's action: its text, or an assistant message with tool calls (`tools`).
#[derive(Debug, Clone, Default)]
pub struct Action {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
}

impl EnvSession {
    pub fn new(
        id: String,
        task: Task,
        settings: EnvSettings,
        missing_data: Vec<String>,
        slot: Arc<Slot>,
        messages: Vec<Message>,
    ) -> EnvSession {
        EnvSession {
            id,
            task,
            settings,
            missing_data,
            slot,
            state: tokio::sync::Mutex::new(EnvState {
                messages,
                ..EnvState::default()
            }),
        }
    }

    /// The conversation so far, turns taken, whether done, and the reward if done.
    pub async fn snapshot(&self) -> (Vec<Message>, u32, bool, Option<f64>, Option<String>) {
        let st = self.state.lock().await;
        (
            st.messages.clone(),
            st.turns,
            st.done,
            st.reward,
            st.answer.clone(),
        )
    }

    /// Take one action.
    pub async fn step(&self, app: &App, action: Action) -> Result<StepOutcome> {
        let mut st = self.state.lock().await;
        if st.done {
            return Err(AppError::Conflict(format!(
                "env {} is done ({}): delete it and create a new one",
                self.id,
                match st.end_reason {
                    Some(EndReason::Answered) => "answered",
                    Some(EndReason::MaxTurns) => "turn limit reached",
                    Some(EndReason::SandboxError) => "sandbox lost",
                    None => "ended",
                }
            )));
        }
        let started = Instant::now();
        let scaffold = self.settings.scaffold.build();
        st.turns += 1;
        let completion = Completion {
            text: action.text,
            tool_calls: action.tool_calls,
            finish_reason: "stop".into(),
            ..Completion::default()
        };
        let interpreted = scaffold.interpret(&completion);
        let assistant = serde_json::to_value(&interpreted.assistant).unwrap_or(Value::Null);
        st.messages.push(interpreted.assistant);
        let mut observations = Vec::new();
        let mut cells = Vec::new();
        let mut images = Vec::new();
        let mut end = None;
        if let Some(answer) = interpreted.answer {
            st.answer = Some(answer);
            end = Some(EndReason::Answered);
        } else if st.turns >= self.settings.max_turns {
            end = Some(EndReason::MaxTurns);
        } else if interpreted.steps.is_empty() {
            observations.push(scaffold.no_action());
        } else {
            for step in interpreted.steps {
                match step {
                    Step::Invalid { call_id, message } => {
                        observations.push(scaffold.execution_error(Some(&call_id), &message));
                    }
                    Step::Execute { code, call_id } => {
                        let t0 = Instant::now();
                        match self
                            .slot
                            .execute(&app.metrics, code, self.settings.cell_timeout, false)
                            .await
                        {
                            Ok(cell) => {
                                let cleaned = protocol::clean_output(
                                    &cell.items,
                                    &cell.truncation,
                                    self.settings.observation_cap,
                                );
                                cells.push(json!({
                                    "status": status_name(&cell.status),
                                    "duration_ms": t0.elapsed().as_secs_f64() * 1e3,
                                    "chars_cut": cleaned.chars_cut,
                                }));
                                if self.settings.images {
                                    images.extend(
                                        cleaned
                                            .images
                                            .iter()
                                            .map(|i| json!({"mime": i.mime, "base64": i.base64})),
                                    );
                                }
                                observations.push(scaffold.observation(
                                    call_id.as_deref(),
                                    &cleaned.text,
                                    Vec::new(),
                                ));
                            }
                            Err(e) => {
                                cells.push(json!({
                                    "status": "not_run",
                                    "duration_ms": t0.elapsed().as_secs_f64() * 1e3,
                                    "error": e.to_string(),
                                }));
                                observations.push(
                                    scaffold.execution_error(call_id.as_deref(), &e.to_string()),
                                );
                                // The sandbox is gone or no kernel can start in it: the
                                // episode cannot go on. (Code too large is the model's
                                // fault; the episode goes on.)
                                let fatal = match &e {
                                    AppError::Gone(_) => true,
                                    AppError::Sandbox(s) => !matches!(
                                        s,
                                        dsbox_kernel::SandboxError::Kernel(
                                            dsbox_kernel::KernelError::Protocol(_)
                                        )
                                    ),
                                    _ => false,
                                };
                                if fatal {
                                    end = Some(EndReason::SandboxError);
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        st.messages.extend(observations.iter().cloned());
        let mut info = serde_json::Map::new();
        info.insert("turn".into(), json!(st.turns));
        info.insert("max_turns".into(), json!(self.settings.max_turns));
        // The reply as the conversation keeps it (cut after the first action).
        info.insert("assistant".into(), assistant);
        if !cells.is_empty() {
            info.insert("cells".into(), Value::Array(cells));
        }
        if !images.is_empty() {
            info.insert("images".into(), Value::Array(images));
        }
        let mut reward = Some(0.0);
        if let Some(reason) = end {
            st.done = true;
            st.end_reason = Some(reason);
            info.insert("end_reason".into(), json!(reason));
            info.insert("answer".into(), json!(st.answer));
            let verdict = score(app, &self.task, st.answer.as_deref()).await;
            reward = verdict.reward;
            st.reward = verdict.reward;
            info.insert("metric".into(), json!(self.task.metric.name));
            if !verdict.details.is_empty() {
                info.insert("details".into(), Value::Object(verdict.details));
            }
            if let Some(note) = verdict.note {
                info.insert("note".into(), json!(note));
            }
            // The episode is over: free its sandbox now (the env stays until DELETE).
            self.slot.close(crate::app::CLOSE_GRACE).await;
        }
        info.insert(
            "step_ms".into(),
            json!(started.elapsed().as_secs_f64() * 1e3),
        );
        Ok(StepOutcome {
            observations,
            reward,
            done: st.done,
            info: Value::Object(info),
        })
    }
}

struct Verdict {
    reward: Option<f64>,
    details: serde_json::Map<String, Value>,
    note: Option<String>,
}

/// The reward of a finished episode.
async fn score(app: &App, task: &Task, answer: Option<&str>) -> Verdict {
    let needs_judge = Metric::for_task(task).is_ok_and(|m| m.needs_judge());
    let row = match (&app.config.judge, needs_judge, answer) {
        (Some(judge), true, _) => {
            dsbox_tasks::scoring::score_task_with_judge(task, answer, judge.as_ref()).await
        }
        (None, true, Some(_)) => {
            return Verdict {
                reward: None,
                details: serde_json::Map::new(),
                note: Some(format!(
                    "metric `{}` needs an LLM judge and this server has none: start dsbox serve with --judge-base-url URL --judge-model M to get rewards for this task",
                    task.metric.name
                )),
            };
        }
        _ => dsbox_tasks::scoring::score_task(task, answer),
    };
    let mut details = row.details;
    if row.missing {
        details.insert("missing_prediction".into(), json!(true));
    }
    let note = row.error.map(|e| match row.error_kind {
        Some(kind) => format!("the metric could not score this answer ({kind}): {e}"),
        None => format!("the metric could not score this answer: {e}"),
    });
    Verdict {
        reward: row.score,
        details,
        note,
    }
}

/// Build the env's first messages (system + user prompt) for `task` of `suite`.
pub fn first_messages(
    scaffold: ScaffoldKind,
    prompt: &dsbox_tasks::RenderedPrompt,
) -> Vec<Message> {
    scaffold.build().initial_messages(prompt)
}
