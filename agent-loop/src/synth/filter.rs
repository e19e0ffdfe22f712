//! Stage 3: keep the trajectories worth training on, and say why for every one.
//!
//! Checks, per trajectory, cheapest first (the first that fails is the decision):
//! 1. the episode ended with an answer (`episode-error`, `no-answer`);
//! 2. its turns are within `[min_turns, max_turns]` (`turns-out-of-range`);
//! 3. its query is not a near-duplicate of the seed question it was generated from
//!    (`duplicates-seed`: a benchmark question must not leak into training data);
//! 4. answer agreement across the query's k rollouts: answers are grouped when the task's
//!    metric calls them equal; the largest group is the majority. The query passes when
//!    the majority holds at least `agreement` of its finished rollouts (`no-agreement`),
//!    and the trajectory must be in it (`disagrees-with-majority`). 0 turns it off; with
//!    k = 1 it always passes;
//! 5. with `require_correct`, the answer must also score 1 against the generated answer
//!    (`wrong-answer`);
//! 6. execution verification ([`super::verify`]): `not-reproduced` (or `verify-error` when
//!    the sandbox failed: retried next time);
//! 7. the LLM-judge rubric ([`super::judge`]): `judge-below-threshold` (or `judge-error`,
//!    retried next time);
//! 8. near-duplicate queries ([`super::dedup`]) among the queries that still have a
//!    trajectory, compared within the same data files and without the data paths in the
//!    text: the first keeps its trajectories, later ones are `near-duplicate` (this runs
//!    last, so a query is never dropped for resembling one that failed other checks);
//! 9. at most `per_query` trajectories per query, best judged first (`per-query-cap`).
//!
//! Output, in `RUN/filter/` (or another directory): `decisions.jsonl` (one line per
//! trajectory: keep or drop, the reason, a one-line detail and every check's figures),
//! `summary.json` (counts per reason, the parameters), and `kept.jsonl` (the kept
//! trajectories, what `export` reads) — each rewritten atomically at the end. The
//! expensive results (re-runs, judge replies) are appended to `checks.jsonl` as they
//! finish and reused by the next run of the filter, so an interrupted filter continues
//! where it stopped and changing a threshold costs nothing.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dsbox_tasks::metric::text::parse_at_pairs;
use dsbox_tasks::pyliteral::py_float;
use dsbox_tasks::{Metric, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::dedup::{self, Candidate};
use super::judge::{self, JudgeScores, RUBRIC_VERSION};
use super::queries::pairs_literal;
use super::stage::StageManifest;
use super::trajectories::run_suite;
use super::verify::{self, Verification, VerifySettings};
use super::{Result, SynthError, io, lock_dir, write_json};
use crate::episode::{EndReason, Trajectory};
use crate::model::Model;
use crate::record::ResultRecord;
use crate::sandbox::SandboxFactory;

pub const FILTER_DIR: &str = "filter";
pub const DECISIONS: &str = "decisions.jsonl";
pub const SUMMARY: &str = "summary.json";
pub const KEPT: &str = "kept.jsonl";
pub const CHECKS: &str = "checks.jsonl";

/// The LLM-judge step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeParams {
    pub model: String,
    pub threshold: f64,
    pub rubric: String,
}

/// What the filter checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterParams {
    pub min_turns: u32,
    pub max_turns: u32,
    /// Share of a query's rollouts the majority answer needs (0: off).
    pub agreement: f64,
    pub require_correct: bool,
    pub verify: bool,
    pub judge: Option<JudgeParams>,
    /// Near-duplicate similarity threshold (None: off).
    pub dedup_threshold: Option<f64>,
    /// Also drop queries that near-duplicate their seed question.
    pub seed_dedup: bool,
    pub per_query: Option<usize>,
}

impl FilterParams {
    /// The defaults for a run whose episodes had `max_turns` turns.
    pub fn defaults(max_turns: u32) -> FilterParams {
        FilterParams {
            min_turns: 2,
            max_turns,
            agreement: 0.5,
            require_correct: false,
            verify: true,
            judge: None,
            dedup_threshold: Some(dedup::DEFAULT_THRESHOLD),
            seed_dedup: true,
            per_query: None,
        }
    }

    /// Reject values that make no sense, naming the flag.
    pub fn check(&self) -> Result<()> {
        let bad = |what: &str, detail: String| {
            Err(SynthError::Invalid {
                what: what.into(),
                detail,
            })
        };
        if self.min_turns > self.max_turns {
            return bad(
                "--min-turns/--max-turns",
                format!("the range {}..={} is empty", self.min_turns, self.max_turns),
            );
        }
        if !(0.0..=1.0).contains(&self.agreement) {
            return bad(
                "--agreement",
                format!("{} is not a share between 0 and 1", self.agreement),
            );
        }
        if let Some(j) = &self.judge
            && !(0.0..=1.0).contains(&j.threshold)
        {
            return bad(
                "--judge-threshold",
                format!("{} is not between 0 and 1", j.threshold),
            );
        }
        if let Some(t) = self.dedup_threshold
            && !(t > 0.0 && t <= 1.0)
        {
            return bad(
                "--dedup-threshold",
                format!("{t} is not in (0, 1] (use --no-dedup to turn it off)"),
            );
        }
        if self.per_query == Some(0) {
            return bad("--per-query", "must be at least 1".into());
        }
        Ok(())
    }
}

/// Why a trajectory was kept or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Kept,
    EpisodeError,
    NoAnswer,
    TurnsOutOfRange,
    DuplicatesSeed,
    NoAgreement,
    DisagreesWithMajority,
    WrongAnswer,
    NotReproduced,
    VerifyError,
    JudgeBelowThreshold,
    JudgeError,
    NearDuplicate,
    PerQueryCap,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Kept => "kept",
            Reason::EpisodeError => "episode-error",
            Reason::NoAnswer => "no-answer",
            Reason::TurnsOutOfRange => "turns-out-of-range",
            Reason::DuplicatesSeed => "duplicates-seed",
            Reason::NoAgreement => "no-agreement",
            Reason::DisagreesWithMajority => "disagrees-with-majority",
            Reason::WrongAnswer => "wrong-answer",
            Reason::NotReproduced => "not-reproduced",
            Reason::VerifyError => "verify-error",
            Reason::JudgeBelowThreshold => "judge-below-threshold",
            Reason::JudgeError => "judge-error",
            Reason::NearDuplicate => "near-duplicate",
            Reason::PerQueryCap => "per-query-cap",
        }
    }
}

/// A query's answer agreement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub majority: String,
    pub count: usize,
    /// Finished rollouts of the query.
    pub of: usize,
    pub share: f64,
}

/// One line of `decisions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub task_id: String,
    pub trajectory: u32,
    pub trajectory_file: String,
    pub keep: bool,
    pub reason: Reason,
    pub detail: String,
    pub turns: u32,
    pub answer: Option<String>,
    /// Score against the generated answer.
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<Agreement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeScores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterSummary {
    pub run: PathBuf,
    pub created: String,
    pub params: FilterParams,
    pub trajectories: usize,
    pub kept: usize,
    pub queries: usize,
    pub queries_kept: usize,
    pub by_reason: BTreeMap<Reason, usize>,
    /// Re-runs done by this call / reused from earlier calls.
    pub verified_now: usize,
    pub verified_cached: usize,
    pub judged_now: usize,
    pub judged_cached: usize,
}

impl FilterSummary {
    /// `5 no-answer, 3 not-reproduced` (drops only).
    pub fn drops(&self) -> String {
        let parts: Vec<String> = self
            .by_reason
            .iter()
            .filter(|(r, _)| **r != Reason::Kept)
            .map(|(r, n)| format!("{n} {}", r.as_str()))
            .collect();
        if parts.is_empty() {
            "none dropped".into()
        } else {
            parts.join(", ")
        }
    }

    /// A small table for the terminal.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<26} {:>6}\n{:<26} {:>6}\n{:<26} {:>6}\n",
            "trajectories",
            self.trajectories,
            "queries",
            self.queries,
            "queries with a kept one",
            self.queries_kept
        );
        for (r, n) in &self.by_reason {
            s.push_str(&format!("{:<26} {:>6}\n", r.as_str(), n));
        }
        s
    }
}

/// One line of `kept.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptLine {
    pub task_id: String,
    pub trajectory: u32,
    pub trajectory_file: String,
}

/// A cached expensive check.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckLine {
    check: String,
    task_id: String,
    trajectory: u32,
    /// Identifies the trajectory's version (a redone trajectory is checked again).
    finished_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    judge_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rubric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verification: Option<Verification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    judge: Option<JudgeScores>,
}

type CacheKey = (String, u32, String);

/// A check to run: (item index, its result or why it could not run).
type Job<T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = (usize, std::result::Result<T, String>)> + Send>,
>;

/// `checks.jsonl`: read once, appended to (one write + fsync per line).
struct Cache {
    path: PathBuf,
    file: Option<File>,
    verify: HashMap<CacheKey, Verification>,
    judge: HashMap<CacheKey, (String, String, JudgeScores)>,
}

impl Cache {
    fn open(path: PathBuf) -> Result<Cache> {
        let mut cache = Cache {
            path: path.clone(),
            file: None,
            verify: HashMap::new(),
            judge: HashMap::new(),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(&path)(e)),
        };
        // A line cut short by a crash is not valid JSON: it is skipped (that check runs
        // again).
        for line in text.lines() {
            let Ok(c) = serde_json::from_str::<CheckLine>(line) else {
                continue;
            };
            let key = (c.task_id, c.trajectory, c.finished_at);
            match (c.check.as_str(), c.verification, c.judge) {
                ("verify", Some(v), _) => {
                    cache.verify.insert(key, v);
                }
                ("judge", _, Some(j)) => {
                    cache.judge.insert(
                        key,
                        (
                            c.judge_model.unwrap_or_default(),
                            c.rubric.unwrap_or_default(),
                            j,
                        ),
                    );
                }
                _ => {}
            }
        }
        Ok(cache)
    }

    fn append(&mut self, line: &CheckLine) -> Result<()> {
        if self.file.is_none() {
            // A partial last line (no newline) would glue onto the next one.
            let needs_newline = std::fs::read(&self.path)
                .map(|b| b.last().is_some_and(|c| *c != b'\n'))
                .unwrap_or(false);
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(io(&self.path))?;
            if needs_newline {
                f.write_all(b"\n").map_err(io(&self.path))?;
            }
            self.file = Some(f);
        }
        let mut bytes = serde_json::to_vec(line).map_err(|e| SynthError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        bytes.push(b'\n');
        let f = self.file.as_mut().expect("opened above");
        f.write_all(&bytes).map_err(io(&self.path))?;
        f.sync_data().map_err(io(&self.path))
    }
}

/// Progress messages of the filter.
pub trait FilterObserver: Send + Sync {
    fn message(&self, _text: &str) {}
    /// One expensive check finished (`what`: verify or judge).
    fn checked(&self, _what: &str, _done: usize, _total: usize) {}
}

/// Observes nothing.
#[derive(Debug, Default)]
pub struct QuietFilter;

impl FilterObserver for QuietFilter {}

/// What runs the expensive checks.
#[derive(Clone)]
pub struct FilterSetup {
    pub params: FilterParams,
    /// Makes the verification sandboxes (required when `params.verify`).
    pub factory: Option<Arc<dyn SandboxFactory>>,
    /// The judge (required when `params.judge`).
    pub judge: Option<Arc<dyn Model>>,
    pub concurrency: usize,
    pub verify: VerifySettings,
}

/// The filter's result.
#[derive(Debug)]
pub struct FilterOutcome {
    pub summary: FilterSummary,
    pub decisions: Vec<Decision>,
    /// Stopped by a cancel before every check ran: nothing but the check cache was
    /// written; run the filter again to continue.
    pub interrupted: bool,
    pub out: PathBuf,
}

fn norm(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
        .trim_end_matches('.')
        .to_owned()
}

/// Whether two answers to `task` are the same answer: equal after normalising, or equal
/// by the task's metric with one of them as the ground truth.
pub fn same_answer(task: &Task, a: &str, b: &str) -> bool {
    if norm(a) == norm(b) {
        return true;
    }
    // `5` and `5.0` are one answer whatever the metric's tolerance.
    if let (Some(x), Some(y)) = (py_float(a), py_float(b))
        && x == y
    {
        return true;
    }
    let truth = match Metric::for_task(task) {
        Ok(Metric::ListMatch { .. }) => {
            let pairs = parse_at_pairs(b);
            if pairs.is_empty() {
                return false;
            }
            pairs_literal(&pairs)
        }
        Ok(Metric::ExactMatch { .. } | Metric::FuzzyExactMatch { .. } | Metric::Dabstep) => {
            b.to_owned()
        }
        _ => return false,
    };
    let Ok(metric) = Metric::for_task(task) else {
        return false;
    };
    let mut t = task.clone();
    t.answer = Some(Value::String(truth));
    metric.score(a, &t).is_ok_and(|s| s.value >= 1.0)
}

/// Group a query's answers; the majority group first. `answers`: (trajectory, answer,
/// scored 1 against the reference).
fn clusters(task: &Task, answers: &[(u32, String, bool)]) -> Vec<(String, Vec<u32>, bool)> {
    let mut groups: Vec<(String, Vec<u32>, bool)> = Vec::new();
    for (traj, a, correct) in answers {
        match groups
            .iter_mut()
            .find(|(rep, _, _)| same_answer(task, a, rep))
        {
            Some(g) => {
                g.1.push(*traj);
                g.2 |= *correct;
            }
            None => groups.push((a.clone(), vec![*traj], *correct)),
        }
    }
    // Largest first; a tie goes to the group that matches the generated answer, then to
    // the earliest.
    groups.sort_by(|x, y| y.1.len().cmp(&x.1.len()).then(y.2.cmp(&x.2)));
    groups
}

fn load_trajectory(run: &Path, file: &str) -> std::result::Result<Trajectory, String> {
    let path = run.join(file);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: not a trajectory: {e}", path.display()))
}

/// Run `jobs` at most `limit` at a time; stops early (returning `true`) when `cancel`
/// turns true.
async fn run_jobs<T: Send + 'static>(
    jobs: Vec<Job<T>>,
    limit: usize,
    cancel: &mut watch::Receiver<bool>,
    mut done: impl FnMut((usize, std::result::Result<T, String>)),
) -> bool {
    let mut set = JoinSet::new();
    let mut queue = jobs.into_iter();
    let mut cancel_open = true;
    loop {
        if *cancel.borrow() {
            set.abort_all();
            while set.join_next().await.is_some() {}
            return true;
        }
        while set.len() < limit.max(1) {
            match queue.next() {
                Some(job) => {
                    set.spawn(job);
                }
                None => break,
            }
        }
        if set.is_empty() {
            return false;
        }
        tokio::select! {
            biased;
            changed = cancel.changed(), if cancel_open => {
                if changed.is_err() {
                    cancel_open = false;
                }
            }
            Some(r) = set.join_next() => {
                match r {
                    Ok(t) => done(t),
                    Err(e) if !e.is_cancelled() => tracing::error!("a filter check panicked: {e}"),
                    Err(_) => {}
                }
            }
        }
    }
}

/// Per-trajectory working state.
struct Item {
    record: ResultRecord,
    task: Arc<Task>,
    decision: Option<(Reason, String)>,
    agreement: Option<Agreement>,
    verification: Option<Verification>,
    judge: Option<JudgeScores>,
    duplicate: Option<(String, f64)>,
}

impl Item {
    fn key(&self) -> CacheKey {
        (
            self.record.sample_id.clone(),
            self.record.trajectory,
            self.record.finished_at.clone(),
        )
    }

    fn decide(&mut self, reason: Reason, detail: String) {
        if self.decision.is_none() {
            self.decision = Some((reason, detail));
        }
    }
}

/// Filter the trajectories of `run` (a `dsbox synth trajectories` run) into `out`
/// (default `RUN/filter`). See the module doc.
pub async fn run_filter(
    run: &Path,
    out: Option<&Path>,
    setup: &FilterSetup,
    observer: &dyn FilterObserver,
    mut cancel: watch::Receiver<bool>,
) -> Result<FilterOutcome> {
    let p = &setup.params;
    p.check()?;
    let stage = StageManifest::read(run, "trajectories")?.trajectories(run)?;
    let (manifest, records) = crate::rundir::read_run(run)?;
    let suite = run_suite(run, &stage.name)?;
    let out = out.map_or_else(|| run.join(FILTER_DIR), Path::to_owned);
    let _lock = lock_dir(&out)?;
    let cache = Arc::new(Mutex::new(Cache::open(out.join(CHECKS))?));
    let tasks: HashMap<&str, Arc<Task>> = suite
        .tasks
        .iter()
        .map(|t| (t.id.as_str(), Arc::new(t.clone())))
        .collect();

    // Trajectories in plan order (task, then trajectory number).
    let order: HashMap<&str, usize> = manifest
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let mut records = records;
    records.sort_by_key(|r| {
        (
            order
                .get(r.sample_id.as_str())
                .copied()
                .unwrap_or(usize::MAX),
            r.trajectory,
        )
    });
    let mut items: Vec<Item> = Vec::new();
    for r in records {
        let Some(task) = tasks.get(r.sample_id.as_str()) else {
            observer.message(&format!(
                "{}: not a task of the run's suite; its trajectory {} is skipped",
                r.sample_id, r.trajectory
            ));
            continue;
        };
        items.push(Item {
            record: r,
            task: task.clone(),
            decision: None,
            agreement: None,
            verification: None,
            judge: None,
            duplicate: None,
        });
    }

    // --- cheap checks ---
    let mut by_task: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        by_task
            .entry(
                order
                    .get(it.record.sample_id.as_str())
                    .copied()
                    .unwrap_or(usize::MAX),
            )
            .or_default()
            .push(i);
    }
    for idx in by_task.values() {
        let task = items[idx[0]].task.clone();
        let seed_dup = match (p.seed_dedup, p.dedup_threshold) {
            (true, Some(th)) => task
                .metadata
                .get("synth")
                .and_then(|s| s.get("seed_question"))
                .and_then(Value::as_str)
                .map(|q| {
                    (
                        dedup::similarity(&task.question, q),
                        task.metadata["synth"]
                            .get("seed_id")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_owned(),
                    )
                })
                .filter(|(s, _)| *s >= th),
            _ => None,
        };
        let answers: Vec<(u32, String, bool)> = idx
            .iter()
            .filter_map(|&i| {
                let r = &items[i].record;
                let a = r
                    .prediction
                    .as_ref()
                    .filter(|_| r.end_reason == EndReason::Answered)?;
                Some((r.trajectory, a.clone(), r.score == Some(1.0)))
            })
            .collect();
        let groups = clusters(&task, &answers);
        let agreement = groups.first().map(|(rep, members, _)| Agreement {
            majority: rep.clone(),
            count: members.len(),
            of: idx.len(),
            share: members.len() as f64 / idx.len() as f64,
        });
        for &i in idx {
            let it = &mut items[i];
            it.agreement = agreement.clone();
            let r = &it.record;
            let turns = r.total_turns;
            if r.end_reason.is_error() {
                let d = format!(
                    "the episode ended in {}: {}",
                    r.end_reason.as_str(),
                    r.error.clone().unwrap_or_default()
                );
                it.decide(Reason::EpisodeError, d);
                continue;
            }
            let Some(answer) = r
                .prediction
                .clone()
                .filter(|_| r.end_reason == EndReason::Answered)
            else {
                it.decide(Reason::NoAnswer, format!("no answer within {turns} turns"));
                continue;
            };
            if turns < p.min_turns || turns > p.max_turns {
                it.decide(
                    Reason::TurnsOutOfRange,
                    format!("{turns} turns, outside {}..={}", p.min_turns, p.max_turns),
                );
                continue;
            }
            if let Some((s, seed)) = &seed_dup {
                it.duplicate = Some((seed.clone(), *s));
                it.decide(
                    Reason::DuplicatesSeed,
                    format!(
                        "the query near-duplicates its seed question {seed} (similarity {s:.2})"
                    ),
                );
                continue;
            }
            if p.agreement > 0.0
                && let Some((rep, members, _)) = groups.first()
            {
                let share = members.len() as f64 / idx.len() as f64;
                if share + 1e-12 < p.agreement {
                    it.decide(
                        Reason::NoAgreement,
                        format!(
                            "the most common answer {rep:?} has {} of {} rollouts ({share:.2} < {})",
                            members.len(),
                            idx.len(),
                            p.agreement
                        ),
                    );
                    continue;
                }
                if !members.contains(&r.trajectory) {
                    it.decide(
                        Reason::DisagreesWithMajority,
                        format!(
                            "answer {answer:?} differs from the majority {rep:?} ({} of {})",
                            members.len(),
                            idx.len()
                        ),
                    );
                    continue;
                }
            }
            if p.require_correct && r.score != Some(1.0) {
                let truth = r.ground_truth.clone().unwrap_or_else(|| "(none)".into());
                it.decide(
                    Reason::WrongAnswer,
                    format!("answer {answer:?} does not match the generated answer {truth:?}"),
                );
            }
        }
    }

    // --- execution verification ---
    let mut verified_now = 0;
    let mut verified_cached = 0;
    if p.verify {
        let factory = setup.factory.clone().ok_or_else(|| SynthError::Invalid {
            what: "verification".into(),
            detail: "no sandbox factory was given (pass --no-verify to skip it)".into(),
        })?;
        let mut jobs: Vec<Job<Verification>> = Vec::new();
        for (i, it) in items.iter_mut().enumerate() {
            if it.decision.is_some() {
                continue;
            }
            if let Some(v) = cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .verify
                .get(&it.key())
            {
                it.verification = Some(v.clone());
                verified_cached += 1;
                continue;
            }
            let (task, file, run) = (
                it.task.clone(),
                it.record.trajectory_file.clone(),
                run.to_owned(),
            );
            let (factory, settings, cache, key) = (
                factory.clone(),
                setup.verify.clone(),
                cache.clone(),
                it.key(),
            );
            jobs.push(Box::pin(async move {
                let t = match load_trajectory(&run, &file) {
                    Ok(t) => t,
                    Err(e) => return (i, Err(e)),
                };
                let result = verify::verify(&t, &task, factory.as_ref(), &settings)
                    .await
                    .map_err(|e| e.0);
                if let Ok(v) = &result {
                    let line = CheckLine {
                        check: "verify".into(),
                        task_id: key.0,
                        trajectory: key.1,
                        finished_at: key.2,
                        judge_model: None,
                        rubric: None,
                        verification: Some(v.clone()),
                        judge: None,
                    };
                    if let Err(e) = cache
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .append(&line)
                    {
                        tracing::warn!("cannot record a verification: {e}");
                    }
                }
                (i, result)
            }));
        }
        let total = jobs.len();
        let mut results = Vec::new();
        let interrupted = run_jobs(jobs, setup.concurrency, &mut cancel, |r| {
            results.push(r);
            observer.checked("verify", results.len(), total);
        })
        .await;
        verified_now = results.len();
        if interrupted {
            return Ok(interrupted_outcome(run, &out, p));
        }
        for (i, r) in results {
            match r {
                Ok(v) => items[i].verification = Some(v),
                Err(e) => items[i].decide(
                    Reason::VerifyError,
                    format!("verification could not run ({e}); run the filter again to retry"),
                ),
            }
        }
        for it in items.iter_mut() {
            if let Some(v) = &it.verification
                && !v.reproduced
            {
                let d = v.detail.clone();
                it.decide(Reason::NotReproduced, d);
            }
        }
    }

    // --- LLM judge ---
    let mut judged_now = 0;
    let mut judged_cached = 0;
    if let Some(jp) = &p.judge {
        let model = setup.judge.clone().ok_or_else(|| SynthError::Invalid {
            what: "the LLM judge".into(),
            detail: "no judge model was given (pass --no-judge to skip it)".into(),
        })?;
        let mut jobs: Vec<Job<JudgeScores>> = Vec::new();
        for (i, it) in items.iter_mut().enumerate() {
            if it.decision.is_some() {
                continue;
            }
            let cached = cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .judge
                .get(&it.key())
                .filter(|(m, r, _)| *m == jp.model && r == RUBRIC_VERSION)
                .map(|(_, _, s)| s.clone());
            if let Some(s) = cached {
                it.judge = Some(s);
                judged_cached += 1;
                continue;
            }
            let (task, file, run) = (
                it.task.clone(),
                it.record.trajectory_file.clone(),
                run.to_owned(),
            );
            let (model, cache, key, judge_model) =
                (model.clone(), cache.clone(), it.key(), jp.model.clone());
            jobs.push(Box::pin(async move {
                let t = match load_trajectory(&run, &file) {
                    Ok(t) => t,
                    Err(e) => return (i, Err(e)),
                };
                let result = judge::judge(model.as_ref(), &task, &t).await;
                if let Ok(s) = &result {
                    let line = CheckLine {
                        check: "judge".into(),
                        task_id: key.0,
                        trajectory: key.1,
                        finished_at: key.2,
                        judge_model: Some(judge_model),
                        rubric: Some(RUBRIC_VERSION.into()),
                        verification: None,
                        judge: Some(s.clone()),
                    };
                    if let Err(e) = cache
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .append(&line)
                    {
                        tracing::warn!("cannot record a judgement: {e}");
                    }
                }
                (i, result)
            }));
        }
        let total = jobs.len();
        let mut results = Vec::new();
        let interrupted = run_jobs(jobs, setup.concurrency, &mut cancel, |r| {
            results.push(r);
            observer.checked("judge", results.len(), total);
        })
        .await;
        judged_now = results.len();
        if interrupted {
            return Ok(interrupted_outcome(run, &out, p));
        }
        for (i, r) in results {
            match r {
                Ok(s) => items[i].judge = Some(s),
                Err(e) => items[i].decide(
                    Reason::JudgeError,
                    format!("{e}; run the filter again to retry"),
                ),
            }
        }
        for it in items.iter_mut() {
            if let Some(s) = &it.judge
                && s.total + 1e-12 < jp.threshold
            {
                let d = format!(
                    "judge total {:.2} < {} (executability {}, answer quality {}, alignment {}, technical {}): {}",
                    s.total,
                    jp.threshold,
                    s.executability,
                    s.answer_quality,
                    s.alignment,
                    s.technical,
                    s.rationale
                );
                it.decide(Reason::JudgeBelowThreshold, d);
            }
        }
    }

    // --- near-duplicate queries (among those that still have a trajectory) ---
    if let Some(th) = p.dedup_threshold {
        let mut alive: Vec<&Task> = Vec::new();
        for idx in by_task.values() {
            if idx.iter().any(|&i| items[i].decision.is_none()) {
                alive.push(items[idx[0]].task.as_ref());
            }
        }
        // The data paths are the same within a group: they are left out of the text so
        // they do not make every pair of questions on one file look alike.
        let texts: Vec<String> = alive
            .iter()
            .map(|t| {
                t.data
                    .iter()
                    .fold(t.question.clone(), |q, d| q.replace(&d.path, " "))
            })
            .collect();
        let cands: Vec<Candidate<'_>> = alive
            .iter()
            .zip(&texts)
            .map(|(t, text)| {
                let mut paths: Vec<&str> = t.data.iter().map(|d| d.path.as_str()).collect();
                paths.sort_unstable();
                Candidate {
                    id: &t.id,
                    text,
                    group: paths.join("\n"),
                }
            })
            .collect();
        let dups: HashMap<String, (String, f64)> = dedup::near_duplicates(&cands, th)
            .into_iter()
            .zip(&cands)
            .filter_map(|(d, c)| d.map(|d| (c.id.to_owned(), d)))
            .collect();
        for it in items.iter_mut() {
            if it.decision.is_some() {
                continue;
            }
            if let Some((of, s)) = dups.get(&it.record.sample_id) {
                it.duplicate = Some((of.clone(), *s));
                it.decide(
                    Reason::NearDuplicate,
                    format!("the query near-duplicates {of} (similarity {s:.2}), which is kept"),
                );
            }
        }
    }

    // --- at most N per query, best judged first ---
    if let Some(cap) = p.per_query {
        for idx in by_task.values() {
            let mut alive: Vec<usize> = idx
                .iter()
                .copied()
                .filter(|&i| items[i].decision.is_none())
                .collect();
            alive.sort_by(|&a, &b| {
                let ja = items[a].judge.as_ref().map_or(0.0, |j| j.total);
                let jb = items[b].judge.as_ref().map_or(0.0, |j| j.total);
                jb.total_cmp(&ja)
                    .then(
                        items[a]
                            .record
                            .total_turns
                            .cmp(&items[b].record.total_turns),
                    )
                    .then(items[a].record.trajectory.cmp(&items[b].record.trajectory))
            });
            for &i in alive.iter().skip(cap) {
                items[i].decide(
                    Reason::PerQueryCap,
                    format!("the query already has {cap} kept trajectories (--per-query)"),
                );
            }
        }
    }

    // --- decisions ---
    let decisions: Vec<Decision> = items
        .into_iter()
        .map(|it| {
            let (reason, detail) = it.decision.clone().unwrap_or_else(|| {
                let mut parts = vec![format!("{} turns", it.record.total_turns)];
                if let Some(a) = &it.agreement {
                    parts.push(format!("agreement {}/{}", a.count, a.of));
                }
                if it.verification.is_some() {
                    parts.push("reproduced".into());
                }
                if let Some(j) = &it.judge {
                    parts.push(format!("judge {:.2}", j.total));
                }
                (Reason::Kept, format!("passed: {}", parts.join(", ")))
            });
            Decision {
                task_id: it.record.sample_id.clone(),
                trajectory: it.record.trajectory,
                trajectory_file: it.record.trajectory_file.clone(),
                keep: reason == Reason::Kept,
                reason,
                detail,
                turns: it.record.total_turns,
                answer: it.record.prediction.clone(),
                score: it.record.score,
                agreement: it.agreement,
                verification: it.verification,
                judge: it.judge,
                duplicate_of: it.duplicate.as_ref().map(|d| d.0.clone()),
                similarity: it.duplicate.as_ref().map(|d| (d.1 * 1e4).round() / 1e4),
            }
        })
        .collect();
    let mut by_reason: BTreeMap<Reason, usize> = BTreeMap::new();
    for d in &decisions {
        *by_reason.entry(d.reason).or_insert(0) += 1;
    }
    let kept: Vec<KeptLine> = decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| KeptLine {
            task_id: d.task_id.clone(),
            trajectory: d.trajectory,
            trajectory_file: d.trajectory_file.clone(),
        })
        .collect();
    let queries_kept = {
        let mut ids: Vec<&str> = kept.iter().map(|k| k.task_id.as_str()).collect();
        ids.dedup();
        ids.len()
    };
    let summary = FilterSummary {
        run: std::path::absolute(run).unwrap_or_else(|_| run.to_owned()),
        created: crate::rundir::now_rfc3339(),
        params: p.clone(),
        trajectories: decisions.len(),
        kept: kept.len(),
        queries: by_task.len(),
        queries_kept,
        by_reason,
        verified_now,
        verified_cached,
        judged_now,
        judged_cached,
    };
    write_jsonl(&out.join(DECISIONS), &decisions)?;
    write_json(&out.join(SUMMARY), &summary)?;
    let kept_path = out.join(KEPT);
    if kept.is_empty() {
        match std::fs::remove_file(&kept_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&kept_path)(e)),
        }
        return Err(SynthError::EmptyFilter {
            total: summary.trajectories,
            by_reason: summary.drops(),
            decisions: out.join(DECISIONS),
        });
    }
    write_jsonl(&kept_path, &kept)?;
    Ok(FilterOutcome {
        summary,
        decisions,
        interrupted: false,
        out,
    })
}

fn interrupted_outcome(run: &Path, out: &Path, p: &FilterParams) -> FilterOutcome {
    FilterOutcome {
        summary: FilterSummary {
            run: run.to_owned(),
            created: crate::rundir::now_rfc3339(),
            params: p.clone(),
            trajectories: 0,
            kept: 0,
            queries: 0,
            queries_kept: 0,
            by_reason: BTreeMap::new(),
            verified_now: 0,
            verified_cached: 0,
            judged_now: 0,
            judged_cached: 0,
        },
        decisions: Vec::new(),
        interrupted: true,
        out: out.to_owned(),
    }
}

/// The `summary.json` of a filter directory.
pub fn read_summary(dir: &Path) -> Result<FilterSummary> {
    super::read_json(&dir.join(SUMMARY))
}

/// Write one JSON line per item, atomically.
pub(crate) fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> Result<()> {
    let mut bytes = Vec::new();
    for it in items {
        serde_json::to_writer(&mut bytes, it).map_err(|e| SynthError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(e),
        })?;
        bytes.push(b'\n');
    }
    crate::rundir::write_atomic(path, &bytes)?;
    Ok(())
}

/// Read a JSONL file of `T` (blank lines skipped; a bad line is an error naming it).
pub(crate) fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| SynthError::BadFile {
                path: path.to_owned(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use dsbox_tasks::MetricSpec;
    use serde_json::json;

    use super::*;

    fn task(metric: MetricSpec, answer: &str) -> Task {
        Task {
            id: "s/a".into(),
            suite: "s".into(),
            track: dsbox_tasks::Track::Analysis,
            question: "q".into(),
            context: String::new(),
            data: vec![],
            submission: None,
            answer: Some(json!(answer)),
            answer_guideline: None,
            metric,
            metadata: Default::default(),
        }
    }

    #[test]
    fn answers_agree_by_the_metric() {
        let t = task(
            MetricSpec::new("exact_match").with("tolerance", 0.03),
            "0.20",
        );
        assert!(same_answer(&t, "0.2", "0.20"));
        assert!(same_answer(&t, "0.201", "0.20"));
        assert!(!same_answer(&t, "0.25", "0.20"));
        assert!(same_answer(&t, "North.", "north"));
        let t = task(MetricSpec::new("list_match"), "[['a', '1']]");
        assert!(same_answer(&t, "@a[1.0] @b[2]", "@b[2] @a[1]"));
        assert!(!same_answer(&t, "@a[1] @b[3]", "@b[2] @a[1]"));
    }

    #[test]
    fn the_majority_group_comes_first() {
        let t = task(MetricSpec::new("exact_match").with("tolerance", 0.0), "5");
        let g = clusters(
            &t,
            &[
                (0, "4".into(), false),
                (1, "5".into(), true),
                (2, "5.0".into(), true),
                (3, "4.00".into(), false),
            ],
        );
        // A 2-2 tie goes to the answer matching the reference.
        assert_eq!(g[0].0, "5");
        assert_eq!(g[0].1, [1, 2]);
        assert_eq!(g[1].1, [0, 3]);
    }

    #[test]
    fn params_are_checked() {
        let mut p = FilterParams::defaults(15);
        assert!(p.check().is_ok());
        p.min_turns = 20;
        assert!(p.check().unwrap_err().to_string().contains("is empty"));
        p = FilterParams::defaults(15);
        p.agreement = 1.5;
        assert!(p.check().unwrap_err().to_string().contains("--agreement"));
        p = FilterParams::defaults(15);
        p.dedup_threshold = Some(0.0);
        assert!(p.check().unwrap_err().to_string().contains("--no-dedup"));
    }

    #[test]
    fn the_check_cache_survives_a_cut_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(CHECKS);
        let mut c = Cache::open(path.clone()).unwrap();
        let v = Verification {
            reproduced: true,
            failure: None,
            detail: "ok".into(),
            cells: 1,
            statuses: vec!["ok".into()],
            outputs_identical: true,
            found: vec!["5".into()],
            missing: vec![],
            seconds: 0.1,
        };
        let line = |traj: u32| CheckLine {
            check: "verify".into(),
            task_id: "s/a".into(),
            trajectory: traj,
            finished_at: "t".into(),
            judge_model: None,
            rubric: None,
            verification: Some(v.clone()),
            judge: None,
        };
        c.append(&line(0)).unwrap();
        drop(c);
        // A crash in the middle of a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"check\":\"verify\",\"task_").unwrap();
        drop(f);
        let mut c = Cache::open(path.clone()).unwrap();
        assert_eq!(c.verify.len(), 1);
        c.append(&line(1)).unwrap();
        drop(c);
        let c = Cache::open(path).unwrap();
        assert_eq!(c.verify.len(), 2, "the next line starts on its own line");
    }
}
