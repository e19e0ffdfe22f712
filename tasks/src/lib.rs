//! dsbox-tasks: the unified task record, loaders for the DSGym suites (and user suites
//! defined only by files), prompts, metrics with the reference's exact rules, leaderboard
//! scoring and aggregation. Independent of the sandbox runtime.
//!
//! Main types:
//! - [`Task`]: one task (question, context, data files with sandbox and host paths,
//!   answer, answer guideline, metric, metadata). JSON Schema: `tasks/schema/task.schema.json`.
//! - [`SuiteRegistry`] / [`SuiteDef`] / [`LoadedSuite`]: built-in suites (`starter` and
//!   the DSGym ones) plus user suites from TOML entries; loading collects per-task
//!   [`Problem`]s instead of failing, and [`LoadedSuite::validate`] adds data/answer/metric
//!   checks.
//! - [`Metric`]: a metric by name + parameters; [`Metric::score`] for synchronous metrics,
//!   [`Metric::score_with_judge`] with a [`Judge`] for LLM-judge metrics.
//! - [`Prompts`]: system + user prompt per task from minijinja templates, overridable.
//! - [`Predictions`], [`score_suite`], [`Aggregate`]: scoring a suite.
//! - [`leaderboard`]: rank, medal, percentile and above-median on offline boards.
//!
//! ```no_run
//! use dsbox_tasks::{DataRoot, Metric, SuiteRegistry};
//! let registry = SuiteRegistry::builtin(DataRoot::resolve(None))?;
//! let suite = registry.load("starter")?;
//! let task = &suite.tasks[0];
//! let score = Metric::for_task(task)?.score("123.45", task)?;
//! println!("{} scored {}", task.id, score.value);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod error;
pub mod leaderboard;
pub mod metric;
pub mod paths;
pub mod prompt;
pub mod pyliteral;
pub mod scoring;
pub mod starter;
pub mod suite;
pub mod task;

pub use error::{Result, TasksError};
pub use leaderboard::{LeaderboardResult, Medal, Placement};
pub use metric::{Judge, JudgeError, JudgeRequest, KaggleMetric, Metric, MetricError, Score};
pub use paths::DataRoot;
pub use prompt::{Prompts, RenderedPrompt};
pub use scoring::{
    Aggregate, PredictionRecord, Predictions, Scope, SuiteScore, TaskScore, score_suite,
    score_suite_with_judge,
};
pub use suite::{
    LoadedSuite, Problem, ProblemKind, PromptSpec, SuiteDef, SuiteFormat, SuiteRegistry,
};
pub use task::{DataFile, DataKind, MetricSpec, Task, Track};
