//! Prompts: a system prompt and a user prompt per task, rendered from minijinja templates
//! (`tasks/prompts/`). The user prompt keeps the reference's upper-case sections —
//! QUESTION, DATASET INFORMATION, DATASET LOCATIONS, INSTRUCTIONS — and the suite's
//! prompt style picks the instruction block (`instructions/<style>.j2`).
//!
//! Every template can be replaced by a file of the same name in a user directory
//! (`--prompts-dir`, `DSBOX_PROMPTS_DIR`, `~/.config/dsbox/prompts`); a suite entry can
//! also name its own system/user template files.

use std::path::{Component, Path, PathBuf};

use minijinja::Environment;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Result, TasksError};
use crate::suite::{PromptSpec, SuiteDef, SuiteOrigin};
use crate::task::{DataKind, Task};

/// The built-in templates, by name.
const BUILTIN: [(&str, &str); 8] = [
    ("system.j2", include_str!("../prompts/system.j2")),
    ("user.j2", include_str!("../prompts/user.j2")),
    (
        "instructions/analysis.j2",
        include_str!("../prompts/instructions/analysis.j2"),
    ),
    (
        "instructions/daeval.j2",
        include_str!("../prompts/instructions/daeval.j2"),
    ),
    (
        "instructions/dabstep.j2",
        include_str!("../prompts/instructions/dabstep.j2"),
    ),
    (
        "instructions/discovery.j2",
        include_str!("../prompts/instructions/discovery.j2"),
    ),
    (
        "instructions/dspredict.j2",
        include_str!("../prompts/instructions/dspredict.j2"),
    ),
    (
        "instructions/science.j2",
        include_str!("../prompts/instructions/science.j2"),
    ),
];

/// Names of the built-in templates (what a user directory can override).
pub fn builtin_template_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _)| *n)
}

/// The two prompts of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderedPrompt {
    pub system: String,
    pub user: String,
}

/// Template prefix for absolute template files named by a suite entry.
const FILE_PREFIX: &str = "file:";

/// Renders prompts. Templates are loaded on first use and cached, so keep one `Prompts`
/// and share it (it is `Send + Sync`).
pub struct Prompts {
    env: Environment<'static>,
}

impl std::fmt::Debug for Prompts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prompts").finish_non_exhaustive()
    }
}

/// A template name safe to look up under a user directory (no absolute paths, no `..`).
fn safe_relative(name: &str) -> Option<&Path> {
    let p = Path::new(name);
    p.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(p)
}

impl Prompts {
    /// Built-in templates only.
    pub fn builtin() -> Self {
        Self::with_override_dir(None)
    }

    /// Built-in templates, each replaced by `<dir>/<name>` when that file exists.
    pub fn with_override_dir(dir: Option<PathBuf>) -> Self {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_loader(move |name| {
            if let Some(path) = name.strip_prefix(FILE_PREFIX) {
                return read_template(Path::new(path));
            }
            if let Some(dir) = &dir
                && let Some(rel) = safe_relative(name)
            {
                let candidate = dir.join(rel);
                if candidate.is_file() {
                    return read_template(&candidate);
                }
            }
            Ok(BUILTIN
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| (*t).to_owned()))
        });
        Prompts { env }
    }

    /// Render the system and user prompts of `task`, a task of suite `def`.
    pub fn render(&self, task: &Task, def: &SuiteDef) -> Result<RenderedPrompt> {
        let spec = &def.prompt;
        let base = match &def.origin {
            SuiteOrigin::User(entry) => entry.parent().map(Path::to_owned),
            SuiteOrigin::Builtin => None,
        };
        let template_name = |custom: &Option<PathBuf>, default: &str| match custom {
            Some(p) => {
                let p = match &base {
                    Some(b) if p.is_relative() => b.join(p),
                    _ => p.clone(),
                };
                format!("{FILE_PREFIX}{}", p.display())
            }
            None => default.to_owned(),
        };
        let ctx = context(task, spec);
        let system = self.render_one(&template_name(&spec.system_template, "system.j2"), &ctx)?;
        let user = self.render_one(&template_name(&spec.user_template, "user.j2"), &ctx)?;
        Ok(RenderedPrompt { system, user })
    }

    fn render_one(&self, name: &str, ctx: &Value) -> Result<String> {
        let err = |e: minijinja::Error| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            TasksError::Template {
                name: name.to_owned(),
                message,
            }
        };
        let template = self.env.get_template(name).map_err(err)?;
        let text = template.render(ctx).map_err(err)?;
        Ok(text.trim_end().to_owned() + "\n")
    }
}

fn read_template(path: &Path) -> std::result::Result<Option<String>, minijinja::Error> {
    std::fs::read_to_string(path).map(Some).map_err(|e| {
        minijinja::Error::new(
            minijinja::ErrorKind::TemplateNotFound,
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

/// The variables templates see.
fn context(task: &Task, spec: &PromptSpec) -> Value {
    let data_paths: Vec<String> = task
        .data
        .iter()
        .map(|d| {
            if d.kind == DataKind::Dir {
                format!("{}/", d.path.trim_end_matches('/'))
            } else {
                d.path.clone()
            }
        })
        .collect();
    serde_json::json!({
        "task": task,
        "id": task.id,
        "suite": task.suite,
        "track": task.track,
        "style": spec.style,
        "question": task.question,
        "context": task.context,
        "data_paths": data_paths,
        "submission": task.submission,
        "guideline": task.answer_guideline,
        "metadata": task.metadata,
        "extra_instructions": spec.instructions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_override_names_are_not_looked_up() {
        assert!(safe_relative("instructions/analysis.j2").is_some());
        assert!(safe_relative("../x.j2").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
    }
}
