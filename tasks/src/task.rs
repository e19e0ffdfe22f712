//! The unified task record (`tasks/schema/task.schema.json` describes its JSON form).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::pyliteral::float_repr;

/// Where every task's data is mounted inside a sandbox.
pub const SANDBOX_DATA_DIR: &str = "/data";
/// The writable output directory of prediction tasks inside a sandbox.
pub const SANDBOX_SUBMISSION_DIR: &str = "/submission";

/// What kind of work a task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    /// Answer a question by analysing data; the answer is text, a number or a list.
    Analysis,
    /// Build something (a model, a file) and write it under `/submission`.
    Prediction,
}

impl std::fmt::Display for Track {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Track::Analysis => "analysis",
            Track::Prediction => "prediction",
        })
    }
}

/// Whether a data entry is one file or a whole directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    #[default]
    File,
    Dir,
}

/// One piece of task data: where the sandbox sees it and where it lives on the host.
/// Always mounted read-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    /// Absolute path inside the sandbox, under `/data`.
    pub path: String,
    /// The host file or directory bound there (filled in by the loader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<PathBuf>,
    #[serde(default)]
    pub kind: DataKind,
}

/// A metric by name with its parameters, as written in task files and suite entries:
/// `{"name": "exact_match", "params": {"tolerance": 0.03}}`. Parsed into a
/// [`crate::Metric`] when scoring, so a task with an unknown metric still loads (and
/// `validate` reports it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
}

impl MetricSpec {
    pub fn new(name: &str) -> Self {
        MetricSpec {
            name: name.to_owned(),
            params: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.params.insert(key.to_owned(), value.into());
        self
    }
}

/// The unified task record every suite is turned into.
///
/// `answer` is the ground truth as the task file gives it (string, number or list). It is
/// used only for scoring: nothing in the record that is mounted (`data`) refers to it.
/// Unknown fields are rejected, so a typo in a user's task file is reported, not ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Unique across suites: `<suite>/<local id>` (the task's own id, else its index).
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub suite: String,
    #[serde(default = "default_track")]
    pub track: Track,
    pub question: String,
    #[serde(default)]
    pub context: String,
    /// Read-only inputs, mounted at their sandbox paths.
    #[serde(default, deserialize_with = "de_data_files")]
    pub data: Vec<DataFile>,
    /// Where a prediction task must write its output, e.g. `/submission/submission.csv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Value>,
    /// How the answer must be written (DSBio's `answer_guideline`, DABStep's guidelines,
    /// DAEval's `@name[value]` format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_guideline: Option<String>,
    #[serde(default = "default_metric")]
    pub metric: MetricSpec,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

fn default_track() -> Track {
    Track::Analysis
}

fn default_metric() -> MetricSpec {
    MetricSpec::new("exact_match")
}

/// Data entries may be written as plain sandbox paths or as full objects.
fn de_data_files<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<DataFile>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Path(String),
        Full(DataFile),
    }
    let entries = Vec::<Entry>::deserialize(d)?;
    Ok(entries
        .into_iter()
        .map(|e| match e {
            Entry::Path(path) => DataFile {
                path,
                host: None,
                kind: DataKind::File,
            },
            Entry::Full(f) => f,
        })
        .collect())
}

impl Task {
    /// The ground truth as the reference's metrics see it: Python's `str(answer)`.
    /// `None` when there is no answer, or it is empty after trimming (the reference then
    /// skips the sample: "cannot evaluate").
    pub fn answer_text(&self) -> Option<String> {
        let text = value_to_py_str(self.answer.as_ref()?)?;
        if crate::pyliteral::py_strip(&text).is_empty() {
            None
        } else {
            Some(text)
        }
    }

    /// The host path of the data entry mounted at `sandbox_path`, if the task has one.
    pub fn host_path(&self, sandbox_path: &str) -> Option<&Path> {
        self.data
            .iter()
            .find(|d| d.path == sandbox_path)
            .and_then(|d| d.host.as_deref())
    }

    /// Metadata string field, if present.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }
}

/// Python's `str()` of a JSON value as Python's `json.load` would have produced it.
/// `None` for JSON `null`.
pub fn value_to_py_str(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(value_repr(other)),
    }
}

fn value_repr(value: &Value) -> String {
    use crate::pyliteral::PyValue;
    fn to_py(v: &Value) -> PyValue {
        match v {
            Value::Null => PyValue::None,
            Value::Bool(b) => PyValue::Bool(*b),
            Value::Number(n) => {
                if n.is_f64() {
                    PyValue::Float(n.as_f64().unwrap_or(f64::NAN))
                } else {
                    PyValue::Int(n.to_string())
                }
            }
            Value::String(s) => PyValue::Str(s.clone()),
            Value::Array(items) => PyValue::List(items.iter().map(to_py).collect()),
            Value::Object(map) => PyValue::Dict(
                map.iter()
                    .map(|(k, v)| (PyValue::Str(k.clone()), to_py(v)))
                    .collect(),
            ),
        }
    }
    match value {
        Value::Number(n) if n.is_f64() => float_repr(n.as_f64().unwrap_or(f64::NAN)),
        other => to_py(other).repr(),
    }
}

/// Map a sandbox path under `/data` to the host, given the host directory bound at `/data`.
/// `None` when the path is not under `/data` or tries to leave it (`..`).
pub fn host_for_sandbox_path(data_dir: &Path, sandbox_path: &str) -> Option<PathBuf> {
    let rest = sandbox_path.strip_prefix(SANDBOX_DATA_DIR)?;
    let rest = rest.strip_prefix('/')?;
    let rel = Path::new(rest);
    if rest.is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return None;
    }
    Some(data_dir.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answer_text_is_python_str() {
        let mut t: Task = serde_json::from_value(json!({"question": "q"})).unwrap();
        assert_eq!(t.answer_text(), None);
        for (answer, want) in [
            (json!("0.20"), Some("0.20")),
            (json!(["CST3", "FTL"]), Some("['CST3', 'FTL']")),
            (json!(1.57), Some("1.57")),
            (json!(3), Some("3")),
            (json!(2.0), Some("2.0")),
            (json!("  "), None),
            (json!(null), None),
        ] {
            t.answer = Some(answer);
            assert_eq!(t.answer_text().as_deref(), want);
        }
    }

    #[test]
    fn minimal_record_gets_defaults_and_plain_paths() {
        let t: Task = serde_json::from_value(json!({
            "question": "q", "data": ["/data/a.csv", {"path": "/data/d", "kind": "dir"}]
        }))
        .unwrap();
        assert_eq!(t.track, Track::Analysis);
        assert_eq!(t.metric.name, "exact_match");
        assert_eq!(t.data[0].path, "/data/a.csv");
        assert_eq!(t.data[1].kind, DataKind::Dir);
    }

    #[test]
    fn sandbox_paths_map_under_the_data_dir_only() {
        let root = Path::new("/srv/dsgym/data");
        assert_eq!(
            host_for_sandbox_path(root, "/data/qrdata/x.csv").unwrap(),
            Path::new("/srv/dsgym/data/qrdata/x.csv")
        );
        assert_eq!(host_for_sandbox_path(root, "/data/../etc/passwd"), None);
        assert_eq!(host_for_sandbox_path(root, "/etc/passwd"), None);
        assert_eq!(host_for_sandbox_path(root, "/database"), None);
        assert_eq!(host_for_sandbox_path(root, "/data/"), None);
    }
}
