//! `synth.json`: what a synth run directory is (which stage wrote it, with which
//! parameters), beside the eval run's own `run.json`. `--resume` and the later stages
//! read it to continue or to build on the run.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Result, SynthError, read_json, write_json};

pub const STAGE_FILE: &str = "synth.json";
/// Version of the synth run layout.
pub const FORMAT: u32 = 1;

/// `dsbox synth queries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueriesStage {
    /// The suite name of the generated tasks (their ids are `<name>/…`).
    pub name: String,
    /// Items asked for per seed.
    pub n: usize,
    pub prompt_version: String,
    /// Seed task ids, in order (their suites are in run.json).
    pub seeds: Vec<String>,
}

/// `dsbox synth trajectories`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoriesStage {
    /// The suite name of the tasks.
    pub name: String,
    /// The tasks file the run was started from (the run keeps its own copy).
    pub source: PathBuf,
    pub tasks: usize,
}

/// `dsbox audit shortcut`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditStage {
    pub prompt_version: String,
    /// Attempts that must be correct for a task to be flagged.
    pub flag_threshold: u32,
    /// Code execution was off (no sandbox at all).
    pub no_exec: bool,
    /// An eval run of the same tasks with data, to compare with.
    #[serde(default)]
    pub compare: Option<PathBuf>,
}

/// Which stage wrote a run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "lowercase")]
pub enum Stage {
    Queries(QueriesStage),
    Trajectories(TrajectoriesStage),
    Audit(AuditStage),
}

impl Stage {
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Queries(_) => "queries",
            Stage::Trajectories(_) => "trajectories",
            Stage::Audit(_) => "audit",
        }
    }
}

/// The file on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageManifest {
    pub format: u32,
    pub dsbox_version: String,
    pub created: String,
    #[serde(flatten)]
    pub stage: Stage,
}

impl StageManifest {
    pub fn new(stage: Stage) -> StageManifest {
        StageManifest {
            format: FORMAT,
            dsbox_version: env!("CARGO_PKG_VERSION").into(),
            created: crate::rundir::now_rfc3339(),
            stage,
        }
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join(STAGE_FILE), self)
    }

    /// Read `dir/synth.json`; `expected` names the stage for the message when it is not a
    /// synth run at all.
    pub fn read(dir: &Path, expected: &'static str) -> Result<StageManifest> {
        let path = dir.join(STAGE_FILE);
        if !path.exists() {
            let found = if dir.join(crate::rundir::MANIFEST).exists() {
                "it is a `dsbox eval` run without synth.json".to_owned()
            } else if dir.exists() {
                "it holds no dsbox run".to_owned()
            } else {
                "it does not exist".to_owned()
            };
            return Err(SynthError::WrongStage {
                dir: dir.to_owned(),
                expected,
                found,
            });
        }
        let m: StageManifest = read_json(&path)?;
        if m.format > FORMAT {
            return Err(SynthError::BadFile {
                path,
                message: format!(
                    "written by a newer dsbox (layout {}, this one reads {FORMAT}): use that version",
                    m.format
                ),
            });
        }
        Ok(m)
    }

    pub fn queries(self, dir: &Path) -> Result<QueriesStage> {
        match self.stage {
            Stage::Queries(q) => Ok(q),
            other => Err(wrong(dir, "queries", &other)),
        }
    }

    pub fn trajectories(self, dir: &Path) -> Result<TrajectoriesStage> {
        match self.stage {
            Stage::Trajectories(t) => Ok(t),
            other => Err(wrong(dir, "trajectories", &other)),
        }
    }

    pub fn audit(self, dir: &Path) -> Result<AuditStage> {
        match self.stage {
            Stage::Audit(a) => Ok(a),
            other => Err(wrong(dir, "audit", &other)),
        }
    }
}

fn wrong(dir: &Path, expected: &'static str, found: &Stage) -> SynthError {
    SynthError::WrongStage {
        dir: dir.to_owned(),
        expected,
        found: format!("it was written by `dsbox synth {}`", found.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_stage() {
        let tmp = tempfile::tempdir().unwrap();
        let m = StageManifest::new(Stage::Trajectories(TrajectoriesStage {
            name: "synth".into(),
            source: "/x/queries.jsonl".into(),
            tasks: 3,
        }));
        m.write(tmp.path()).unwrap();
        let text = std::fs::read_to_string(tmp.path().join(STAGE_FILE)).unwrap();
        assert!(text.contains("\"stage\": \"trajectories\""), "{text}");
        let back = StageManifest::read(tmp.path(), "trajectories").unwrap();
        assert_eq!(back, m);
        let err = back.queries(tmp.path()).unwrap_err();
        assert!(
            err.to_string().contains(
                "is not a `dsbox synth queries` run (it was written by `dsbox synth trajectories`)"
            ),
            "{err}"
        );
        let err = StageManifest::read(&tmp.path().join("nope"), "trajectories").unwrap_err();
        assert!(err.to_string().contains("it does not exist"), "{err}");
    }
}
