//! Execution verification: a trajectory is kept only if its code, re-run from the start in
//! a fresh sandbox (same task data, same rootfs, same cell timeout), reproduces its final
//! answer. The reference trusts what the model says; this does not.
//!
//! The rule, precisely:
//! 1. The cells are the code the episode actually executed, in order: every `<python>`
//!    block of a reply without an answer (react), every `python` tool call of a reply
//!    without an `answer` call (tools). A trajectory that answered without running any
//!    code is **not reproduced** (`no cells`): nothing supports its answer.
//! 2. Every cell is re-run in a new sandbox. A cell that ran cleanly in the episode must
//!    run cleanly again (a cell that raised originally may raise again: agents recover
//!    from errors). Otherwise: **not reproduced** (`cell failed`).
//! 3. The answer must be derivable from the re-run's outputs — the cleaned text of every
//!    re-run cell (stdout, stderr, results, errors), as the model would have seen it:
//!    * the answer's parts are its `@name[value]` values (list_match answers), else the
//!      items of a Python list literal, else the whole answer;
//!    * a part holding numbers is found when **every** number in it appears among the
//!      numbers in the outputs (thousands separators removed): equal, or within the task
//!      metric's relative tolerance, or — for a number written with `d` decimals — closer
//!      than `10^-d` (the printed value rounded or truncated to the answer's precision);
//!      a number followed by `%` also matches its fraction (34.6% ↔ 0.346);
//!    * a part without numbers is found when it occurs in the outputs as a whole word or
//!      phrase, ignoring case.
//!
//!    All parts found: **reproduced**. Otherwise **not reproduced** (`answer not found`),
//!    naming the parts that were missing.
//!
//! Known limits: a small integer answer can be matched by an unrelated number in the
//! output (a row count); an answer computed correctly but never printed is not reproduced
//! (the filter cannot see it either — by design).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dsbox_kernel::CellStatus;
use dsbox_tasks::metric::text::parse_at_pairs;
use dsbox_tasks::pyliteral::{PyValue, literal_eval};
use dsbox_tasks::{Metric, Task};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::episode::Trajectory;
use crate::model::Role;
use crate::protocol::{self, DEFAULT_OBSERVATION_CAP};
use crate::sandbox::{SandboxFactory, SandboxRequest};

/// Why a trajectory was not reproduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    NoAnswer,
    NoCells,
    CellFailed,
    AnswerNotFound,
}

/// The outcome of re-running a trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub reproduced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// One line saying what happened.
    pub detail: String,
    pub cells: usize,
    /// Each re-run cell's status (ok, error, timed_out, …).
    pub statuses: Vec<String>,
    /// The re-run's cleaned outputs equal the episode's observations, cell by cell.
    pub outputs_identical: bool,
    pub found: Vec<String>,
    pub missing: Vec<String>,
    pub seconds: f64,
}

/// A cell the episode executed, with the observation it produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutedCell {
    pub code: String,
    /// The cleaned output as the episode recorded it (None when not found).
    pub observation: Option<String>,
    /// The episode's status of this cell (`ok`, `error`, …), when recorded.
    pub status: Option<String>,
}

fn argument(arguments: &str, key: &str) -> Option<String> {
    let v: Value = serde_json::from_str(arguments).ok()?;
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// The text inside `<information>…</information>` (react), or the whole tool message.
fn observation_text(content: &str) -> String {
    let t = content.trim();
    let t = t.strip_prefix("<information>").unwrap_or(t);
    let t = t.strip_suffix("</information>").unwrap_or(t);
    t.to_owned()
}

/// The cells the episode executed, in order, from its conversation (see the module doc).
pub fn executed_cells(t: &Trajectory) -> Vec<ExecutedCell> {
    let msgs = &t.conversation;
    let mut cells = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        if m.role != Role::Assistant {
            continue;
        }
        if m.tool_calls.is_empty() {
            let action = protocol::parse_action(&m.content);
            if action.answer.is_some() {
                continue;
            }
            if let Some(code) = action.code {
                let observation = msgs
                    .get(i + 1)
                    .filter(|n| n.role == Role::User && n.content.contains("<information>"))
                    .map(|n| observation_text(&n.content));
                cells.push(ExecutedCell {
                    code,
                    observation,
                    status: None,
                });
            }
            continue;
        }
        if m.tool_calls
            .iter()
            .any(|c| c.name == "answer" && argument(&c.arguments, "answer").is_some())
        {
            continue;
        }
        for call in m.tool_calls.iter().filter(|c| c.name == "python") {
            let Some(code) = argument(&call.arguments, "code") else {
                continue;
            };
            let observation = msgs[i + 1..]
                .iter()
                .take_while(|n| n.role == Role::Tool)
                .find(|n| n.tool_call_id.as_deref() == Some(call.id.as_str()))
                .map(|n| n.content.clone());
            cells.push(ExecutedCell {
                code,
                observation,
                status: None,
            });
        }
    }
    // The episode recorded one status per executed cell, in order.
    if cells.len() == t.cells.len() {
        for (c, r) in cells.iter_mut().zip(&t.cells) {
            c.status = Some(r.status.clone());
        }
    }
    cells
}

fn number_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    // A number not glued to a word (`col2` holds no number) and its optional `%`.
    R.get_or_init(|| {
        Regex::new(r"(?:^|[^\w.])(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?P<pct>\s*%)?")
            .expect("valid number regex")
    })
}

fn thousands_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"(\d),(\d{3})\b").expect("valid regex"))
}

/// A number written in an answer.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Written {
    value: f64,
    /// Digits after the decimal point (None in exponent form).
    decimals: Option<usize>,
    percent: bool,
}

fn written_numbers(text: &str) -> Vec<Written> {
    number_re()
        .captures_iter(text)
        .filter_map(|c| {
            let s = c.name("num")?.as_str();
            let value = s.parse::<f64>().ok()?;
            let decimals = if s.contains(['e', 'E']) {
                None
            } else {
                Some(s.split_once('.').map_or(0, |(_, d)| d.len()))
            };
            Some(Written {
                value,
                decimals,
                percent: c.name("pct").is_some(),
            })
        })
        .collect()
}

/// Every number in `outputs` (thousands separators removed).
fn output_numbers(outputs: &str) -> Vec<f64> {
    let mut text = outputs.to_owned();
    // `1,234,567` needs two passes (the matches overlap).
    for _ in 0..2 {
        text = thousands_re().replace_all(&text, "$1$2").into_owned();
    }
    number_re()
        .captures_iter(&text)
        .filter_map(|c| c.name("num")?.as_str().parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .collect()
}

fn number_found(a: &Written, outputs: &[f64], tolerance: f64) -> bool {
    let targets: &[f64] = if a.percent {
        &[a.value, a.value / 100.0]
    } else {
        &[a.value]
    };
    targets.iter().any(|&t| {
        outputs.iter().any(|&o| {
            let diff = (o - t).abs();
            if diff <= 1e-9 * t.abs().max(1.0) {
                return true;
            }
            if tolerance > 0.0 && dsbox_tasks::metric::text::relative_error(o, t) < tolerance {
                return true;
            }
            // Rounding or truncation to the answer's precision (only for the number as
            // written, not its percentage fraction).
            match a.decimals {
                Some(d) if d > 0 && t == a.value => diff < 10f64.powi(-(d as i32)),
                _ => false,
            }
        })
    })
}

fn text_found(part: &str, outputs_lower: &str) -> bool {
    let needle = part.trim().to_lowercase();
    if needle.is_empty() {
        return true;
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut from = 0;
    while let Some(pos) = outputs_lower[from..].find(&needle) {
        let start = from + pos;
        let end = start + needle.len();
        let before = outputs_lower[..start].chars().next_back();
        let after = outputs_lower[end..].chars().next();
        if !word(before) && !word(after) {
            return true;
        }
        from = start + needle.chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// The parts of an answer that must each be found (see the module doc).
pub fn answer_parts(answer: &str) -> Vec<String> {
    let pairs = parse_at_pairs(answer);
    if !pairs.is_empty() {
        return pairs.into_iter().map(|(_, v)| v).collect();
    }
    if let Ok(PyValue::List(items) | PyValue::Tuple(items)) = literal_eval(answer)
        && !items.is_empty()
    {
        return items.iter().map(PyValue::to_py_str).collect();
    }
    vec![answer.trim().to_owned()]
}

/// Which parts of `answer` the outputs support: (found, missing).
pub fn derive(answer: &str, outputs: &str, tolerance: f64) -> (Vec<String>, Vec<String>) {
    let numbers = output_numbers(outputs);
    let lower = outputs.to_lowercase();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for part in answer_parts(answer) {
        let written = written_numbers(&part);
        let ok = if written.is_empty() {
            text_found(&part, &lower)
        } else {
            written.iter().all(|w| number_found(w, &numbers, tolerance))
        };
        if ok {
            found.push(part);
        } else {
            missing.push(part);
        }
    }
    (found, missing)
}

/// The relative tolerance of a task's metric (0 for metrics without one).
pub fn metric_tolerance(task: &Task) -> f64 {
    match Metric::for_task(task) {
        Ok(
            Metric::ExactMatch { tolerance }
            | Metric::ListMatch { tolerance }
            | Metric::EquivalenceByLlm { tolerance },
        ) => tolerance,
        _ => 0.0,
    }
}

fn status_name(status: &CellStatus) -> &'static str {
    match status {
        CellStatus::Ok => "ok",
        CellStatus::Error => "error",
        CellStatus::Interrupted => "interrupted",
        CellStatus::TimedOut => "timed_out",
        CellStatus::KernelLost(_) => "kernel_lost",
    }
}

/// Settings of the re-runs.
#[derive(Debug, Clone)]
pub struct VerifySettings {
    pub cell_timeout: Duration,
    pub observation_cap: usize,
}

impl Default for VerifySettings {
    fn default() -> Self {
        VerifySettings {
            cell_timeout: Duration::from_secs(180),
            observation_cap: DEFAULT_OBSERVATION_CAP,
        }
    }
}

/// A verification that could not be carried out (the sandbox would not start or went
/// away): an infrastructure problem, not a verdict on the trajectory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VerifyError(pub String);

fn verdict(failure: Failure, detail: String, cells: usize) -> Verification {
    Verification {
        reproduced: false,
        failure: Some(failure),
        detail,
        cells,
        statuses: vec![],
        outputs_identical: false,
        found: vec![],
        missing: vec![],
        seconds: 0.0,
    }
}

/// Re-run `t`'s cells in a fresh sandbox of `task`'s data and judge its answer (see the
/// module doc).
pub async fn verify(
    t: &Trajectory,
    task: &Task,
    factory: &dyn SandboxFactory,
    settings: &VerifySettings,
) -> Result<Verification, VerifyError> {
    let started = Instant::now();
    let Some(answer) = t.prediction.as_deref().filter(|a| !a.trim().is_empty()) else {
        return Ok(verdict(
            Failure::NoAnswer,
            "the trajectory has no final answer".into(),
            0,
        ));
    };
    let cells = executed_cells(t);
    if cells.is_empty() {
        return Ok(verdict(
            Failure::NoCells,
            "answered without running any code: nothing supports the answer".into(),
            0,
        ));
    }
    let mut request = SandboxRequest::for_task(task, t.trajectory);
    request.label = format!("{}#{}-verify", task.id, t.trajectory);
    let mut sandbox = factory
        .create(&request)
        .await
        .map_err(|e| VerifyError(e.to_string()))?;
    let mut statuses = Vec::new();
    let mut outputs = Vec::new();
    let mut identical = true;
    let mut failed: Option<String> = None;
    for (n, cell) in cells.iter().enumerate() {
        let result = match sandbox.execute(&cell.code, settings.cell_timeout).await {
            Ok(r) => r,
            Err(e) => {
                let _ = sandbox.close().await;
                return Err(VerifyError(format!("cell {} could not run: {e}", n + 1)));
            }
        };
        let cleaned =
            protocol::clean_output(&result.items, &result.truncation, settings.observation_cap);
        let status = status_name(&result.status);
        if status != "ok" && cell.status.as_deref().is_none_or(|s| s == "ok") && failed.is_none() {
            let what = result
                .error()
                .map(|(name, value, _)| format!("{name}: {value}"))
                .unwrap_or_else(|| status.to_owned());
            failed = Some(format!(
                "cell {} ran cleanly in the episode but not on re-run ({what})",
                n + 1
            ));
        }
        if cell
            .observation
            .as_deref()
            .is_some_and(|o| o.trim() != cleaned.text.trim())
        {
            identical = false;
        }
        statuses.push(status.to_owned());
        outputs.push(cleaned.text);
    }
    if let Err(e) = sandbox.close().await {
        tracing::warn!(task = %task.id, "closing a verification sandbox: {e}");
    }
    let all = outputs.join("\n");
    let (found, missing) = derive(answer, &all, metric_tolerance(task));
    let mut v = Verification {
        reproduced: false,
        failure: None,
        detail: String::new(),
        cells: cells.len(),
        statuses,
        outputs_identical: identical,
        found,
        missing,
        seconds: started.elapsed().as_secs_f64(),
    };
    if let Some(detail) = failed {
        v.failure = Some(Failure::CellFailed);
        v.detail = detail;
    } else if !v.missing.is_empty() {
        v.failure = Some(Failure::AnswerNotFound);
        v.detail = format!(
            "the answer {answer:?} is not in the re-run's outputs (missing: {})",
            v.missing.join(", ")
        );
    } else {
        v.reproduced = true;
        v.detail = format!("{} cell(s) re-run; the answer is in their outputs", v.cells);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::{CellRecord, EndReason, EpisodeTimings};
    use crate::model::{Message, ToolCall, Usage};

    fn found(answer: &str, outputs: &str, tol: f64) -> bool {
        derive(answer, outputs, tol).1.is_empty()
    }

    #[test]
    fn numbers_match_as_printed_rounded_or_truncated() {
        assert!(found("0.20", "[stdout] ANSWER: 0.2", 0.0));
        assert!(found("0.20", "[stdout] 0.2049", 0.0), "truncated");
        assert!(found("0.21", "[stdout] 0.2051", 0.0), "rounded");
        assert!(!found("0.23", "[stdout] 0.2049", 0.0));
        // Integers are exact unless the metric has a tolerance.
        assert!(!found("101", "[stdout] 100", 0.0));
        assert!(found("101", "[stdout] 100", 0.03));
        assert!(found("1234567", "[stdout] total: 1,234,567", 0.0));
        assert!(found("34.65%", "[stdout] 0.3465", 0.0));
        assert!(found("1.5e-3", "0.0015", 0.0));
        // A number glued to a word is not a number.
        assert!(!found("2", "[stdout] col2", 0.0));
        assert!(!found("-0.5", "[stdout] 0.5", 0.0));
    }

    #[test]
    fn parts_of_list_and_pair_answers_are_each_needed() {
        assert_eq!(answer_parts("@mean[2.50] @max[4]"), ["2.50", "4"]);
        assert_eq!(answer_parts("['North', 'East']"), ["North", "East"]);
        assert!(found("@mean[2.50] @max[4]", "mean 2.5\nmax 4.0", 0.0));
        let (f, m) = derive("@mean[2.50] @max[9]", "mean 2.5\nmax 4.0", 0.0);
        assert_eq!((f, m), (vec!["2.50".to_owned()], vec!["9".to_owned()]));
        assert!(found(
            "['North', 'East']",
            "Index(['East', 'North'], dtype='object')",
            0.0
        ));
        // Text parts are whole words, any case.
        assert!(found("B", "[stdout] ANSWER: B", 0.0));
        assert!(!found("North", "[stdout] Northern", 0.0));
        assert!(found("2024-03-01", "[stdout] peak on 2024-03-01", 0.0));
    }

    fn trajectory(conversation: Vec<Message>, statuses: &[&str]) -> Trajectory {
        Trajectory {
            prediction: Some("5".into()),
            ground_truth: None,
            query: "q".into(),
            turns: 3,
            conversation,
            extra_info: Value::Null,
            task_id: "s/a".into(),
            suite: "s".into(),
            index: 0,
            trajectory: 0,
            model: "m".into(),
            scaffold: "react".into(),
            end_reason: EndReason::Answered,
            error: None,
            error_kind: None,
            tokens: Usage::default(),
            timings: EpisodeTimings::default(),
            cells: statuses
                .iter()
                .map(|s| CellRecord {
                    turn: 1,
                    status: (*s).into(),
                    duration_ms: 1.0,
                    chars_cut: 0,
                    truncation: Default::default(),
                })
                .collect(),
            images: vec![],
            submission: None,
            metrics: Default::default(),
            score: None,
        }
    }

    #[test]
    fn executed_cells_follow_the_protocol() {
        let t = trajectory(
            vec![
                Message::system("s"),
                Message::user("q"),
                Message::assistant("<python>x = 5</python>"),
                Message::user("\n<information></information>\n"),
                Message::assistant("thinking, no action"),
                Message::user(protocol::NO_ACTION_MESSAGE),
                Message::assistant("<python>print(x)</python>"),
                Message::user("\n<information>[stdout] 5\n</information>\n"),
                Message::assistant("<answer>5</answer>"),
            ],
            &["ok", "ok"],
        );
        let cells = executed_cells(&t);
        assert_eq!(cells.len(), 2);
        assert_eq!(cells[1].code, "print(x)");
        assert_eq!(cells[1].observation.as_deref(), Some("[stdout] 5\n"));
        assert_eq!(cells[1].status.as_deref(), Some("ok"));

        let mut call = Message::assistant("");
        call.tool_calls = vec![ToolCall {
            id: "c1".into(),
            name: "python".into(),
            arguments: r#"{"code": "print(5)"}"#.into(),
        }];
        let mut done = Message::assistant("");
        done.tool_calls = vec![ToolCall {
            id: "c2".into(),
            name: "answer".into(),
            arguments: r#"{"answer": "5"}"#.into(),
        }];
        let t = trajectory(
            vec![
                Message::system("s"),
                Message::user("q"),
                call,
                Message::tool("c1", "[stdout] 5"),
                done,
            ],
            &["ok"],
        );
        let cells = executed_cells(&t);
        assert_eq!(cells.len(), 1);
        assert_eq!(cells[0].code, "print(5)");
        assert_eq!(cells[0].observation.as_deref(), Some("[stdout] 5"));
    }
}
