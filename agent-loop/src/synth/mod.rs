//! Synthetic training data: DSGym's pipeline (spec section 6) on dsbox's machinery, plus
//! the verification the reference lacks, and the shortcut audit.
//!
//! 1. [`queries`]: an agent explores each seed task's data in a sandbox (only the seed's
//!    files, read-only, as in eval) and proposes new questions in a numbered
//!    `Query: … Answer: …` list ([`parse`]); they become task records of the tasks crate
//!    with provenance, written as a user suite (`queries.jsonl` + `queries.toml`).
//! 2. [`trajectories`]: k rollouts per query through [`crate::run::run_eval`] — the run
//!    directory is an eval run (resume, `dsbox report`) holding its own copy of the tasks.
//! 3. [`filter`]: turn range, answer agreement across the k rollouts, execution
//!    verification ([`verify`]: the cells re-run in a fresh sandbox must reproduce the
//!    answer), the LLM-judge rubric ([`judge`]), near-duplicate removal ([`dedup`]); one
//!    decision with its reason per trajectory.
//! 4. [`export`]: OpenAI-chat or ShareGPT JSONL for SFT trainers, and a dataset card.
//! 5. [`audit`]: the shortcut audit — each task asked with no data mounted, k attempts,
//!    tasks solved without data flagged.
//!
//! [`scripted`] is an analyst that plays generator, solver and judge without an LLM, for
//! the tests and `dsbox bench synth`. [`stage`] is each synth run's own manifest
//! (`synth.json`).

pub mod audit;
pub mod dedup;
pub mod export;
pub mod filter;
pub mod judge;
pub mod parse;
pub mod queries;
pub mod scripted;
pub mod stage;
pub mod trajectories;
pub mod verify;

use std::path::{Path, PathBuf};

use crate::model::ModelError;
use crate::rundir::RunError;

/// Errors of the synth stages. Each names the file, run or task and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Tasks(#[from] dsbox_tasks::TasksError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    #[error(
        "{} no data on this host ({detail}): the queries agent explores a seed's data, so pick seeds whose files are present (`dsbox tasks validate --suite SUITE` lists missing files) or point --data-root at the data",
        list(seeds)
    )]
    SeedsWithoutData { seeds: Vec<String>, detail: String },
    #[error(
        "seed {id} is a prediction task: synthetic queries are analysis questions; pick analysis seeds"
    )]
    PredictionSeed { id: String },
    #[error("no seeds selected: {detail}")]
    NoSeeds { detail: String },
    #[error(
        "no queries could be parsed from the model's replies for {seeds} seed(s): each reply must end with <answer> holding a numbered list `1. Query: ... Answer: ...`; see {} and the generation trajectories there",
        report.display()
    )]
    NoQueries { seeds: usize, report: PathBuf },
    #[error("{} holds no tasks: pass the queries.jsonl that `dsbox synth queries` wrote", path.display())]
    NoTasks { path: PathBuf },
    #[error("{}: {}; fix those records (`dsbox tasks validate` explains each) or remove them", path.display(), problems.join("; "))]
    BadTasks {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error(
        "{} is not a `dsbox synth {expected}` run ({found}): pass the directory that `dsbox synth {expected}` wrote",
        dir.display()
    )]
    WrongStage {
        dir: PathBuf,
        expected: &'static str,
        found: String,
    },
    #[error(
        "no trajectory passed the filters ({total} trajectories: {by_reason}); see {} for each decision, then loosen the filters (e.g. --agreement, --judge-threshold, --min-turns/--max-turns) or generate more rollouts",
        decisions.display()
    )]
    EmptyFilter {
        total: usize,
        by_reason: String,
        decisions: PathBuf,
    },
    #[error(
        "{} has no filter result (kept.jsonl): run `dsbox synth filter {}` first",
        dir.display(), run.display()
    )]
    NotFiltered { dir: PathBuf, run: PathBuf },
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },
    #[error(
        "{} is in use by another dsbox process: wait for it to end, or stop it first",
        dir.display()
    )]
    Locked { dir: PathBuf },
}

/// Result alias of the synth stages.
pub type Result<T, E = SynthError> = std::result::Result<T, E>;

fn list(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    if items.len() == 1 {
        format!("seed {s} has")
    } else {
        format!("seeds {s} have")
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `what` as pretty JSON, written atomically.
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, what: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(what).map_err(|e| SynthError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    crate::rundir::write_atomic(path, &bytes)?;
    Ok(())
}

/// Read and parse a JSON file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&text).map_err(|e| SynthError::BadFile {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// An exclusive lock on `dir` (flock on `dir/.lock`), held while a stage writes there.
pub(crate) fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        SynthError::Locked {
            dir: dir.to_owned(),
        }
    })
}
