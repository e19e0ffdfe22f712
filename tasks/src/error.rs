//! The crate's error type. Every variant names the file, suite or task it is about and,
//! where there is one, the fix.

use std::path::{Path, PathBuf};

/// Errors of loading suites, tasks, predictions and prompt templates. (Scoring a single
/// task fails with [`crate::MetricError`] instead: that never stops a whole suite.)
#[derive(Debug, thiserror::Error)]
pub enum TasksError {
    #[error(
        "data root {} does not exist (from {origin}); point --data-root DIR or DSBOX_DATA_ROOT at a DSGym release directory holding task/ and data/",
        path.display()
    )]
    DataRootMissing { path: PathBuf, origin: String },
    #[error("unknown suite `{name}`; known suites: {known}")]
    UnknownSuite { name: String, known: String },
    #[error("unknown task `{id}`; task ids look like <suite>/<id>, see `dsbox tasks list`")]
    UnknownTask { id: String },
    #[error("{}:{line}:{column}: malformed JSON: {message}", path.display())]
    MalformedJson {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: invalid suite entry: {message}", path.display())]
    SuiteEntry { path: PathBuf, message: String },
    #[error("suite `{name}` is defined twice: {} and {}", first.display(), second.display())]
    DuplicateSuite {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{}:{line}: {message}", path.display())]
    Predictions {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("prompt template `{name}`: {message}")]
    Template { name: String, message: String },
    #[error("cannot write the starter data to {}: {source}; set DSBOX_STARTER_DIR to a writable directory", path.display())]
    StarterData {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = TasksError> = std::result::Result<T, E>;

impl TasksError {
    /// A JSON syntax/shape error at `path`, with serde's line and column.
    pub fn malformed_json(path: &Path, err: &serde_json::Error) -> Self {
        // serde_json's message ends with " at line L column C"; the position is in the
        // variant already, so drop it from the text.
        let message = err.to_string();
        let message = match message.rfind(" at line ") {
            Some(i) => message[..i].to_owned(),
            None => message,
        };
        TasksError::MalformedJson {
            path: path.to_owned(),
            line: err.line(),
            column: err.column(),
            message,
        }
    }
}
