//! The run directory: everything an evaluation writes, laid out so that nothing finished
//! is ever lost and a run can always be continued.
//!
//! ```text
//! run.json            the run: model, scaffold, settings, k, backend + rootfs hash,
//!                     dsbox version, and the planned tasks (what --resume continues)
//! results.jsonl       one scored trajectory per line, appended and fsync'd as each ends
//! trajectories/<suite>/prediction_<index>_traj_<j>.json   full trajectories (DSGym fields)
//! images/<suite>/...  figures the cells produced;  submissions/<suite>/...  /submission files
//! metrics.json, summary.csv, tasks.csv    rewritten atomically (temp file + rename)
//! report.md, report.html                  `dsbox report`
//! .lock               held (flock) by the process writing the run
//! ```
//!
//! `results.jsonl` is the source of truth: a trajectory is finished when its line is
//! there. A line cut short by a crash has no newline; opening the run for `--resume`
//! drops it (the trajectory is redone).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dsbox_tasks::Task;
use serde::{Deserialize, Serialize};

use crate::episode::{ArtifactSink, EpisodeSettings};
use crate::metrics::{self, RunMetrics};
use crate::record::ResultRecord;
use crate::sandbox::BackendInfo;
use crate::scaffold::ScaffoldKind;

pub const MANIFEST: &str = "run.json";
pub const RESULTS: &str = "results.jsonl";
pub const METRICS: &str = "metrics.json";
pub const SUMMARY: &str = "summary.csv";
pub const TASKS_CSV: &str = "tasks.csv";
const LOCK: &str = ".lock";
/// Version of the run directory layout.
pub const FORMAT: u32 = 1;

/// Errors of the run directory. Each names the directory and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "{} already holds a run (started {created}, model {model}): continue it with `dsbox eval --resume {}` or choose another --out",
        dir.display(), dir.display()
    )]
    RunExists {
        dir: PathBuf,
        created: String,
        model: String,
    },
    #[error(
        "{} is not empty and holds no dsbox run: choose a new or empty directory for --out",
        dir.display()
    )]
    NotEmpty { dir: PathBuf },
    #[error(
        "{} holds no dsbox run ({MANIFEST} is missing): pass a directory that `dsbox eval` wrote",
        dir.display()
    )]
    NotARun { dir: PathBuf },
    #[error(
        "run {} is in use by another dsbox process{}: wait for it to end, or stop it first",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: line {line} is not a result record ({message}); move that line out of the file to continue the run",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: not a dsbox run manifest: {message}", path.display())]
    BadManifest { path: PathBuf, message: String },
    #[error(
        "{}: written by a newer dsbox (layout {found}, this one reads {FORMAT}): use that version",
        path.display()
    )]
    NewerFormat { path: PathBuf, found: u32 },
}

pub type Result<T, E = RunError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The model of a run, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    /// `openai` (an OpenAI-compatible server) or `scripted`.
    pub kind: String,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

impl ModelInfo {
    /// A built-in scripted model (no server, no sampling settings).
    pub fn scripted(name: impl Into<String>) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            kind: "scripted".into(),
            base_url: None,
            temperature: None,
            top_p: None,
            max_tokens: None,
        }
    }
}

/// Which tasks of the suites were selected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub ids: Vec<String>,
}

/// A task of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedTask {
    pub id: String,
    pub suite: String,
    /// Position in its suite's selection (names the trajectory files).
    pub index: usize,
}

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub format: u32,
    pub dsbox_version: String,
    pub created: String,
    pub model: ModelInfo,
    pub scaffold: ScaffoldKind,
    pub settings: EpisodeSettings,
    pub k: u32,
    pub suites: Vec<String>,
    pub selection: Selection,
    #[serde(default)]
    pub data_root: Option<PathBuf>,
    pub backend: BackendInfo,
    pub concurrency: usize,
    pub tasks: Vec<PlannedTask>,
    #[serde(default)]
    pub notes: Vec<String>,
}

impl RunManifest {
    /// Planned tasks per suite, in the manifest's suite order.
    pub fn tasks_per_suite(&self) -> BTreeMap<String, usize> {
        let mut m: BTreeMap<String, usize> = self.suites.iter().map(|s| (s.clone(), 0)).collect();
        for t in &self.tasks {
            *m.entry(t.suite.clone()).or_insert(0) += 1;
        }
        m
    }

    pub fn planned_trajectories(&self) -> usize {
        self.tasks.len() * self.k as usize
    }
}

/// A run directory opened for writing (its lock held).
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    _lock: nix::fcntl::Flock<File>,
    results: Option<File>,
}

/// A run opened to continue it.
#[derive(Debug)]
pub struct OpenedRun {
    pub dir: RunDir,
    pub manifest: RunManifest,
    /// The latest record of every finished trajectory, in file order.
    pub records: Vec<ResultRecord>,
    /// A half-written last line was found and removed.
    pub dropped_partial_line: bool,
}

fn lock(dir: &Path) -> Result<nix::fcntl::Flock<File>> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            // The holder's pid, for the message another process prints.
            let _ = locked.set_len(0);
            let _ = writeln!(&mut *locked, "{}", std::process::id());
            Ok(locked)
        }
        Err((_, _)) => {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            Err(RunError::Locked {
                dir: dir.to_owned(),
                pid,
            })
        }
    }
}

/// Now, as RFC 3339 UTC with seconds (`2026-01-31T12:00:00Z`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write `bytes` to `path` atomically: a temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn read_manifest(dir: &Path) -> Result<RunManifest> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RunError::NotARun {
                dir: dir.to_owned(),
            });
        }
        Err(e) => return Err(io(&path)(e)),
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| RunError::BadManifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let format = value.get("format").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
    if format > FORMAT {
        return Err(RunError::NewerFormat {
            path,
            found: format,
        });
    }
    serde_json::from_value(value).map_err(|e| RunError::BadManifest {
        path,
        message: e.to_string(),
    })
}

/// The records of `results.jsonl`: (complete records, byte length of the complete part,
/// whether a partial last line follows).
fn read_results(dir: &Path) -> Result<(Vec<ResultRecord>, u64, bool)> {
    let path = dir.join(RESULTS);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0, false)),
        Err(e) => return Err(io(&path)(e)),
    };
    let complete_len = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let partial = complete_len < text.len();
    let mut records = Vec::new();
    for (i, line) in text[..complete_len].split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let rec: ResultRecord = serde_json::from_slice(line).map_err(|e| RunError::Corrupt {
            path: path.clone(),
            line: i + 1,
            message: e.to_string(),
        })?;
        records.push(rec);
    }
    Ok((records, complete_len as u64, partial))
}

/// The latest record of each trajectory (a redone trajectory's line supersedes the
/// earlier one), in order of first appearance.
pub fn latest(records: Vec<ResultRecord>) -> Vec<ResultRecord> {
    let mut index: HashMap<(String, u32), usize> = HashMap::new();
    let mut out: Vec<ResultRecord> = Vec::new();
    for r in records {
        match index.get(&r.key()) {
            Some(&i) => out[i] = r,
            None => {
                index.insert(r.key(), out.len());
                out.push(r);
            }
        }
    }
    out
}

/// Read a run without taking it over (for reports; works while it runs).
pub fn read_run(dir: &Path) -> Result<(RunManifest, Vec<ResultRecord>)> {
    let manifest = read_manifest(dir)?;
    let (records, _, _) = read_results(dir)?;
    Ok((manifest, latest(records)))
}

impl RunDir {
    /// Start a new run in `dir` (created if needed). Refuses a directory holding another
    /// run or other files.
    pub fn create(dir: &Path, manifest: &RunManifest) -> Result<RunDir> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock = lock(dir)?;
        match read_manifest(dir) {
            Ok(existing) => {
                return Err(RunError::RunExists {
                    dir: dir.to_owned(),
                    created: existing.created,
                    model: existing.model.name,
                });
            }
            Err(RunError::NotARun { .. }) => {}
            Err(RunError::BadManifest { .. } | RunError::NewerFormat { .. }) => {
                return Err(RunError::RunExists {
                    dir: dir.to_owned(),
                    created: "at an unknown time".into(),
                    model: "unknown".into(),
                });
            }
            Err(e) => return Err(e),
        }
        let others = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name() != LOCK);
        if others {
            return Err(RunError::NotEmpty {
                dir: dir.to_owned(),
            });
        }
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| RunError::BadManifest {
            path: dir.join(MANIFEST),
            message: e.to_string(),
        })?;
        write_atomic(&dir.join(MANIFEST), &json)?;
        Ok(RunDir {
            root: dir.to_owned(),
            _lock: lock,
            results: None,
        })
    }

    /// Open a run to continue it: take its lock, read its manifest and results, and cut
    /// a half-written last line.
    pub fn open(dir: &Path) -> Result<OpenedRun> {
        if !dir.join(MANIFEST).exists() {
            return Err(RunError::NotARun {
                dir: dir.to_owned(),
            });
        }
        let lock = lock(dir)?;
        let manifest = read_manifest(dir)?;
        let (records, complete_len, partial) = read_results(dir)?;
        if partial {
            let path = dir.join(RESULTS);
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            f.set_len(complete_len).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
        }
        Ok(OpenedRun {
            dir: RunDir {
                root: dir.to_owned(),
                _lock: lock,
                results: None,
            },
            manifest,
            records: latest(records),
            dropped_partial_line: partial,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Append one record and fsync: once this returns, the trajectory is never redone.
    pub fn append_result(&mut self, record: &ResultRecord) -> Result<()> {
        let path = self.root.join(RESULTS);
        if self.results.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o644)
                .open(&path)
                .map_err(io(&path))?;
            self.results = Some(f);
        }
        let mut line = serde_json::to_vec(record).map_err(|e| RunError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        let f = self.results.as_mut().expect("opened above");
        // One write call per line: a crash leaves at most one line without its newline.
        f.write_all(&line).map_err(io(&path))?;
        f.sync_data().map_err(io(&path))
    }

    /// Write a file inside the run atomically.
    pub fn write_file(&self, relative: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.root.join(relative), bytes)
    }
}

/// `trajectories/<suite>/prediction_<index>_traj_<j>.json` (DSGym's file names, one
/// directory per suite).
pub fn trajectory_file(suite: &str, index: usize, trajectory: u32) -> String {
    format!("trajectories/{suite}/prediction_{index}_traj_{trajectory}.json")
}

/// Saves figures and submission files under a run directory.
#[derive(Debug, Clone)]
pub struct RunArtifacts {
    pub root: PathBuf,
    /// Task id → index in its suite's selection.
    pub index: HashMap<String, usize>,
}

impl RunArtifacts {
    fn stem(&self, task: &Task, trajectory: u32) -> String {
        let index = self.index.get(&task.id).copied().unwrap_or(0);
        format!("{}/prediction_{index}_traj_{trajectory}", task.suite)
    }
}

impl ArtifactSink for RunArtifacts {
    fn save_image(
        &self,
        task: &Task,
        trajectory: u32,
        n: usize,
        mime: &str,
        data: &[u8],
    ) -> Option<String> {
        let ext = match mime {
            "image/jpeg" => "jpg",
            "image/gif" => "gif",
            "image/webp" => "webp",
            _ => "png",
        };
        let rel = format!("images/{}_fig{n}.{ext}", self.stem(task, trajectory));
        match write_atomic(&self.root.join(&rel), data) {
            Ok(()) => Some(rel),
            Err(e) => {
                tracing::warn!("cannot save a figure: {e}");
                None
            }
        }
    }

    fn save_submission(&self, task: &Task, trajectory: u32, data: &[u8]) -> Option<String> {
        let name = task
            .submission
            .as_deref()
            .and_then(|p| Path::new(p).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "submission.csv".into());
        let rel = format!("submissions/{}_{name}", self.stem(task, trajectory));
        match write_atomic(&self.root.join(&rel), data) {
            Ok(()) => Some(rel),
            Err(e) => {
                tracing::warn!("cannot save a submission: {e}");
                None
            }
        }
    }
}

fn csv_error(path: &Path) -> impl FnOnce(csv::Error) -> RunError + '_ {
    move |e| RunError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_default()
}

/// Compute the metrics of `records` and write `metrics.json`, `summary.csv` (one row per
/// suite and one overall) and `tasks.csv` (one row per task), each atomically.
pub fn write_summaries(
    root: &Path,
    manifest: &RunManifest,
    records: &[ResultRecord],
) -> Result<RunMetrics> {
    let m = metrics::compute(records, &manifest.tasks_per_suite(), manifest.k);
    let path = root.join(METRICS);
    let json = serde_json::to_vec_pretty(&m).map_err(|e| RunError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&path, &json)?;

    let path = root.join(SUMMARY);
    let mut w = csv::Writer::from_writer(Vec::new());
    let k = manifest.k.max(1);
    w.write_record([
        "scope",
        "tasks",
        "k",
        "finished",
        "planned",
        "mean",
        "max_at_k",
        "pass_at_1",
        "pass_at_k",
        "tasks_solved",
        "mean_turns",
        "mean_tokens",
        "mean_time_s",
        "model_errors",
        "sandbox_errors",
        "episode_timeouts",
        "no_answer",
        "cell_timeouts",
        "not_evaluable",
    ])
    .map_err(csv_error(&path))?;
    let rows = m
        .suites
        .iter()
        .map(|(n, g)| (n.as_str(), g))
        .chain(std::iter::once(("overall", &m.overall)));
    for (scope, g) in rows {
        let e = &g.errors;
        w.write_record([
            scope.to_owned(),
            g.tasks.to_string(),
            g.k.to_string(),
            g.finished.to_string(),
            g.planned.to_string(),
            format!("{:.4}", g.mean),
            format!("{:.4}", g.max_at_k),
            fmt_opt(g.pass_at.get("pass@1").copied()),
            fmt_opt(g.pass_at.get(&format!("pass@{k}")).copied()),
            g.tasks_solved.to_string(),
            format!("{:.2}", g.mean_turns),
            format!("{:.0}", g.mean_tokens),
            format!("{:.2}", g.mean_time_s),
            e.model_errors.to_string(),
            e.sandbox_errors.to_string(),
            e.episode_timeouts.to_string(),
            e.no_answer.to_string(),
            e.cell_timeouts.to_string(),
            e.not_evaluable.values().sum::<usize>().to_string(),
        ])
        .map_err(csv_error(&path))?;
    }
    let bytes = w.into_inner().map_err(|e| RunError::Io {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    write_atomic(&path, &bytes)?;

    let path = root.join(TASKS_CSV);
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "suite",
        "task_id",
        "trajectories",
        "mean_score",
        "max_score",
        "solved",
        "mean_turns",
        "mean_time_s",
        "ground_truth",
        "predictions",
    ])
    .map_err(csv_error(&path))?;
    let mut by_task: BTreeMap<(&str, usize, &str), Vec<&ResultRecord>> = BTreeMap::new();
    for r in records {
        by_task
            .entry((r.dataset.as_str(), r.index, r.sample_id.as_str()))
            .or_default()
            .push(r);
    }
    for ((suite, _, id), rs) in by_task {
        let n = rs.len() as f64;
        let scores: Vec<f64> = rs.iter().map(|r| r.score_or_zero()).collect();
        let preds: Vec<String> = rs
            .iter()
            .map(|r| r.prediction.clone().unwrap_or_else(|| "(none)".into()))
            .collect();
        w.write_record([
            suite.to_owned(),
            id.to_owned(),
            rs.len().to_string(),
            format!("{:.4}", scores.iter().sum::<f64>() / n),
            format!("{:.4}", scores.iter().copied().fold(0.0, f64::max)),
            scores.iter().any(|s| *s >= 1.0).to_string(),
            format!(
                "{:.2}",
                rs.iter().map(|r| f64::from(r.total_turns)).sum::<f64>() / n
            ),
            format!(
                "{:.2}",
                rs.iter().map(|r| r.execution_time).sum::<f64>() / n
            ),
            rs[0].ground_truth.clone().unwrap_or_default(),
            preds.join(" | "),
        ])
        .map_err(csv_error(&path))?;
    }
    let bytes = w.into_inner().map_err(|e| RunError::Io {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    write_atomic(&path, &bytes)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::{EndReason, EpisodeTimings};
    use crate::model::Usage;

    fn manifest() -> RunManifest {
        RunManifest {
            format: FORMAT,
            dsbox_version: "test".into(),
            created: now_rfc3339(),
            model: ModelInfo::scripted("m"),
            scaffold: ScaffoldKind::React,
            settings: EpisodeSettings::default(),
            k: 2,
            suites: vec!["s".into()],
            selection: Selection::default(),
            data_root: None,
            backend: BackendInfo {
                backend: "cold".into(),
                rootfs: "r".into(),
                rootfs_hash: "sha256:0".into(),
            },
            concurrency: 1,
            tasks: vec![PlannedTask {
                id: "s/a".into(),
                suite: "s".into(),
                index: 0,
            }],
            notes: vec![],
        }
    }

    fn record(id: &str, trajectory: u32, score: f64) -> ResultRecord {
        ResultRecord {
            sample_id: id.into(),
            dataset: "s".into(),
            query: "q".into(),
            ground_truth: Some("1".into()),
            prediction: Some("1".into()),
            metrics: BTreeMap::new(),
            execution_time: 1.0,
            total_turns: 2,
            success: true,
            index: 0,
            trajectory,
            score: Some(score),
            end_reason: EndReason::Answered,
            error: None,
            error_kind: None,
            tokens: Usage::default(),
            timings: EpisodeTimings::default(),
            cells: 1,
            cell_timeouts: 0,
            trajectory_file: trajectory_file("s", 0, trajectory),
            images: vec![],
            submission: None,
            model: "m".into(),
            finished_at: now_rfc3339(),
        }
    }

    #[test]
    fn a_directory_holds_one_run_and_one_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let run = RunDir::create(&dir, &manifest()).unwrap();
        // Held by `run`: neither a second start nor a resume may write here.
        assert!(matches!(
            RunDir::open(&dir).unwrap_err(),
            RunError::Locked { pid: Some(p), .. } if p == std::process::id()
        ));
        drop(run);
        let err = RunDir::create(&dir, &manifest()).unwrap_err();
        assert!(matches!(err, RunError::RunExists { .. }), "{err}");
        assert!(err.to_string().contains("--resume"));
        // Other files: not a run directory.
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("x"), "x").unwrap();
        assert!(matches!(
            RunDir::create(&other, &manifest()).unwrap_err(),
            RunError::NotEmpty { .. }
        ));
        assert!(!other.join(MANIFEST).exists());
        assert!(matches!(
            RunDir::open(&other).unwrap_err(),
            RunError::NotARun { .. }
        ));
    }

    #[test]
    fn a_half_written_line_is_dropped_and_later_lines_supersede() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let mut run = RunDir::create(&dir, &manifest()).unwrap();
        run.append_result(&record("s/a", 0, 0.0)).unwrap();
        run.append_result(&record("s/a", 1, 1.0)).unwrap();
        run.append_result(&record("s/a", 0, 1.0)).unwrap();
        drop(run);
        let path = dir.join(RESULTS);
        let complete = std::fs::read(&path).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"sample_id":"s/a","traj"#).unwrap();
        drop(f);
        let opened = RunDir::open(&dir).unwrap();
        assert!(opened.dropped_partial_line);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            complete,
            "cut back to the last newline"
        );
        assert_eq!(opened.records.len(), 2);
        assert_eq!(opened.records[0].key(), ("s/a".to_string(), 0));
        assert_eq!(opened.records[0].score, Some(1.0), "the later line wins");
        drop(opened);
        // A corrupt complete line is an error that names the line, not silently skipped.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.insert_str(0, "not json\n");
        std::fs::write(&path, text).unwrap();
        let err = RunDir::open(&dir).unwrap_err();
        assert!(matches!(err, RunError::Corrupt { line: 1, .. }), "{err}");
    }

    #[test]
    fn summaries_are_written_atomically_and_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let m = manifest();
        let records = vec![record("s/a", 0, 1.0), record("s/a", 1, 0.0)];
        let metrics = write_summaries(tmp.path(), &m, &records).unwrap();
        assert!(metrics.complete);
        assert_eq!(metrics.overall.mean, 0.5);
        assert_eq!(metrics.overall.max_at_k, 1.0);
        assert_eq!(metrics.overall.pass_at["pass@1"], 0.5);
        assert_eq!(metrics.overall.pass_at["pass@2"], 1.0);
        let csv = std::fs::read_to_string(tmp.path().join(SUMMARY)).unwrap();
        assert!(
            csv.lines()
                .nth(1)
                .unwrap()
                .starts_with("s,1,2,2,2,0.5000,1.0000,0.5000,1.0000,1,"),
            "{csv}"
        );
        // No temp files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
