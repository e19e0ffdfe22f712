//! Scoring a suite: predictions in, per-task rows and an [`Aggregate`] out.
//!
//! Aggregation follows the reference: the mean is over ALL tasks, and a task without a
//! prediction scores 0. A task that cannot be scored (no ground truth, needs a judge, bad
//! submission, ...) is "not evaluable": it counts in `count` and contributes 0 to `mean`,
//! is left out of `mean_evaluable`, `min` and `max`, and is tallied by reason.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, TasksError};
use crate::leaderboard::{LeaderboardResult, Medal};
use crate::metric::{Judge, Metric, MetricError, Score};
use crate::suite::LoadedSuite;
use crate::task::Task;

/// One line of a predictions file: `{"id": "...", "prediction": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    pub id: String,
    /// A string (the agent's final answer), a number, or `null` (no answer).
    #[serde(default)]
    pub prediction: Value,
    /// DSPredict: a submission file to score locally (relative to the predictions file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission: Option<PathBuf>,
}

/// Predictions by task id, in file order.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    pub records: Vec<PredictionRecord>,
    index: HashMap<String, usize>,
}

impl Predictions {
    /// Read a JSONL predictions file. Any malformed line, missing `id` or repeated id is
    /// an error naming the file and line: half-read predictions would give wrong scores.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| TasksError::Io {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut preds = Predictions::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let err = |message: String| TasksError::Predictions {
                path: path.to_owned(),
                line: i + 1,
                message,
            };
            let mut rec: PredictionRecord = serde_json::from_str(line).map_err(|e| {
                err(format!(
                    "expected {{\"id\": \"...\", \"prediction\": ...}}: {}",
                    strip_position(&e)
                ))
            })?;
            if let Some(sub) = &rec.submission
                && sub.is_relative()
            {
                rec.submission = Some(base.join(sub));
            }
            let id = rec.id.clone();
            if !preds.push(rec) {
                return Err(err(format!("task id `{id}` appears twice")));
            }
        }
        Ok(preds)
    }

    /// Add a record; `false` if its id is already present.
    pub fn push(&mut self, rec: PredictionRecord) -> bool {
        if self.index.contains_key(&rec.id) {
            return false;
        }
        self.index.insert(rec.id.clone(), self.records.len());
        self.records.push(rec);
        true
    }

    pub fn get(&self, id: &str) -> Option<&PredictionRecord> {
        self.index.get(id).map(|&i| &self.records[i])
    }

    /// Ids that are not tasks of `suite`.
    pub fn unknown_ids<'a>(&'a self, suite: &LoadedSuite) -> Vec<&'a str> {
        self.records
            .iter()
            .map(|r| r.id.as_str())
            .filter(|id| suite.task(id).is_none())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

impl PredictionRecord {
    /// The prediction as text (`None` when absent): strings as they are, other JSON values
    /// in JSON form (a list `["a", "b"]` is also a valid Python literal). A submission
    /// file, when given, is the prediction.
    pub fn text(&self) -> Option<String> {
        if let Some(sub) = &self.submission {
            return Some(sub.display().to_string());
        }
        match &self.prediction {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// The outcome for one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskScore {
    pub id: String,
    /// `None` when the task is not evaluable.
    pub score: Option<f64>,
    /// True when there was no prediction (scored 0 if the task is evaluable).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
    /// Why the task is not evaluable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<&'static str>,
    /// Metric-specific facts (see [`Score::details`]).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
    /// DSPredict: the placement on the offline boards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaderboard: Option<LeaderboardResult>,
}

impl TaskScore {
    fn from_result(
        id: &str,
        missing: bool,
        result: std::result::Result<Score, MetricError>,
    ) -> Self {
        match result {
            Ok(s) => TaskScore {
                id: id.to_owned(),
                score: Some(s.value),
                missing,
                error: None,
                error_kind: None,
                details: s.details,
                leaderboard: s.leaderboard,
            },
            Err(e) => TaskScore {
                id: id.to_owned(),
                score: None,
                missing,
                error: Some(e.to_string()),
                error_kind: Some(e.kind()),
                details: Map::new(),
                leaderboard: None,
            },
        }
    }
}

/// Medal counts of leaderboard-scored tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MedalCounts {
    pub gold: usize,
    pub silver: usize,
    pub bronze: usize,
    pub none: usize,
    pub above_median: usize,
}

/// Summary of a set of task scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Aggregate {
    /// All tasks.
    pub count: usize,
    /// Tasks that produced a score.
    pub evaluable: usize,
    /// Sum of scores / count (not evaluable and missing count as 0).
    pub mean: f64,
    /// Sum of scores / evaluable.
    pub mean_evaluable: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Tasks scoring 1.
    pub solved: usize,
    /// Tasks without a prediction.
    pub missing: usize,
    /// evaluable / count: the share of tasks whose metric produced a score.
    pub success_rate: f64,
    /// Not-evaluable tasks by reason (`no-answer`, `needs-judge`, ...).
    pub errors: BTreeMap<String, usize>,
    /// DSPredict: medals and above-median counts (only when some task was placed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medals: Option<MedalCounts>,
}

impl Aggregate {
    pub fn new<'a>(rows: impl IntoIterator<Item = &'a TaskScore>) -> Self {
        let mut count = 0;
        let mut scores = Vec::new();
        let mut missing = 0;
        let mut errors = BTreeMap::new();
        let mut medals: Option<MedalCounts> = None;
        for row in rows {
            count += 1;
            missing += usize::from(row.missing);
            match row.score {
                Some(s) => scores.push(s),
                None => {
                    *errors
                        .entry(row.error_kind.unwrap_or("error").to_owned())
                        .or_insert(0) += 1
                }
            }
            if let Some(p) = row.leaderboard.as_ref().and_then(|l| l.primary()) {
                let m = medals.get_or_insert_with(MedalCounts::default);
                match p.medal {
                    Medal::Gold => m.gold += 1,
                    Medal::Silver => m.silver += 1,
                    Medal::Bronze => m.bronze += 1,
                    Medal::None => m.none += 1,
                }
                m.above_median += usize::from(p.above_median);
            }
        }
        let sum: f64 = scores.iter().sum();
        let evaluable = scores.len();
        Aggregate {
            count,
            evaluable,
            mean: if count == 0 { 0.0 } else { sum / count as f64 },
            mean_evaluable: (evaluable > 0).then(|| sum / evaluable as f64),
            min: scores.iter().copied().reduce(f64::min),
            max: scores.iter().copied().reduce(f64::max),
            solved: scores.iter().filter(|s| **s >= 1.0).count(),
            missing,
            success_rate: if count == 0 {
                0.0
            } else {
                evaluable as f64 / count as f64
            },
            errors,
            medals,
        }
    }
}

/// A scored suite.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuiteScore {
    pub suite: String,
    pub rows: Vec<TaskScore>,
    pub aggregate: Aggregate,
}

/// Which tasks to score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every task of the suite (missing predictions score 0).
    AllTasks,
    /// Only tasks that have a prediction.
    Predicted,
}

fn tasks_in_scope<'a>(
    suite: &'a LoadedSuite,
    preds: &'a Predictions,
    scope: Scope,
) -> impl Iterator<Item = &'a Task> {
    suite
        .tasks
        .iter()
        .filter(move |t| scope == Scope::AllTasks || preds.get(&t.id).is_some())
}

/// Score one task without a judge. A missing prediction scores 0 when the task is
/// evaluable at all (its metric parses and its answer exists).
pub fn score_task(task: &Task, prediction: Option<&str>) -> TaskScore {
    let result = Metric::for_task(task).and_then(|metric| match prediction {
        Some(p) => metric.score(p, task),
        None => metric.check(task).map(|()| missing_score()),
    });
    TaskScore::from_result(&task.id, prediction.is_none(), result)
}

/// Like [`score_task`], asking `judge` for LLM-judge metrics.
pub async fn score_task_with_judge(
    task: &Task,
    prediction: Option<&str>,
    judge: &dyn Judge,
) -> TaskScore {
    let result = match Metric::for_task(task) {
        Err(e) => Err(e),
        Ok(metric) => match prediction {
            Some(p) => metric.score_with_judge(p, task, judge).await,
            None => metric.check(task).map(|()| missing_score()),
        },
    };
    TaskScore::from_result(&task.id, prediction.is_none(), result)
}

fn missing_score() -> Score {
    let mut details = Map::new();
    details.insert("missing_prediction".into(), Value::Bool(true));
    Score {
        value: 0.0,
        details,
        leaderboard: None,
    }
}

/// Score a suite synchronously (LLM-judge tasks are not evaluable: `needs-judge`).
pub fn score_suite(suite: &LoadedSuite, preds: &Predictions, scope: Scope) -> SuiteScore {
    let rows: Vec<TaskScore> = tasks_in_scope(suite, preds, scope)
        .map(|t| {
            score_task(
                t,
                preds.get(&t.id).and_then(PredictionRecord::text).as_deref(),
            )
        })
        .collect();
    let aggregate = Aggregate::new(&rows);
    SuiteScore {
        suite: suite.def.name.clone(),
        rows,
        aggregate,
    }
}

/// Score a suite, asking `judge` for LLM-judge metrics (one task at a time).
pub async fn score_suite_with_judge(
    suite: &LoadedSuite,
    preds: &Predictions,
    scope: Scope,
    judge: &dyn Judge,
) -> SuiteScore {
    let mut rows = Vec::new();
    for t in tasks_in_scope(suite, preds, scope) {
        let text = preds.get(&t.id).and_then(PredictionRecord::text);
        rows.push(score_task_with_judge(t, text.as_deref(), judge).await);
    }
    let aggregate = Aggregate::new(&rows);
    SuiteScore {
        suite: suite.def.name.clone(),
        rows,
        aggregate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(score: Option<f64>, kind: Option<&'static str>, missing: bool) -> TaskScore {
        TaskScore {
            id: "t".into(),
            score,
            missing,
            error: None,
            error_kind: kind,
            details: Map::new(),
            leaderboard: None,
        }
    }

    #[test]
    fn aggregate_is_over_all_tasks() {
        let rows = [
            row(Some(1.0), None, false),
            row(Some(0.5), None, false),
            row(Some(0.0), None, true),
            row(None, Some("no-answer"), false),
        ];
        let a = Aggregate::new(&rows);
        assert_eq!((a.count, a.evaluable, a.solved, a.missing), (4, 3, 1, 1));
        assert_eq!(a.mean, 1.5 / 4.0);
        assert_eq!(a.mean_evaluable, Some(0.5));
        assert_eq!((a.min, a.max), (Some(0.0), Some(1.0)));
        assert_eq!(a.success_rate, 0.75);
        assert_eq!(a.errors.get("no-answer"), Some(&1));
        let empty = Aggregate::new(&[]);
        assert_eq!(
            (empty.count, empty.mean, empty.mean_evaluable),
            (0, 0.0, None)
        );
    }
}
