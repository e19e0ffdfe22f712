//! Local Kaggle metrics: score a `submission.csv` against the competition's answer file
//! without any upload, so the result can be placed on the offline leaderboard.
//!
//! Rows are joined on the answer file's first column (the id). The target columns are the
//! answer file's other columns (a Kaggle `Usage` column is ignored); the submission must
//! have the id column, every target column and exactly the answer's ids.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A competition metric that can be computed locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KaggleMetric {
    Rmse,
    Rmsle,
    Mae,
    Accuracy,
    RocAuc,
    LogLoss,
    /// Macro-averaged F1 over the labels in truth ∪ prediction.
    MacroF1,
    /// Binary F1 of the positive label (`1` / `true`).
    F1,
}

/// Why a submission could not be scored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SubmissionError(pub String);

fn fail<T>(msg: impl Into<String>) -> Result<T, SubmissionError> {
    Err(SubmissionError(msg.into()))
}

impl KaggleMetric {
    pub const ALL: [KaggleMetric; 8] = [
        KaggleMetric::Rmse,
        KaggleMetric::Rmsle,
        KaggleMetric::Mae,
        KaggleMetric::Accuracy,
        KaggleMetric::RocAuc,
        KaggleMetric::LogLoss,
        KaggleMetric::MacroF1,
        KaggleMetric::F1,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KaggleMetric::Rmse => "rmse",
            KaggleMetric::Rmsle => "rmsle",
            KaggleMetric::Mae => "mae",
            KaggleMetric::Accuracy => "accuracy",
            KaggleMetric::RocAuc => "roc_auc",
            KaggleMetric::LogLoss => "log_loss",
            KaggleMetric::MacroF1 => "macro_f1",
            KaggleMetric::F1 => "f1",
        }
    }

    /// By name, with common spellings (`auc`, `logloss`, `f1_macro`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        Some(match n.as_str() {
            "rmse" => KaggleMetric::Rmse,
            "rmsle" => KaggleMetric::Rmsle,
            "mae" => KaggleMetric::Mae,
            "accuracy" | "acc" => KaggleMetric::Accuracy,
            "roc_auc" | "auc" | "rocauc" => KaggleMetric::RocAuc,
            "log_loss" | "logloss" => KaggleMetric::LogLoss,
            "macro_f1" | "f1_macro" => KaggleMetric::MacroF1,
            "f1" => KaggleMetric::F1,
            _ => return None,
        })
    }

    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            KaggleMetric::Accuracy
                | KaggleMetric::RocAuc
                | KaggleMetric::MacroF1
                | KaggleMetric::F1
        )
    }

    /// Recognise the metric from a competition's evaluation text. Deliberately strict: a
    /// composite metric ("mean columnwise RMSE", "log of the MAE per type", weighted or
    /// scaled variants, MAP@k, ...) returns `None` rather than a look-alike whose scores
    /// would not be comparable with the board.
    pub fn infer(evaluation: &str) -> Option<Self> {
        let t = evaluation.to_lowercase().replace(['-', '_'], " ");
        let composite = [
            "columnwise",
            "rowwise",
            "column wise",
            "row wise",
            "weighted",
            "scaled error",
            "log of the mean",
            "not scored",
            "mean average precision",
            "map@",
            "dice",
            "iou",
            "percentile",
            "spearman",
            "pinball",
            "brier",
            "ndcg",
            "recall@",
            "global average precision",
            "matthews",
            "smape",
            "micro",
            "samples averaged",
            "mean f2",
            "mean r2",
            "two evaluation metrics",
            "quadratic weighted",
        ];
        if composite.iter().any(|c| t.contains(c)) {
            return None;
        }
        let has = |needles: &[&str]| needles.iter().any(|n| t.contains(n));
        if has(&[
            "logarithmic error",
            "rmsle",
            "logarithm of the predicted value",
        ]) {
            return Some(KaggleMetric::Rmsle);
        }
        if has(&["log loss", "logarithmic loss", "logloss", "cross entropy"]) {
            return Some(KaggleMetric::LogLoss);
        }
        if has(&[
            "roc curve",
            "roc auc",
            "auc roc",
            "area under the roc",
            "(auc)",
        ]) {
            return Some(KaggleMetric::RocAuc);
        }
        if has(&["root mean squared error", "root mean square error", "rmse"]) {
            return Some(KaggleMetric::Rmse);
        }
        if has(&["mean absolute error", "(mae)"]) {
            return Some(KaggleMetric::Mae);
        }
        if has(&[
            "macro f1",
            "macro averaged f1",
            "macro f1 score",
            "f1 macro",
        ]) {
            return Some(KaggleMetric::MacroF1);
        }
        if has(&["accuracy"]) {
            return Some(KaggleMetric::Accuracy);
        }
        if has(&["f1 score", "using f1", "on f1", " f1 "]) {
            return Some(KaggleMetric::F1);
        }
        None
    }

    /// Score aligned rows: `truth[i]` and `pred[i]` hold the target columns of one id.
    pub fn compute(
        self,
        truth: &[Vec<String>],
        pred: &[Vec<String>],
    ) -> Result<f64, SubmissionError> {
        if truth.is_empty() {
            return fail("the answer file has no rows");
        }
        let width = truth[0].len();
        if width == 0
            || pred.len() != truth.len()
            || truth.iter().chain(pred).any(|r| r.len() != width)
        {
            return fail(format!(
                "answer and submission rows do not line up ({} vs {} rows of {width} target column(s))",
                truth.len(),
                pred.len()
            ));
        }
        match self {
            KaggleMetric::Rmse | KaggleMetric::Rmsle | KaggleMetric::Mae => {
                let (y, p) = (numbers(truth, "answer")?, numbers(pred, "submission")?);
                let n = y.len() as f64;
                let total: f64 = match self {
                    KaggleMetric::Mae => y.iter().zip(&p).map(|(a, b)| (a - b).abs()).sum(),
                    KaggleMetric::Rmse => y.iter().zip(&p).map(|(a, b)| (a - b).powi(2)).sum(),
                    _ => {
                        if let Some(bad) = y.iter().chain(&p).find(|v| **v <= -1.0) {
                            return fail(format!("RMSLE needs values > -1, found {bad}"));
                        }
                        y.iter()
                            .zip(&p)
                            .map(|(a, b)| (a.ln_1p() - b.ln_1p()).powi(2))
                            .sum()
                    }
                };
                let mean = total / n;
                Ok(if self == KaggleMetric::Mae {
                    mean
                } else {
                    mean.sqrt()
                })
            }
            KaggleMetric::Accuracy => {
                let cells = truth.iter().flatten().zip(pred.iter().flatten());
                let n = truth.len() * width;
                let right = cells.filter(|(a, b)| same_label(a, b)).count();
                Ok(right as f64 / n as f64)
            }
            KaggleMetric::RocAuc => {
                // Multi-column answers (multi-label): mean of the per-column AUCs.
                let mut sum = 0.0;
                for col in 0..width {
                    let y = labels01(truth.iter().map(|r| r[col].as_str()))?;
                    let p = numbers_col(pred, col)?;
                    sum += roc_auc(&y, &p)?;
                }
                Ok(sum / width as f64)
            }
            KaggleMetric::LogLoss => {
                let eps = 1e-15;
                if width == 1 {
                    let y = labels01(truth.iter().map(|r| r[0].as_str()))?;
                    let p = numbers_col(pred, 0)?;
                    let total: f64 = y
                        .iter()
                        .zip(&p)
                        .map(|(&yi, &pi)| {
                            let pi = pi.clamp(eps, 1.0 - eps);
                            if yi { -pi.ln() } else { -(1.0 - pi).ln() }
                        })
                        .sum();
                    return Ok(total / y.len() as f64);
                }
                // One column per class: one-hot truth, probabilities renormalised per row
                // after clipping (Kaggle's multi-class log loss).
                let y = numbers(truth, "answer")?;
                let p = numbers(pred, "submission")?;
                let mut total = 0.0;
                for (yr, pr) in y.chunks(width).zip(p.chunks(width)) {
                    let clipped: Vec<f64> = pr.iter().map(|v| v.clamp(eps, 1.0 - eps)).collect();
                    let norm: f64 = clipped.iter().sum();
                    total -= yr
                        .iter()
                        .zip(&clipped)
                        .map(|(yi, pi)| yi * (pi / norm).ln())
                        .sum::<f64>();
                }
                Ok(total / truth.len() as f64)
            }
            KaggleMetric::MacroF1 | KaggleMetric::F1 => {
                if width != 1 {
                    return fail("F1 needs exactly one target column");
                }
                let y: Vec<String> = truth.iter().map(|r| canonical_label(&r[0])).collect();
                let p: Vec<String> = pred.iter().map(|r| canonical_label(&r[0])).collect();
                if self == KaggleMetric::F1 {
                    let positive = ["1", "true"].into_iter().find(|l| y.iter().any(|v| v == l));
                    return Ok(f1_of(&y, &p, positive.unwrap_or("1")));
                }
                let mut labels: Vec<&String> = y.iter().chain(&p).collect();
                labels.sort();
                labels.dedup();
                let sum: f64 = labels.iter().map(|l| f1_of(&y, &p, l)).sum();
                Ok(sum / labels.len() as f64)
            }
        }
    }
}

fn f1_of(y: &[String], p: &[String], label: &str) -> f64 {
    let tp = y
        .iter()
        .zip(p)
        .filter(|(a, b)| *a == label && *b == label)
        .count() as f64;
    let fp = y
        .iter()
        .zip(p)
        .filter(|(a, b)| *a != label && *b == label)
        .count() as f64;
    let fn_ = y
        .iter()
        .zip(p)
        .filter(|(a, b)| *a == label && *b != label)
        .count() as f64;
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fn_)
    }
}

/// Labels compare as numbers when both are numbers (`1` == `1.0`), else as trimmed text
/// (`True` == `true`).
fn canonical_label(s: &str) -> String {
    let t = s.trim();
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() => crate::pyliteral::float_repr(v),
        _ => t.to_lowercase(),
    }
}

fn same_label(a: &str, b: &str) -> bool {
    canonical_label(a) == canonical_label(b)
}

fn parse_num(s: &str, what: &str) -> Result<f64, SubmissionError> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => fail(format!("{what} value `{s}` is not a finite number")),
    }
}

fn numbers(rows: &[Vec<String>], what: &str) -> Result<Vec<f64>, SubmissionError> {
    rows.iter().flatten().map(|s| parse_num(s, what)).collect()
}

fn numbers_col(rows: &[Vec<String>], col: usize) -> Result<Vec<f64>, SubmissionError> {
    rows.iter()
        .map(|r| parse_num(&r[col], "submission"))
        .collect()
}

fn labels01<'a>(values: impl Iterator<Item = &'a str>) -> Result<Vec<bool>, SubmissionError> {
    values
        .map(|v| match canonical_label(v).as_str() {
            "1.0" | "true" => Ok(true),
            "0.0" | "false" => Ok(false),
            other => fail(format!("binary target expected (0/1), found `{other}`")),
        })
        .collect()
}

/// ROC AUC by the rank-sum (Mann-Whitney) formula with average ranks for ties.
fn roc_auc(y: &[bool], p: &[f64]) -> Result<f64, SubmissionError> {
    let pos = y.iter().filter(|v| **v).count();
    let neg = y.len() - pos;
    if pos == 0 || neg == 0 {
        return fail("ROC AUC needs both classes in the answer file");
    }
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut ranks = vec![0.0; p.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && p[order[j + 1]] == p[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[order[k]] = avg;
        }
        i = j + 1;
    }
    let rank_sum: f64 = y
        .iter()
        .zip(&ranks)
        .filter(|(v, _)| **v)
        .map(|(_, r)| r)
        .sum();
    let (pos, neg) = (pos as f64, neg as f64);
    Ok((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn read_csv(path: &Path) -> Result<Table, SubmissionError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| SubmissionError(format!("cannot read {}: {e}", path.display())))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| SubmissionError(format!("{}: bad CSV header: {e}", path.display())))?
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_owned())
        .collect();
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record
            .map_err(|e| SubmissionError(format!("{}: row {}: {e}", path.display(), i + 2)))?;
        rows.push(record.iter().map(str::to_owned).collect());
    }
    Ok(Table { header, rows })
}

/// Score `submission` against `answers` with `metric`.
pub fn score_submission(
    submission: &Path,
    answers: &Path,
    metric: KaggleMetric,
) -> Result<f64, SubmissionError> {
    let truth = read_csv(answers)?;
    let sub = read_csv(submission)?;
    let Some(id_col) = truth.header.first().cloned() else {
        return fail(format!(
            "{}: the answer file has no columns",
            answers.display()
        ));
    };
    let targets: Vec<usize> = (1..truth.header.len())
        .filter(|&i| !truth.header[i].eq_ignore_ascii_case("usage"))
        .collect();
    if targets.is_empty() {
        return fail(format!(
            "{}: the answer file has no target column",
            answers.display()
        ));
    }
    let col = |name: &str| sub.header.iter().position(|h| h == name);
    let Some(sub_id) = col(&id_col) else {
        return fail(format!(
            "the submission has no `{id_col}` column (it has: {})",
            sub.header.join(", ")
        ));
    };
    let mut sub_targets = Vec::new();
    for &t in &targets {
        let name = &truth.header[t];
        match col(name) {
            Some(i) => sub_targets.push(i),
            None => return fail(format!("the submission has no `{name}` column")),
        }
    }
    let mut by_id: HashMap<&str, &Vec<String>> = HashMap::new();
    for row in &sub.rows {
        let id = row.get(sub_id).map_or("", |s| s.trim());
        if by_id.insert(id, row).is_some() {
            return fail(format!("the submission lists id `{id}` twice"));
        }
    }
    if by_id.len() != truth.rows.len() {
        return fail(format!(
            "the submission has {} rows, the answer file {}",
            by_id.len(),
            truth.rows.len()
        ));
    }
    let mut y = Vec::with_capacity(truth.rows.len());
    let mut p = Vec::with_capacity(truth.rows.len());
    for row in &truth.rows {
        let id = row.first().map_or("", |s| s.trim());
        let Some(sub_row) = by_id.get(id) else {
            return fail(format!("the submission has no row for id `{id}`"));
        };
        y.push(
            targets
                .iter()
                .map(|&t| row.get(t).cloned().unwrap_or_default())
                .collect(),
        );
        p.push(
            sub_targets
                .iter()
                .map(|&t| sub_row.get(t).cloned().unwrap_or_default())
                .collect(),
        );
    }
    metric.compute(&y, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[&str]) -> Vec<Vec<String>> {
        v.iter()
            .map(|s| s.split(',').map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn regression_metrics() {
        let y = rows(&["1", "2", "3"]);
        let p = rows(&["1", "2", "5"]);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(KaggleMetric::Mae.compute(&y, &p).unwrap(), 2.0 / 3.0));
        assert!(close(
            KaggleMetric::Rmse.compute(&y, &p).unwrap(),
            (4.0f64 / 3.0).sqrt()
        ));
        let rmsle = ((4f64.ln() - 6f64.ln()).powi(2) / 3.0).sqrt();
        assert!(close(KaggleMetric::Rmsle.compute(&y, &p).unwrap(), rmsle));
        assert!(
            KaggleMetric::Rmsle
                .compute(&y, &rows(&["1", "2", "-2"]))
                .is_err()
        );
        // Rows that do not line up are an error, not a panic.
        assert!(KaggleMetric::Rmse.compute(&y, &rows(&["1", "2"])).is_err());
        assert!(
            KaggleMetric::Rmse
                .compute(&y, &rows(&["1", "2", "3,4"]))
                .is_err()
        );
        assert!(KaggleMetric::Rmse.compute(&[], &[]).is_err());
    }

    #[test]
    fn classification_metrics() {
        let y = rows(&["1", "0", "1", "0"]);
        // scores: positives 0.8, 0.4; negatives 0.4, 0.1 → pairs (0.8>0.4, 0.8>0.1, 0.4=0.4 (½), 0.4>0.1) = 3.5/4
        let p = rows(&["0.8", "0.4", "0.4", "0.1"]);
        assert_eq!(KaggleMetric::RocAuc.compute(&y, &p).unwrap(), 0.875);
        let ll = KaggleMetric::LogLoss.compute(&y, &p).unwrap();
        let want = -(0.8f64.ln() + 0.6f64.ln() + 0.4f64.ln() + 0.9f64.ln()) / 4.0;
        assert!((ll - want).abs() < 1e-12);
        let labels = rows(&["a", "b", "a", "c"]);
        let guess = rows(&["a", "b", "b", "c"]);
        assert_eq!(
            KaggleMetric::Accuracy.compute(&labels, &guess).unwrap(),
            0.75
        );
        // a: tp1 fn1 → 2/3; b: tp1 fp1 → 2/3; c: 1 → mean 7/9
        let f1 = KaggleMetric::MacroF1.compute(&labels, &guess).unwrap();
        assert!((f1 - 7.0 / 9.0).abs() < 1e-12);
        assert_eq!(
            KaggleMetric::Accuracy
                .compute(&rows(&["1", "True"]), &rows(&["1.0", "true"]))
                .unwrap(),
            1.0
        );
    }

    #[test]
    fn multiclass_log_loss_renormalises() {
        let y = rows(&["1,0", "0,1"]);
        let p = rows(&["0.2,0.2", "0.1,0.3"]);
        let want = -(0.5f64.ln() + 0.75f64.ln()) / 2.0;
        assert!((KaggleMetric::LogLoss.compute(&y, &p).unwrap() - want).abs() < 1e-12);
    }

    #[test]
    fn infer_from_competition_texts() {
        let cases = [
            (
                "Root-Mean-Squared-Error (RMSE) between the logarithm of the predicted value and the logarithm of the observed sales price",
                Some(KaggleMetric::Rmsle),
            ),
            (
                "Submissions are scored on the root mean squared error.",
                Some(KaggleMetric::Rmse),
            ),
            (
                "evaluated on area under the ROC curve between the predicted probability",
                Some(KaggleMetric::RocAuc),
            ),
            (
                "evaluated using the multi-class logarithmic loss",
                Some(KaggleMetric::LogLoss),
            ),
            (
                "Submissions are evaluated on Multiclass Accuracy",
                Some(KaggleMetric::Accuracy),
            ),
            (
                "evaluated using the macro F1 score",
                Some(KaggleMetric::MacroF1),
            ),
            (
                "evaluated using F1 between the predicted and expected answers",
                Some(KaggleMetric::F1),
            ),
            (
                "scored using MCRMSE, mean columnwise root mean squared error",
                None,
            ),
            (
                "Log of the Mean Absolute Error, calculated for each scalar coupling type",
                None,
            ),
            ("Weighted Root Mean Squared Scaled Error (RMSSE)", None),
        ];
        for (text, want) in cases {
            assert_eq!(KaggleMetric::infer(text), want, "{text}");
        }
    }
}
