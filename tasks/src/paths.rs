//! Where things live on the host: the DSGym data root, user suite entries, user prompt
//! templates and the starter suite's generated data. Each is taken from a flag, else an
//! environment variable, else an XDG base directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Result, TasksError};

/// Where the data root setting came from (named in the "missing" error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env(&'static str),
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag => f.write_str("--data-root"),
            Origin::Env(var) => f.write_str(var),
            Origin::Default => f.write_str("the default location"),
        }
    }
}

/// The directory of a DSGym release (`task/`, `data/`, `leaderboard/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRoot {
    pub path: PathBuf,
    pub origin: Origin,
}

fn env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// `$<xdg_var>/dsbox/<sub>`, else `$HOME/<fallback>/dsbox/<sub>`.
fn xdg_dir(xdg_var: &str, home_fallback: &str, sub: &str) -> PathBuf {
    match env(xdg_var) {
        Some(base) => PathBuf::from(base).join("dsbox").join(sub),
        None => {
            let home = env("HOME").map_or_else(|| PathBuf::from("~"), PathBuf::from);
            home.join(home_fallback).join("dsbox").join(sub)
        }
    }
}

impl DataRoot {
    /// `--data-root DIR`, else `DSBOX_DATA_ROOT`, else `$XDG_DATA_HOME/dsbox/dsgym`
    /// (default `~/.local/share/dsbox/dsgym`). Existence is checked by [`DataRoot::require`]
    /// only when a suite needs it.
    pub fn resolve(flag: Option<&Path>) -> DataRoot {
        if let Some(p) = flag {
            return DataRoot {
                path: p.to_owned(),
                origin: Origin::Flag,
            };
        }
        if let Some(p) = env("DSBOX_DATA_ROOT") {
            return DataRoot {
                path: PathBuf::from(p),
                origin: Origin::Env("DSBOX_DATA_ROOT"),
            };
        }
        DataRoot {
            path: xdg_dir("XDG_DATA_HOME", ".local/share", "dsgym"),
            origin: Origin::Default,
        }
    }

    /// A fixed directory (tests, embedding).
    pub fn at(path: impl Into<PathBuf>) -> DataRoot {
        DataRoot {
            path: path.into(),
            origin: Origin::Flag,
        }
    }

    /// The directory, or the one-line error naming it and how to set it.
    pub fn require(&self) -> Result<&Path> {
        if self.path.is_dir() {
            Ok(&self.path)
        } else {
            Err(TasksError::DataRootMissing {
                path: self.path.clone(),
                origin: self.origin.to_string(),
            })
        }
    }
}

/// User suite entries: `DSBOX_SUITES_DIR`, else `$XDG_CONFIG_HOME/dsbox/suites`
/// (default `~/.config/dsbox/suites`).
pub fn default_suites_dir() -> PathBuf {
    env("DSBOX_SUITES_DIR").map_or_else(
        || xdg_dir("XDG_CONFIG_HOME", ".config", "suites"),
        PathBuf::from,
    )
}

/// User prompt templates: `DSBOX_PROMPTS_DIR`, else `$XDG_CONFIG_HOME/dsbox/prompts`.
pub fn default_prompts_dir() -> PathBuf {
    env("DSBOX_PROMPTS_DIR").map_or_else(
        || xdg_dir("XDG_CONFIG_HOME", ".config", "prompts"),
        PathBuf::from,
    )
}

/// The starter suite's generated data: `DSBOX_STARTER_DIR`, else
/// `$XDG_CACHE_HOME/dsbox/starter` (default `~/.cache/dsbox/starter`).
pub fn default_starter_dir() -> PathBuf {
    env("DSBOX_STARTER_DIR").map_or_else(
        || xdg_dir("XDG_CACHE_HOME", ".cache", "starter"),
        PathBuf::from,
    )
}
