//! One line of `results.jsonl`: a finished, scored trajectory. The fields DSGym's results
//! carry (sample_id, dataset, query, ground_truth, prediction, metrics {name: {score,
//! details, success, error}}, execution_time, total_turns, success) come first; dsbox adds
//! the trajectory number, how the episode ended, tokens, timings and file references.

use std::collections::BTreeMap;
use std::path::Path;

use dsbox_tasks::scoring::{score_task, score_task_with_judge};
use dsbox_tasks::{Judge, Metric, Task};
use serde::{Deserialize, Serialize};

use crate::episode::{EndReason, EpisodeTimings, MetricOutcome, Trajectory};
use crate::model::Usage;

/// A finished trajectory's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    pub sample_id: String,
    pub dataset: String,
    pub query: String,
    pub ground_truth: Option<String>,
    pub prediction: Option<String>,
    pub metrics: BTreeMap<String, MetricOutcome>,
    /// Seconds, wall clock.
    pub execution_time: f64,
    pub total_turns: u32,
    /// The episode produced an answer and the metric scored it.
    pub success: bool,
    /// Position of the task in its suite's selection.
    pub index: usize,
    pub trajectory: u32,
    /// The primary metric's score (None: not evaluable).
    pub score: Option<f64>,
    pub end_reason: EndReason,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_kind: Option<String>,
    pub tokens: Usage,
    pub timings: EpisodeTimings,
    pub cells: usize,
    pub cell_timeouts: usize,
    /// The trajectory file, relative to the run directory.
    pub trajectory_file: String,
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub submission: Option<String>,
    pub model: String,
    pub finished_at: String,
}

impl ResultRecord {
    /// The primary metric's outcome.
    pub fn primary(&self) -> Option<&MetricOutcome> {
        self.metrics.values().next()
    }

    /// The score with not evaluable counted as 0 (the reference's mean over all samples).
    pub fn score_or_zero(&self) -> f64 {
        self.score.unwrap_or(0.0)
    }

    /// Identifies the trajectory within a run.
    pub fn key(&self) -> (String, u32) {
        (self.sample_id.clone(), self.trajectory)
    }

    pub fn from_trajectory(t: &Trajectory, trajectory_file: String) -> ResultRecord {
        let metrics = if t.metrics.is_empty() {
            BTreeMap::from([(
                "none".to_owned(),
                MetricOutcome {
                    score: None,
                    details: Default::default(),
                    success: false,
                    error: Some("not scored".into()),
                    error_kind: Some("error".into()),
                    leaderboard: None,
                },
            )])
        } else {
            t.metrics.clone()
        };
        let scored = metrics.values().next().is_some_and(|o| o.success);
        let cell_timeouts = t
            .cells
            .iter()
            .filter(|c| c.status.starts_with("timed_out"))
            .count();
        ResultRecord {
            sample_id: t.task_id.clone(),
            dataset: t.suite.clone(),
            query: t.query.clone(),
            ground_truth: t.ground_truth.clone(),
            prediction: t.prediction.clone(),
            success: t.end_reason == EndReason::Answered && scored,
            score: metrics.values().next().and_then(|o| o.score),
            metrics,
            execution_time: t.timings.wall_s,
            total_turns: t.turns,
            index: t.index,
            trajectory: t.trajectory,
            end_reason: t.end_reason,
            error: t.error.clone(),
            error_kind: t.error_kind.clone(),
            tokens: t.tokens,
            timings: t.timings,
            cells: t.cells.len(),
            cell_timeouts,
            trajectory_file,
            images: t.images.clone(),
            submission: t.submission.clone(),
            model: t.model.clone(),
            finished_at: crate::rundir::now_rfc3339(),
        }
    }
}

/// Score a trajectory with its task's metric (LLM-judge metrics ask `judge`; without one
/// they are not evaluable). A DSPredict submission file is the prediction when present.
pub async fn score_trajectory(
    task: &Task,
    t: &Trajectory,
    judge: Option<&dyn Judge>,
    run_root: &Path,
) -> (String, MetricOutcome) {
    let name = Metric::for_task(task)
        .map(|m| m.name().to_owned())
        .unwrap_or_else(|_| task.metric.name.clone());
    let submission = t
        .submission
        .as_ref()
        .map(|s| run_root.join(s).display().to_string());
    let is_leaderboard = matches!(Metric::for_task(task), Ok(Metric::Leaderboard(_)));
    let prediction = match (is_leaderboard, submission) {
        (true, Some(path)) => Some(path),
        _ => t.prediction.clone(),
    };
    let row = match judge {
        Some(j) => score_task_with_judge(task, prediction.as_deref(), j).await,
        None => score_task(task, prediction.as_deref()),
    };
    (
        name,
        MetricOutcome {
            success: row.score.is_some(),
            score: row.score,
            details: row.details,
            error: row.error,
            error_kind: row.error_kind.map(str::to_owned),
            leaderboard: row.leaderboard,
        },
    )
}
