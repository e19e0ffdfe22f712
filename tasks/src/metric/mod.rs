//! Metrics: [`Metric`] (by name + parameters) scores a prediction for a [`Task`].
//!
//! Synchronous metrics go through [`Metric::score`]; LLM-judge metrics need
//! [`Metric::score_with_judge`] and a [`Judge`]. A metric that cannot produce a score says
//! why with a [`MetricError`] (no ground truth, bad answer, judge failure, ...): such a
//! task is "not evaluable", which aggregation counts separately from a score of 0.

pub mod judge;
pub mod kaggle;
pub mod text;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value, json};

pub use judge::{BoxFuture, Judge, JudgeError, JudgeRequest};
pub use kaggle::KaggleMetric;

use crate::leaderboard::{LeaderboardResult, Leaderboards};
use crate::pyliteral::{py_float, py_strip};
use crate::task::{MetricSpec, Task};

/// The metric names this crate knows.
pub const METRIC_NAMES: [&str; 9] = [
    "exact_match",
    "list_match",
    "dabstep",
    "fuzzy_exact_match",
    "llm_score",
    "hms_score",
    "equivalence_by_llm",
    "leaderboard",
    "none",
];

/// Why a task could not be scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    #[error("unknown metric `{name}`; known metrics: {}", METRIC_NAMES.join(", "))]
    UnknownMetric { name: String },
    #[error("metric `{metric}`: parameter `{param}` {reason}")]
    BadParams {
        metric: String,
        param: String,
        reason: String,
    },
    #[error("task {task_id} has no ground-truth answer")]
    NoAnswer { task_id: String },
    #[error("task {task_id}: answer does not parse for {metric}: {reason}")]
    BadAnswer {
        task_id: String,
        metric: String,
        reason: String,
    },
    #[error("task {task_id} has no metric (the reference defines none for this suite)")]
    NoMetric { task_id: String },
    #[error("metric `{metric}` needs an LLM judge and none is configured")]
    NeedsJudge { metric: String },
    #[error("judge call failed: {0}")]
    Judge(#[from] JudgeError),
    #[error("{metric}: unusable judge reply: {reason}")]
    JudgeReply { metric: String, reason: String },
    #[error("competition `{competition}`: {reason}")]
    Leaderboard { competition: String, reason: String },
    #[error(
        "prediction for {task_id} is neither a score nor an existing submission file: `{prediction}`"
    )]
    BadPrediction { task_id: String, prediction: String },
    #[error("submission {path}: {reason}")]
    Submission { path: PathBuf, reason: String },
}

impl MetricError {
    /// A short stable name for breakdowns (`no-answer`, `needs-judge`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            MetricError::UnknownMetric { .. } => "unknown-metric",
            MetricError::BadParams { .. } => "bad-metric-params",
            MetricError::NoAnswer { .. } => "no-answer",
            MetricError::BadAnswer { .. } => "bad-answer",
            MetricError::NoMetric { .. } => "no-metric",
            MetricError::NeedsJudge { .. } => "needs-judge",
            MetricError::Judge(_) => "judge-error",
            MetricError::JudgeReply { .. } => "judge-reply",
            MetricError::Leaderboard { .. } => "leaderboard",
            MetricError::BadPrediction { .. } => "bad-prediction",
            MetricError::Submission { .. } => "submission",
        }
    }
}

/// A score in [0, 1] with what led to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    pub value: f64,
    /// Metric-specific facts (the rule that matched, relative error, judge reply, ...).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
    /// DSPredict: where the competition score lands on the offline boards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaderboard: Option<LeaderboardResult>,
}

impl Score {
    pub fn new(value: f64) -> Self {
        Score {
            value,
            details: Map::new(),
            leaderboard: None,
        }
    }

    fn with(mut self, key: &str, value: Value) -> Self {
        self.details.insert(key.to_owned(), value);
        self
    }
}

/// Settings of the `leaderboard` metric (DSPredict).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderboardMetric {
    pub competition: String,
    /// The leaderboard stats file holding the competition's board (set by the loader).
    pub leaderboard_file: Option<PathBuf>,
    /// How to score a submission file locally, when known.
    pub local_metric: Option<KaggleMetric>,
    /// The competition's answers (host path; never mounted into a sandbox).
    pub answer_file: Option<PathBuf>,
}

/// A metric with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// Default tolerance 0.03 (relative, strict `<`).
    ExactMatch {
        tolerance: f64,
    },
    /// DAEval `@name[value]` pairs; default tolerance 0 (relative, `<=`).
    ListMatch {
        tolerance: f64,
    },
    Dabstep,
    /// Default threshold 0.8.
    FuzzyExactMatch {
        threshold: f64,
    },
    LlmScore,
    HmsScore,
    /// Default tolerance 0.01.
    EquivalenceByLlm {
        tolerance: f64,
    },
    Leaderboard(LeaderboardMetric),
    /// No metric (ScienceAgentBench in the reference): never evaluable.
    None,
}

fn param_f64(spec: &MetricSpec, keys: &[&str], default: f64) -> Result<f64, MetricError> {
    for key in keys {
        if let Some(v) = spec.params.get(*key) {
            return match v.as_f64() {
                Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
                _ => Err(MetricError::BadParams {
                    metric: spec.name.clone(),
                    param: (*key).to_owned(),
                    reason: format!("must be a non-negative number, got {v}"),
                }),
            };
        }
    }
    Ok(default)
}

fn param_str<'a>(spec: &'a MetricSpec, key: &str) -> Result<Option<&'a str>, MetricError> {
    match spec.params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(MetricError::BadParams {
            metric: spec.name.clone(),
            param: key.to_owned(),
            reason: format!("must be a string, got {v}"),
        }),
    }
}

fn check_params(spec: &MetricSpec, allowed: &[&str]) -> Result<(), MetricError> {
    match spec.params.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(MetricError::BadParams {
            metric: spec.name.clone(),
            param: k.clone(),
            reason: if allowed.is_empty() {
                "is not known (this metric takes no parameters)".to_owned()
            } else {
                format!("is not known (allowed: {})", allowed.join(", "))
            },
        }),
    }
}

impl Metric {
    /// Parse a metric spec. Unknown names and unknown or ill-typed parameters are errors
    /// (typos in suite files should not silently fall back to defaults).
    pub fn from_spec(spec: &MetricSpec) -> Result<Metric, MetricError> {
        let tol = ["tolerance", "numeric_tolerance"];
        Ok(match spec.name.as_str() {
            "exact_match" => {
                check_params(spec, &tol)?;
                Metric::ExactMatch {
                    tolerance: param_f64(spec, &tol, 0.03)?,
                }
            }
            "list_match" => {
                check_params(spec, &tol)?;
                Metric::ListMatch {
                    tolerance: param_f64(spec, &tol, 0.0)?,
                }
            }
            "dabstep" => {
                check_params(spec, &[])?;
                Metric::Dabstep
            }
            "fuzzy_exact_match" => {
                let keys = ["threshold", "similarity_threshold"];
                check_params(spec, &keys)?;
                Metric::FuzzyExactMatch {
                    threshold: param_f64(spec, &keys, 0.8)?,
                }
            }
            "llm_score" => {
                check_params(spec, &[])?;
                Metric::LlmScore
            }
            "hms_score" => {
                check_params(spec, &[])?;
                Metric::HmsScore
            }
            "equivalence_by_llm" => {
                check_params(spec, &tol)?;
                Metric::EquivalenceByLlm {
                    tolerance: param_f64(spec, &tol, 0.01)?,
                }
            }
            "leaderboard" => {
                check_params(
                    spec,
                    &[
                        "competition",
                        "leaderboard_file",
                        "local_metric",
                        "answer_file",
                    ],
                )?;
                let Some(competition) = param_str(spec, "competition")? else {
                    return Err(MetricError::BadParams {
                        metric: spec.name.clone(),
                        param: "competition".into(),
                        reason: "is required".into(),
                    });
                };
                let local_metric = match param_str(spec, "local_metric")? {
                    None => None,
                    Some(name) => Some(KaggleMetric::from_name(name).ok_or_else(|| {
                        MetricError::BadParams {
                            metric: spec.name.clone(),
                            param: "local_metric".into(),
                            reason: format!(
                                "`{name}` is not a known local metric ({})",
                                KaggleMetric::ALL.map(KaggleMetric::name).join(", ")
                            ),
                        }
                    })?),
                };
                Metric::Leaderboard(LeaderboardMetric {
                    competition: competition.to_owned(),
                    leaderboard_file: param_str(spec, "leaderboard_file")?.map(PathBuf::from),
                    local_metric,
                    answer_file: param_str(spec, "answer_file")?.map(PathBuf::from),
                })
            }
            "none" => Metric::None,
            other => {
                return Err(MetricError::UnknownMetric {
                    name: other.to_owned(),
                });
            }
        })
    }

    /// The metric of a task.
    pub fn for_task(task: &Task) -> Result<Metric, MetricError> {
        Metric::from_spec(&task.metric)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Metric::ExactMatch { .. } => "exact_match",
            Metric::ListMatch { .. } => "list_match",
            Metric::Dabstep => "dabstep",
            Metric::FuzzyExactMatch { .. } => "fuzzy_exact_match",
            Metric::LlmScore => "llm_score",
            Metric::HmsScore => "hms_score",
            Metric::EquivalenceByLlm { .. } => "equivalence_by_llm",
            Metric::Leaderboard(_) => "leaderboard",
            Metric::None => "none",
        }
    }

    /// Whether scoring needs a [`Judge`].
    pub fn needs_judge(&self) -> bool {
        matches!(
            self,
            Metric::LlmScore | Metric::HmsScore | Metric::EquivalenceByLlm { .. }
        )
    }

    /// Check that `task` can be scored by this metric at all (its answer exists and parses,
    /// its leaderboard has the competition), without a prediction.
    pub fn check(&self, task: &Task) -> Result<(), MetricError> {
        match self {
            Metric::None => Err(MetricError::NoMetric {
                task_id: task.id.clone(),
            }),
            Metric::Leaderboard(lb) => {
                let boards = load_boards(lb)?;
                let stats =
                    boards
                        .boards
                        .get(&lb.competition)
                        .ok_or_else(|| MetricError::Leaderboard {
                            competition: lb.competition.clone(),
                            reason: format!("not on the leaderboard {}", boards.path.display()),
                        })?;
                if stats.public_scores.is_empty() && stats.private_scores.is_empty() {
                    return Err(MetricError::Leaderboard {
                        competition: lb.competition.clone(),
                        reason: "both boards are empty".into(),
                    });
                }
                Ok(())
            }
            Metric::ListMatch { .. } => {
                let truth = truth(task)?;
                text::parse_truth_pairs(&truth)
                    .map(|_| ())
                    .map_err(|reason| MetricError::BadAnswer {
                        task_id: task.id.clone(),
                        metric: self.name().into(),
                        reason,
                    })
            }
            _ => truth(task).map(|_| ()),
        }
    }

    /// Score `prediction` for `task` with a synchronous metric. LLM-judge metrics return
    /// [`MetricError::NeedsJudge`]; use [`Metric::score_with_judge`] for them.
    pub fn score(&self, prediction: &str, task: &Task) -> Result<Score, MetricError> {
        match self {
            Metric::ExactMatch { tolerance } => {
                let m = text::exact_match(prediction, &truth(task)?, *tolerance);
                let mut s = Score::new(m.score).with("rule", json!(m.rule.as_str()));
                if let Some(err) = m.relative_error {
                    s = s.with("relative_error", json!(err));
                }
                Ok(s)
            }
            Metric::ListMatch { tolerance } => {
                let m =
                    text::list_match(prediction, &truth(task)?, *tolerance).map_err(|reason| {
                        MetricError::BadAnswer {
                            task_id: task.id.clone(),
                            metric: self.name().into(),
                            reason,
                        }
                    })?;
                let mut s = Score::new(m.score)
                    .with("predicted_pairs", json!(m.predicted_pairs))
                    .with("expected_pairs", json!(m.expected_pairs));
                if let Some(name) = m.mismatch {
                    s = s.with("mismatch", json!(name));
                }
                Ok(s)
            }
            Metric::Dabstep => Ok(Score::new(text::dabstep(prediction, &truth(task)?))),
            Metric::FuzzyExactMatch { threshold } => {
                let (score, sim) = text::fuzzy_exact_match(prediction, &truth(task)?, *threshold);
                Ok(Score::new(score).with("similarity", json!(sim)))
            }
            Metric::LlmScore | Metric::HmsScore | Metric::EquivalenceByLlm { .. } => {
                Err(MetricError::NeedsJudge {
                    metric: self.name().into(),
                })
            }
            Metric::Leaderboard(lb) => score_leaderboard(lb, prediction, task),
            Metric::None => Err(MetricError::NoMetric {
                task_id: task.id.clone(),
            }),
        }
    }

    /// Score with any metric; LLM-judge metrics ask `judge`.
    pub async fn score_with_judge(
        &self,
        prediction: &str,
        task: &Task,
        judge: &dyn Judge,
    ) -> Result<Score, MetricError> {
        let (value, details) = match self {
            Metric::LlmScore => {
                judge::llm_score(judge, &task.question, prediction, &truth(task)?).await?
            }
            Metric::EquivalenceByLlm { tolerance } => {
                judge::equivalence_by_llm(
                    judge,
                    &task.question,
                    prediction,
                    &truth(task)?,
                    *tolerance,
                )
                .await?
            }
            Metric::HmsScore => {
                let ctx = judge::HmsContext {
                    query: &task.question,
                    dataset_descriptions: task
                        .meta_str("dataset_descriptions")
                        .unwrap_or(&task.context),
                    columns: task.meta_str("columns_info").unwrap_or(""),
                };
                judge::hms_score(judge, &ctx, prediction, &truth(task)?).await?
            }
            other => return other.score(prediction, task),
        };
        Ok(Score {
            value,
            details,
            leaderboard: None,
        })
    }
}

fn truth(task: &Task) -> Result<String, MetricError> {
    task.answer_text().ok_or_else(|| MetricError::NoAnswer {
        task_id: task.id.clone(),
    })
}

fn load_boards(lb: &LeaderboardMetric) -> Result<std::sync::Arc<Leaderboards>, MetricError> {
    let Some(path) = &lb.leaderboard_file else {
        return Err(MetricError::Leaderboard {
            competition: lb.competition.clone(),
            reason: "no leaderboard file is configured (metric parameter `leaderboard_file`)"
                .into(),
        });
    };
    Leaderboards::cached(path).map_err(|e| MetricError::Leaderboard {
        competition: lb.competition.clone(),
        reason: e.to_string(),
    })
}

/// A DSPredict prediction is either the competition score itself (a number, e.g. from a
/// Kaggle upload done elsewhere) or the path of a submission file, scored locally against
/// the competition's answer file when there is one.
fn score_leaderboard(
    lb: &LeaderboardMetric,
    prediction: &str,
    task: &Task,
) -> Result<Score, MetricError> {
    let boards = load_boards(lb)?;
    let stats = boards
        .boards
        .get(&lb.competition)
        .ok_or_else(|| MetricError::Leaderboard {
            competition: lb.competition.clone(),
            reason: format!("not on the leaderboard {}", boards.path.display()),
        })?;
    let text = py_strip(prediction);
    let (raw, source) = match py_float(text) {
        Some(x) if x.is_finite() => (x, "given"),
        _ => {
            let path = Path::new(text);
            if text.is_empty() || !path.is_file() {
                return Err(MetricError::BadPrediction {
                    task_id: task.id.clone(),
                    prediction: text.chars().take(200).collect(),
                });
            }
            let Some(metric) = lb.local_metric else {
                return Err(MetricError::Submission {
                    path: path.to_owned(),
                    reason: format!(
                        "no local metric is known for `{}` (set the metric parameter `local_metric`)",
                        lb.competition
                    ),
                });
            };
            let answers =
                lb.answer_file
                    .as_deref()
                    .filter(|p| p.is_file())
                    .ok_or_else(|| MetricError::Submission {
                        path: path.to_owned(),
                        reason: match &lb.answer_file {
                            Some(p) => format!("the answer file {} does not exist", p.display()),
                            None => "no answer file is configured (metric parameter `answer_file`)"
                                .into(),
                        },
                    })?;
            let value = kaggle::score_submission(path, answers, metric).map_err(|e| {
                MetricError::Submission {
                    path: path.to_owned(),
                    reason: e.0,
                }
            })?;
            (value, "local")
        }
    };
    let result = LeaderboardResult::new(&lb.competition, raw, source, stats).ok_or_else(|| {
        MetricError::Leaderboard {
            competition: lb.competition.clone(),
            reason: "both boards are empty".into(),
        }
    })?;
    let primary = result.primary().cloned();
    let mut score = Score::new(primary.as_ref().map_or(0.0, |p| p.percentile / 100.0));
    if let Some(p) = primary {
        score = score
            .with("rank", json!(p.rank))
            .with("medal", json!(p.medal.as_str()))
            .with("percentile", json!(p.percentile))
            .with("above_median", json!(p.above_median));
    }
    if let Some(m) = lb.local_metric {
        score = score.with("local_metric", json!(m.name()));
    }
    score.leaderboard = Some(result);
    Ok(score)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_defaults_and_reject_typos() {
        assert_eq!(
            Metric::from_spec(&MetricSpec::new("exact_match")).unwrap(),
            Metric::ExactMatch { tolerance: 0.03 }
        );
        let spec = MetricSpec::new("list_match").with("tolerance", 0.01);
        assert_eq!(
            Metric::from_spec(&spec).unwrap(),
            Metric::ListMatch { tolerance: 0.01 }
        );
        let typo = MetricSpec::new("exact_match").with("tolerence", 0.1);
        assert_eq!(
            Metric::from_spec(&typo).unwrap_err().kind(),
            "bad-metric-params"
        );
        let negative = MetricSpec::new("exact_match").with("tolerance", -1);
        assert!(Metric::from_spec(&negative).is_err());
        assert_eq!(
            Metric::from_spec(&MetricSpec::new("bleu"))
                .unwrap_err()
                .kind(),
            "unknown-metric"
        );
        assert!(Metric::from_spec(&MetricSpec::new("leaderboard")).is_err());
        let lb = MetricSpec::new("leaderboard")
            .with("competition", "titanic")
            .with("local_metric", "auc");
        assert!(matches!(
            Metric::from_spec(&lb).unwrap(),
            Metric::Leaderboard(LeaderboardMetric {
                local_metric: Some(KaggleMetric::RocAuc),
                ..
            })
        ));
    }
}
