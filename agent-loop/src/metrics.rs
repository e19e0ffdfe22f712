//! Run metrics, per suite and overall: the mean over all samples (the reference's
//! headline: a missing answer scores 0), pass@k both as the reference computes it (the
//! mean over tasks of the best of k scores) and with the unbiased estimator of Chen et
//! al. (2021), mean turns, tokens and time, and the error breakdown.

use std::collections::BTreeMap;

use dsbox_tasks::{Aggregate, TaskScore};
use serde::{Deserialize, Serialize};

use crate::episode::EndReason;
use crate::model::Usage;
use crate::record::ResultRecord;

/// Why trajectories did not produce a scored answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBreakdown {
    /// Model requests that failed after retries.
    pub model_errors: usize,
    /// Sandboxes that could not start or were lost.
    pub sandbox_errors: usize,
    /// Episodes that ran out of their wall budget.
    pub episode_timeouts: usize,
    /// Episodes that ended at the turn limit without an answer.
    pub no_answer: usize,
    /// Cells that hit the per-cell timeout (in any trajectory).
    pub cell_timeouts: usize,
    /// Answers the metric could not score, by reason (`needs-judge`, `bad-answer`, ...).
    pub not_evaluable: BTreeMap<String, usize>,
}

/// Metrics of a group of trajectories (one suite, or all).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupMetrics {
    pub tasks: usize,
    /// Trajectories per task.
    pub k: u32,
    pub planned: usize,
    pub finished: usize,
    /// Mean score over all finished trajectories (unanswered and unscorable count 0).
    pub mean: f64,
    /// The reference's pass@k: the mean over tasks of the best score of the task's
    /// trajectories (an upper bound).
    pub max_at_k: f64,
    /// Unbiased pass@j for j = 1, 2, 4, ... and k: 1 - C(n-c, j)/C(n, j) per task
    /// (c = trajectories scoring 1), averaged over tasks with at least j trajectories.
    pub pass_at: BTreeMap<String, f64>,
    /// Tasks with at least one trajectory scoring 1.
    pub tasks_solved: usize,
    /// Over trajectories: count, evaluable, mean, min, max, solved, not evaluable.
    pub aggregate: Aggregate,
    pub mean_turns: f64,
    pub mean_tokens: f64,
    pub tokens: Usage,
    pub mean_time_s: f64,
    pub total_time_s: f64,
    pub end_reasons: BTreeMap<String, usize>,
    pub errors: ErrorBreakdown,
}

/// Metrics of a run (written to `metrics.json`; always recomputed from the results).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunMetrics {
    pub overall: GroupMetrics,
    pub suites: BTreeMap<String, GroupMetrics>,
    /// Every planned trajectory has a result.
    pub complete: bool,
}

/// The unbiased pass@k estimator: 1 - C(n-c, k) / C(n, k), in the numerically stable
/// product form.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k == 0 || n < k {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    let mut prod = 1.0;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prod
}

/// The k values reported: 1, 2, 4, ... below k, and k.
fn ks(k: u32) -> Vec<usize> {
    let mut v = Vec::new();
    let mut j = 1usize;
    while j < k as usize {
        v.push(j);
        j *= 2;
    }
    v.push(k.max(1) as usize);
    v
}

/// `MetricError::kind` names as `'static` strings, for [`TaskScore`] rows.
fn static_kind(kind: &str) -> &'static str {
    const KINDS: [&str; 12] = [
        "unknown-metric",
        "bad-metric-params",
        "no-answer",
        "bad-answer",
        "no-metric",
        "needs-judge",
        "judge-error",
        "judge-reply",
        "leaderboard",
        "bad-prediction",
        "submission",
        "missing-task",
    ];
    KINDS
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("error")
}

fn task_score(r: &ResultRecord) -> TaskScore {
    let outcome = r.primary();
    TaskScore {
        id: r.sample_id.clone(),
        score: outcome.and_then(|o| o.score),
        missing: r.prediction.is_none(),
        error: outcome.and_then(|o| o.error.clone()),
        error_kind: outcome
            .and_then(|o| o.error_kind.as_deref())
            .map(static_kind),
        details: Default::default(),
        leaderboard: outcome.and_then(|o| o.leaderboard.clone()),
    }
}

fn group(records: &[&ResultRecord], tasks: usize, k: u32) -> GroupMetrics {
    let finished = records.len();
    let rows: Vec<TaskScore> = records.iter().map(|r| task_score(r)).collect();
    let aggregate = Aggregate::new(&rows);
    let mut by_task: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in records {
        by_task
            .entry(r.sample_id.as_str())
            .or_default()
            .push(r.score_or_zero());
    }
    let max_at_k = if tasks == 0 {
        0.0
    } else {
        by_task
            .values()
            .map(|s| s.iter().copied().fold(0.0, f64::max))
            .sum::<f64>()
            / tasks as f64
    };
    let mut pass_at = BTreeMap::new();
    for j in ks(k) {
        let vals: Vec<f64> = by_task
            .values()
            .filter(|s| s.len() >= j)
            .map(|s| pass_at_k(s.len(), s.iter().filter(|v| **v >= 1.0).count(), j))
            .collect();
        if !vals.is_empty() {
            pass_at.insert(
                format!("pass@{j}"),
                vals.iter().sum::<f64>() / vals.len() as f64,
            );
        }
    }
    let tasks_solved = by_task
        .values()
        .filter(|s| s.iter().any(|v| *v >= 1.0))
        .count();
    let mut tokens = Usage::default();
    let mut end_reasons = BTreeMap::new();
    let mut errors = ErrorBreakdown::default();
    let (mut turns, mut time) = (0.0, 0.0);
    for r in records {
        tokens.add(&r.tokens);
        turns += f64::from(r.total_turns);
        time += r.execution_time;
        *end_reasons
            .entry(r.end_reason.as_str().to_owned())
            .or_insert(0) += 1;
        match r.end_reason {
            EndReason::ModelError => errors.model_errors += 1,
            EndReason::SandboxError => errors.sandbox_errors += 1,
            EndReason::EpisodeTimeout => errors.episode_timeouts += 1,
            EndReason::MaxTurns => errors.no_answer += 1,
            EndReason::Answered => {}
        }
        errors.cell_timeouts += r.cell_timeouts;
        if r.end_reason == EndReason::Answered
            && let Some(kind) = r.primary().and_then(|o| o.error_kind.clone())
        {
            *errors.not_evaluable.entry(kind).or_insert(0) += 1;
        }
    }
    let per = |x: f64| {
        if finished == 0 {
            0.0
        } else {
            x / finished as f64
        }
    };
    GroupMetrics {
        tasks,
        k,
        planned: tasks * k as usize,
        finished,
        mean: per(records.iter().map(|r| r.score_or_zero()).sum()),
        max_at_k,
        pass_at,
        tasks_solved,
        aggregate,
        mean_turns: per(turns),
        mean_tokens: per(tokens.total_tokens as f64),
        tokens,
        mean_time_s: per(time),
        total_time_s: time,
        end_reasons,
        errors,
    }
}

/// Metrics of `records` (the latest record per trajectory) for a plan of `tasks_per_suite`
/// tasks and `k` trajectories each.
pub fn compute(
    records: &[ResultRecord],
    tasks_per_suite: &BTreeMap<String, usize>,
    k: u32,
) -> RunMetrics {
    let all: Vec<&ResultRecord> = records.iter().collect();
    let total_tasks: usize = tasks_per_suite.values().sum();
    let suites = tasks_per_suite
        .iter()
        .map(|(name, &n)| {
            let rs: Vec<&ResultRecord> =
                all.iter().copied().filter(|r| &r.dataset == name).collect();
            (name.clone(), group(&rs, n, k))
        })
        .collect();
    let overall = group(&all, total_tasks, k);
    RunMetrics {
        complete: overall.finished >= overall.planned,
        overall,
        suites,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbiased_pass_at_k_matches_the_binomial_form() {
        fn exact(n: u64, c: u64, k: u64) -> f64 {
            fn choose(n: u64, k: u64) -> f64 {
                if k > n {
                    return 0.0;
                }
                (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
            }
            1.0 - choose(n - c, k) / choose(n, k)
        }
        for n in 1..12u64 {
            for c in 0..=n {
                for k in 1..=n {
                    let got = pass_at_k(n as usize, c as usize, k as usize);
                    assert!((got - exact(n, c, k)).abs() < 1e-9, "n={n} c={c} k={k}");
                }
            }
        }
        assert_eq!(pass_at_k(5, 0, 1), 0.0);
        assert_eq!(pass_at_k(5, 5, 1), 1.0);
        assert!((pass_at_k(4, 1, 1) - 0.25).abs() < 1e-12);
        assert!(pass_at_k(2, 1, 3).is_nan());
    }

    #[test]
    fn reported_ks() {
        assert_eq!(ks(1), vec![1]);
        assert_eq!(ks(5), vec![1, 2, 4, 5]);
        assert_eq!(ks(8), vec![1, 2, 4, 8]);
    }
}
