//! Stage 2: k rollouts per synthetic query through [`crate::run::run_eval`].
//!
//! A tasks file (the JSONL `dsbox synth queries` wrote, or any file of dsbox task records)
//! is loaded by the tasks crate's own user-suite loader: an entry naming the file is
//! registered and the suite loaded, so the records get exactly the checks a user suite
//! gets. The run directory is an eval run (`run.json`, `results.jsonl`, trajectories,
//! `dsbox report`) that keeps its own copy of the tasks — `tasks.jsonl` with the entry
//! `suite.toml` beside it — so `--resume` and the filter never depend on the original
//! file (and `dsbox eval --resume RUN --suites-dir RUN` works too).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dsbox_tasks::{DataRoot, LoadedSuite, ProblemKind, Prompts, SuiteRegistry};
use serde_json::Value;

use super::queries::entry_toml;
use super::{Result, SynthError, io};
use crate::run::PlannedItem;

/// The run's copy of the tasks.
pub const TASKS_FILE: &str = "tasks.jsonl";
/// The run's suite entry for them.
pub const ENTRY_FILE: &str = "suite.toml";
/// Suite name when the records do not agree on one.
pub const DEFAULT_NAME: &str = "synth";

/// A loaded tasks file.
#[derive(Debug)]
pub struct TasksFile {
    pub path: PathBuf,
    pub suite: LoadedSuite,
    /// Problems that do not stop a run (e.g. a task without an answer: its rollouts can
    /// still agree with each other).
    pub warnings: Vec<String>,
}

/// A suite name a user entry may take: letters, digits, `-`, `_`, and not a built-in.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(SynthError::Invalid {
            what: format!("suite name `{name}`"),
            detail: "use only letters, digits, `-` and `_` (--name)".into(),
        });
    }
    let builtin = SuiteRegistry::builtin(DataRoot::at("/nonexistent"))?;
    if builtin.names().contains(&name) {
        return Err(SynthError::Invalid {
            what: format!("suite name `{name}`"),
            detail: "it is a built-in suite's name; pick another with --name".into(),
        });
    }
    Ok(())
}

/// The suite name the records carry (their `suite` field, else the prefix of their ids),
/// when they all agree.
fn name_from_records(path: &Path) -> Result<Option<String>> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut name: Option<String> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // Unreadable lines are reported by the loader, with their line number.
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let this = v
            .get("suite")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .or_else(|| {
                v.get("id")
                    .and_then(Value::as_str)
                    .and_then(|id| id.split_once('/'))
                    .map(|(s, _)| s.to_owned())
            });
        match (&name, this) {
            (_, None) => return Ok(None),
            (None, Some(t)) => name = Some(t),
            (Some(n), Some(t)) if *n != t => return Ok(None),
            _ => {}
        }
    }
    Ok(name)
}

static ENTRY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes a temporary entry directory when dropped.
struct TempEntry(PathBuf);

impl Drop for TempEntry {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Load a suite from an entry file through the tasks crate's registry.
pub fn load_entry(entry: &Path, name: &str) -> Result<LoadedSuite> {
    let mut reg = SuiteRegistry::builtin(DataRoot::at("/nonexistent"))?;
    reg.add_entry(entry)?;
    Ok(reg.load(name)?)
}

/// Load and check a tasks file. `name` overrides the suite name (default: the records'
/// own, else `synth`).
pub fn load_tasks_file(path: &Path, name: Option<&str>) -> Result<TasksFile> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    if !path.is_file() {
        return Err(SynthError::Io {
            path: path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file (pass the queries.jsonl that `dsbox synth queries` wrote)",
            ),
        });
    }
    if path.extension().is_none_or(|e| e != "jsonl" && e != "json") {
        return Err(SynthError::BadFile {
            path,
            message: "a tasks file is JSONL (one task record per line, `.jsonl`) or a JSON array (`.json`)".into(),
        });
    }
    let name = match name {
        Some(n) => n.to_owned(),
        None => name_from_records(&path)?.unwrap_or_else(|| DEFAULT_NAME.to_owned()),
    };
    check_name(&name)?;
    let tmp = std::env::temp_dir().join(format!(
        "dsbox-synth-entry-{}-{}",
        std::process::id(),
        ENTRY_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let _guard = TempEntry(tmp.clone());
    let entry = tmp.join(format!("{name}.toml"));
    let data_dir = path.parent().map(Path::to_owned);
    std::fs::write(
        &entry,
        entry_toml(
            &name,
            "tasks file",
            &path.display().to_string(),
            data_dir.as_deref(),
        ),
    )
    .map_err(io(&entry))?;
    let suite = load_entry(&entry, &name)?;
    check_suite(&path, suite)
}

fn check_suite(path: &Path, suite: LoadedSuite) -> Result<TasksFile> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for p in suite.problems.iter().chain(suite.validate().iter()) {
        let line = format!("{}: {}: {}", p.task_id, p.kind.as_str(), p.message);
        match p.kind {
            ProblemKind::BadRecord
            | ProblemKind::DuplicateId
            | ProblemKind::MissingData
            | ProblemKind::UnknownMetric
            | ProblemKind::BadMetric => errors.push(line),
            _ => warnings.push(line),
        }
    }
    errors.dedup();
    if !errors.is_empty() {
        return Err(SynthError::BadTasks {
            path: path.to_owned(),
            problems: errors,
        });
    }
    if suite.tasks.is_empty() {
        return Err(SynthError::NoTasks {
            path: path.to_owned(),
        });
    }
    Ok(TasksFile {
        path: path.to_owned(),
        suite,
        warnings,
    })
}

/// Copy the tasks into a (freshly created) run directory and write its entry there.
pub fn install(run: &Path, tasks: &TasksFile) -> Result<()> {
    let bytes = std::fs::read(&tasks.path).map_err(io(&tasks.path))?;
    crate::rundir::write_atomic(&run.join(TASKS_FILE), &bytes)?;
    let data_dir = tasks.path.parent().map(Path::to_owned);
    let description = format!("synthetic tasks from {}", tasks.path.display());
    crate::rundir::write_atomic(
        &run.join(ENTRY_FILE),
        entry_toml(
            &tasks.suite.def.name,
            &description,
            TASKS_FILE,
            data_dir.as_deref(),
        )
        .as_bytes(),
    )?;
    Ok(())
}

/// The tasks of a trajectories run (from its own copy).
pub fn run_suite(run: &Path, name: &str) -> Result<LoadedSuite> {
    let entry = run.join(ENTRY_FILE);
    if !entry.is_file() {
        return Err(SynthError::WrongStage {
            dir: run.to_owned(),
            expected: "trajectories",
            found: format!("{ENTRY_FILE} is missing"),
        });
    }
    let suite = load_entry(&entry, name)?;
    Ok(check_suite(&run.join(TASKS_FILE), suite)?.suite)
}

/// One planned item per task (the first `limit`), prompts rendered.
pub fn plan(
    suite: &LoadedSuite,
    prompts: &Prompts,
    limit: Option<usize>,
) -> Result<Vec<PlannedItem>> {
    suite
        .tasks
        .iter()
        .take(limit.unwrap_or(usize::MAX))
        .enumerate()
        .map(|(index, task)| {
            let prompt = prompts.render(task, &suite.def)?;
            Ok(PlannedItem {
                task: Arc::new(task.clone()),
                prompt: Arc::new(prompt),
                index,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_tasks_file_loads_through_the_user_suite_loader() {
        let tmp = tempfile::tempdir().unwrap();
        let data = write(tmp.path(), "x.csv", "a\n1\n");
        let file = write(
            tmp.path(),
            "queries.jsonl",
            &format!(
                "{{\"id\":\"gen/a-q1\",\"suite\":\"gen\",\"question\":\"Mean of a?\",\"data\":[{{\"path\":\"/data/x.csv\",\"host\":{:?}}}],\"answer\":\"1\"}}\n{{\"id\":\"gen/a-q2\",\"suite\":\"gen\",\"question\":\"Rows?\",\"data\":[\"/data/x.csv\"]}}\n",
                data.display().to_string()
            ),
        );
        let tf = load_tasks_file(&file, None).unwrap();
        assert_eq!(tf.suite.def.name, "gen");
        let ids: Vec<&str> = tf.suite.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["gen/a-q1", "gen/a-q2"]);
        // A plain sandbox path resolves beside the file; an explicit host path is kept.
        assert_eq!(
            tf.suite.tasks[0].data[0].host.as_deref(),
            Some(data.as_path())
        );
        assert_eq!(
            tf.suite.tasks[1].data[0].host.as_deref(),
            Some(data.as_path())
        );
        assert!(
            tf.warnings
                .iter()
                .any(|w| w.contains("gen/a-q2") && w.contains("no-answer")),
            "{:?}",
            tf.warnings
        );

        // Installed into a run, it loads the same from the run's own copy.
        let run = tmp.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        install(&run, &tf).unwrap();
        let again = run_suite(&run, "gen").unwrap();
        assert_eq!(again.tasks, tf.suite.tasks);
    }

    #[test]
    fn bad_tasks_files_are_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load_tasks_file(&tmp.path().join("nope.jsonl"), None).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
        let f = write(tmp.path(), "t.csv", "a\n");
        assert!(
            load_tasks_file(&f, None)
                .unwrap_err()
                .to_string()
                .contains("JSONL")
        );
        let f = write(
            tmp.path(),
            "typo.jsonl",
            "{\"question\":\"q\",\"answr\":\"1\"}\n",
        );
        let err = load_tasks_file(&f, None).unwrap_err();
        assert!(
            err.to_string().contains("bad-record") && err.to_string().contains("answr"),
            "{err}"
        );
        let f = write(
            tmp.path(),
            "missing.jsonl",
            "{\"question\":\"q\",\"data\":[\"/data/gone.csv\"],\"answer\":\"1\"}\n",
        );
        let err = load_tasks_file(&f, None).unwrap_err();
        assert!(err.to_string().contains("missing-data"), "{err}");
        let f = write(tmp.path(), "empty.jsonl", "\n");
        assert!(matches!(
            load_tasks_file(&f, None).unwrap_err(),
            SynthError::NoTasks { .. }
        ));
        let f = write(
            tmp.path(),
            "builtin.jsonl",
            "{\"suite\":\"qrdata\",\"question\":\"q\"}\n",
        );
        let err = load_tasks_file(&f, None).unwrap_err();
        assert!(err.to_string().contains("built-in suite"), "{err}");
        assert!(load_tasks_file(&f, Some("mine")).is_ok());
    }
}
