//! The shortcut audit: which tasks does a model solve **without** the data? Each task is
//! asked with nothing mounted under `/data` and the prompt says so; k attempts per task
//! (temperature 0.8 by default), through the eval machinery (a run directory with resume
//! and reports). A task solved in at least `flag_threshold` of its attempts is flagged:
//! its answer can be had from memory or from the question alone, so it measures little
//! (the paper dropped a task when 3 of 5 frontier models solved it with no data).
//!
//! Code execution stays available by default (an empty sandbox: the model may compute
//! from what it knows); `no_exec` runs without any sandbox — a cell gets an error saying
//! code cannot run in this audit.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dsbox_kernel::CellResult;
use dsbox_tasks::{SuiteDef, Task};
use serde::{Deserialize, Serialize};

use super::{Result, write_json};
use crate::model::BoxFuture;
use crate::record::ResultRecord;
use crate::rundir::RunManifest;
use crate::sandbox::{BackendInfo, CodeSandbox, SandboxError, SandboxFactory, SandboxRequest};

/// Names the audit's prompt change; recorded in the run.
pub const PROMPT_VERSION: &str = "audit-shortcut/v1";
pub const REPORT_JSON: &str = "audit.json";
pub const REPORT_MD: &str = "audit.md";

/// The line added to the task's instructions.
pub const NO_DATA_INSTRUCTION: &str = "NO DATA IS AVAILABLE FOR THIS TASK: nothing is mounted under /data, so the files named in the question cannot be opened. Answer from what you know (you may still run code, e.g. for arithmetic); give your best answer in <answer></answer> even if you are unsure.";

/// The line when code execution is off.
pub const NO_EXEC_INSTRUCTION: &str = "NO DATA IS AVAILABLE FOR THIS TASK and code cannot be run: nothing is mounted under /data and there is no kernel. Answer from what you know; give your best answer in <answer></answer> even if you are unsure.";

/// The task as the audit asks it: no data at all (not even a suite's shared files).
pub fn no_data_task(task: &Task) -> Task {
    let mut t = task.clone();
    t.data.clear();
    t
}

/// The suite's prompt settings with the no-data instruction added.
pub fn no_data_def(def: &SuiteDef, no_exec: bool) -> SuiteDef {
    let mut d = def.clone();
    d.prompt.instructions.push(
        if no_exec {
            NO_EXEC_INSTRUCTION
        } else {
            NO_DATA_INSTRUCTION
        }
        .to_owned(),
    );
    d.shared_data.clear();
    d
}

/// A "sandbox" that runs nothing: every cell is refused with a message the model sees.
#[derive(Debug, Default, Clone)]
pub struct NoExecFactory;

struct NoExec {
    label: String,
}

impl CodeSandbox for NoExec {
    fn execute<'a>(
        &'a mut self,
        _code: &'a str,
        _timeout: Duration,
    ) -> BoxFuture<'a, crate::sandbox::Result<CellResult>> {
        Box::pin(async move {
            Err(SandboxError::Failed {
                label: self.label.clone(),
                detail: "code execution is off in this audit: answer from what you know".into(),
            })
        })
    }

    fn upload<'a>(
        &'a mut self,
        path: &'a str,
        _data: &'a [u8],
    ) -> BoxFuture<'a, crate::sandbox::Result<()>> {
        Box::pin(async move {
            Err(SandboxError::Transfer {
                label: self.label.clone(),
                path: path.to_owned(),
                detail: "no sandbox in this audit".into(),
            })
        })
    }

    fn download<'a>(
        &'a mut self,
        path: &'a str,
        _max: u64,
    ) -> BoxFuture<'a, crate::sandbox::Result<Vec<u8>>> {
        Box::pin(async move {
            Err(SandboxError::Transfer {
                label: self.label.clone(),
                path: path.to_owned(),
                detail: "no sandbox in this audit".into(),
            })
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, crate::sandbox::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

impl SandboxFactory for NoExecFactory {
    fn create<'a>(
        &'a self,
        request: &'a SandboxRequest,
    ) -> BoxFuture<'a, crate::sandbox::Result<Box<dyn CodeSandbox>>> {
        Box::pin(async move {
            Ok(Box::new(NoExec {
                label: request.label.clone(),
            }) as Box<dyn CodeSandbox>)
        })
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: "none".into(),
            rootfs: "none".into(),
            rootfs_hash: String::new(),
        }
    }
}

/// A task solved without data often enough to be flagged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlaggedTask {
    pub task_id: String,
    pub suite: String,
    pub solved: usize,
    pub attempts: usize,
    pub ground_truth: Option<String>,
    pub predictions: Vec<Option<String>>,
}

/// Per suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteAudit {
    pub tasks: usize,
    pub attempts: usize,
    /// Mean score of the attempts without data (a missing answer counts 0).
    pub accuracy_without_data: f64,
    /// Tasks solved in at least one attempt.
    pub solved_at_least_once: usize,
    pub flagged: usize,
    /// flagged / tasks.
    pub flagged_share: f64,
    /// With a comparison run: the mean score with data over the same tasks, and the
    /// share of it that survives without data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_with_data: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surviving_share: Option<f64>,
    /// Attempts that ended in an infrastructure error (not counted against the model).
    pub errors: usize,
}

/// `audit.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    pub model: String,
    pub k: u32,
    pub flag_threshold: u32,
    pub temperature: Option<f64>,
    pub no_exec: bool,
    pub prompt_version: String,
    pub complete: bool,
    pub suites: BTreeMap<String, SuiteAudit>,
    pub overall: SuiteAudit,
    pub flagged: Vec<FlaggedTask>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compared_with: Option<std::path::PathBuf>,
}

fn solved(r: &ResultRecord) -> bool {
    r.score.is_some_and(|s| s >= 1.0)
}

/// Build the report from the audit run's records (and, optionally, an eval run of the
/// same tasks with data).
pub fn report(
    manifest: &RunManifest,
    records: &[ResultRecord],
    flag_threshold: u32,
    no_exec: bool,
    compare: Option<(&Path, &[ResultRecord])>,
) -> AuditReport {
    let mut by_task: BTreeMap<(String, usize, String), Vec<&ResultRecord>> = BTreeMap::new();
    for r in records {
        by_task
            .entry((r.dataset.clone(), r.index, r.sample_id.clone()))
            .or_default()
            .push(r);
    }
    let with_data: Option<BTreeMap<&str, Vec<f64>>> = compare.map(|(_, rs)| {
        let mut m: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for r in rs {
            m.entry(r.sample_id.as_str())
                .or_default()
                .push(r.score_or_zero());
        }
        m
    });
    let mut flagged = Vec::new();
    let mut per_suite: BTreeMap<String, Vec<(&str, &Vec<&ResultRecord>)>> = BTreeMap::new();
    for ((suite, _, id), rs) in &by_task {
        per_suite
            .entry(suite.clone())
            .or_default()
            .push((id.as_str(), rs));
        let n = rs.iter().filter(|r| solved(r)).count();
        if n >= flag_threshold as usize {
            flagged.push(FlaggedTask {
                task_id: id.clone(),
                suite: suite.clone(),
                solved: n,
                attempts: rs.len(),
                ground_truth: rs[0].ground_truth.clone(),
                predictions: rs.iter().map(|r| r.prediction.clone()).collect(),
            });
        }
    }
    let summarise = |tasks: &[(&str, &Vec<&ResultRecord>)]| -> SuiteAudit {
        let attempts: usize = tasks.iter().map(|(_, rs)| rs.len()).sum();
        let score_sum: f64 = tasks
            .iter()
            .flat_map(|(_, rs)| rs.iter().map(|r| r.score_or_zero()))
            .sum();
        let flagged_n = tasks
            .iter()
            .filter(|(_, rs)| rs.iter().filter(|r| solved(r)).count() >= flag_threshold as usize)
            .count();
        let (acc_with, surviving) = match &with_data {
            Some(m) => {
                let scores: Vec<f64> = tasks
                    .iter()
                    .filter_map(|(id, _)| m.get(id))
                    .flat_map(|v| v.iter().copied())
                    .collect();
                if scores.is_empty() {
                    (None, None)
                } else {
                    let with = scores.iter().sum::<f64>() / scores.len() as f64;
                    let without = if attempts == 0 {
                        0.0
                    } else {
                        score_sum / attempts as f64
                    };
                    (Some(with), (with > 0.0).then(|| without / with))
                }
            }
            None => (None, None),
        };
        SuiteAudit {
            tasks: tasks.len(),
            attempts,
            accuracy_without_data: if attempts == 0 {
                0.0
            } else {
                score_sum / attempts as f64
            },
            solved_at_least_once: tasks
                .iter()
                .filter(|(_, rs)| rs.iter().any(|r| solved(r)))
                .count(),
            flagged: flagged_n,
            flagged_share: if tasks.is_empty() {
                0.0
            } else {
                flagged_n as f64 / tasks.len() as f64
            },
            accuracy_with_data: acc_with,
            surviving_share: surviving,
            errors: tasks
                .iter()
                .flat_map(|(_, rs)| rs.iter())
                .filter(|r| r.end_reason.is_error())
                .count(),
        }
    };
    let suites: BTreeMap<String, SuiteAudit> = per_suite
        .iter()
        .map(|(s, ts)| (s.clone(), summarise(ts)))
        .collect();
    let all: Vec<(&str, &Vec<&ResultRecord>)> = per_suite.values().flatten().copied().collect();
    let planned = manifest.planned_trajectories();
    AuditReport {
        model: manifest.model.name.clone(),
        k: manifest.k,
        flag_threshold,
        temperature: manifest.model.temperature,
        no_exec,
        prompt_version: PROMPT_VERSION.into(),
        complete: records.len() >= planned,
        overall: summarise(&all),
        suites,
        flagged,
        compared_with: compare.map(|(p, _)| p.to_owned()),
    }
}

impl AuditReport {
    /// The table for the terminal.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<22} {:>6} {:>9} {:>13} {:>8} {:>8} {:>10}\n",
            "suite", "tasks", "attempts", "acc (no data)", "flagged", "share", "surviving"
        );
        let row = |name: &str, a: &SuiteAudit| {
            format!(
                "{:<22} {:>6} {:>9} {:>13.3} {:>8} {:>7.1}% {:>10}\n",
                name,
                a.tasks,
                a.attempts,
                a.accuracy_without_data,
                a.flagged,
                a.flagged_share * 100.0,
                a.surviving_share
                    .map_or("-".into(), |x| format!("{:.1}%", x * 100.0)),
            )
        };
        for (n, a) in &self.suites {
            s.push_str(&row(n, a));
        }
        if self.suites.len() > 1 {
            s.push_str(&row("overall", &self.overall));
        }
        if self.flagged.is_empty() {
            s.push_str(&format!(
                "\nno task was solved without data in {} or more of {} attempts\n",
                self.flag_threshold, self.k
            ));
        } else {
            s.push_str(&format!(
                "\nsolved without data ({} or more of {} attempts):\n",
                self.flag_threshold, self.k
            ));
            for f in &self.flagged {
                s.push_str(&format!(
                    "  {}  {}/{}  (answer {})\n",
                    f.task_id,
                    f.solved,
                    f.attempts,
                    f.ground_truth.as_deref().unwrap_or("?")
                ));
            }
        }
        s
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Shortcut audit: {}\n\nEach task was asked with no data mounted ({}), {} attempt(s) per task at temperature {}. A task is flagged when it was solved in at least {} of its attempts.\n\n```\n{}```\n",
            self.model,
            if self.no_exec {
                "and no code execution"
            } else {
                "code execution in an empty sandbox"
            },
            self.k,
            self.temperature
                .map_or("(server default)".into(), |t| t.to_string()),
            self.flag_threshold,
            self.table()
        );
        if !self.complete {
            s.push_str("\nThe audit run is not complete: continue it with `dsbox audit shortcut --resume DIR`.\n");
        }
        s
    }
}

/// Write `audit.json` and `audit.md` into the run directory.
pub fn write(dir: &Path, report: &AuditReport) -> Result<()> {
    write_json(&dir.join(REPORT_JSON), report)?;
    crate::rundir::write_atomic(&dir.join(REPORT_MD), report.markdown().as_bytes())?;
    Ok(())
}

/// The factory of an audit: an empty sandbox from `factory`, or none at all.
pub fn factory(
    no_exec: bool,
    sandbox: Option<Arc<dyn SandboxFactory>>,
) -> Option<Arc<dyn SandboxFactory>> {
    if no_exec {
        Some(Arc::new(NoExecFactory))
    } else {
        sandbox
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::{EndReason, EpisodeTimings};
    use crate::model::Usage;
    use crate::rundir::{ModelInfo, PlannedTask, Selection};

    fn rec(id: &str, traj: u32, score: f64) -> ResultRecord {
        ResultRecord {
            sample_id: id.into(),
            dataset: "s".into(),
            query: "q".into(),
            ground_truth: Some("1".into()),
            prediction: Some("x".into()),
            metrics: Default::default(),
            execution_time: 0.1,
            total_turns: 1,
            success: true,
            index: 0,
            trajectory: traj,
            score: Some(score),
            end_reason: EndReason::Answered,
            error: None,
            error_kind: None,
            tokens: Usage::default(),
            timings: EpisodeTimings::default(),
            cells: 0,
            cell_timeouts: 0,
            trajectory_file: String::new(),
            images: vec![],
            submission: None,
            model: "m".into(),
            finished_at: String::new(),
        }
    }

    fn manifest() -> RunManifest {
        RunManifest {
            format: crate::rundir::FORMAT,
            dsbox_version: "t".into(),
            created: "t".into(),
            model: ModelInfo {
                name: "m".into(),
                kind: "openai".into(),
                base_url: None,
                temperature: Some(0.8),
                top_p: None,
                max_tokens: None,
            },
            scaffold: crate::ScaffoldKind::React,
            settings: Default::default(),
            k: 5,
            suites: vec!["s".into()],
            selection: Selection::default(),
            data_root: None,
            backend: NoExecFactory.info(),
            concurrency: 1,
            tasks: ["s/a", "s/b", "s/c"]
                .iter()
                .map(|id| PlannedTask {
                    id: (*id).into(),
                    suite: "s".into(),
                    index: 0,
                })
                .collect(),
            notes: vec![],
        }
    }

    #[test]
    fn flags_tasks_at_the_threshold() {
        let mut records = Vec::new();
        for (id, wins) in [("s/a", 5), ("s/b", 3), ("s/c", 2)] {
            for j in 0..5u32 {
                records.push(rec(id, j, if j < wins { 1.0 } else { 0.0 }));
            }
        }
        let r = report(&manifest(), &records, 3, false, None);
        let ids: Vec<&str> = r.flagged.iter().map(|f| f.task_id.as_str()).collect();
        assert_eq!(ids, ["s/a", "s/b"]);
        let s = &r.suites["s"];
        assert_eq!(
            (s.tasks, s.attempts, s.flagged, s.solved_at_least_once),
            (3, 15, 2, 3)
        );
        assert!((s.accuracy_without_data - 10.0 / 15.0).abs() < 1e-9);
        assert!(r.complete);
        // Compared with a run with data that solves everything: 2/3 of it survives.
        let with: Vec<ResultRecord> = ["s/a", "s/b", "s/c"]
            .iter()
            .map(|id| rec(id, 0, 1.0))
            .collect();
        let r = report(
            &manifest(),
            &records,
            3,
            false,
            Some((Path::new("/run"), &with)),
        );
        assert!((r.suites["s"].surviving_share.unwrap() - 10.0 / 15.0).abs() < 1e-9);
        assert!(r.table().contains("s/b  3/5"), "{}", r.table());
    }

    #[tokio::test]
    async fn no_exec_refuses_code_with_a_message() {
        let f = NoExecFactory;
        let req = SandboxRequest {
            label: "s/a#0".into(),
            data: vec![],
            submission: false,
            missing: vec![],
        };
        let mut sb = f.create(&req).await.unwrap();
        let err = sb.execute("1+1", Duration::from_secs(1)).await.unwrap_err();
        assert!(err.to_string().contains("code execution is off"), "{err}");
        sb.close().await.unwrap();
    }
}
