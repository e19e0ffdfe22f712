//! Profiles: which packages a rootfs holds and which modules the kernel zygote preloads.
//! They are data (TOML): the built-in ones ship in `rootfs/profiles/` and are compiled
//! into the binary; users add or override profiles with files in a profile directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Result, RootfsError};

/// The built-in profiles, embedded so the binary works from any directory.
const BUILTIN: &[(&str, &str)] = &[
    ("minimal", include_str!("../profiles/minimal.toml")),
    ("analysis", include_str!("../profiles/analysis.toml")),
    ("bio", include_str!("../profiles/bio.toml")),
    ("prediction", include_str!("../profiles/prediction.toml")),
    ("bench", include_str!("../profiles/bench.toml")),
];

/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "analysis";

/// One profile file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    description: String,
    #[serde(default)]
    extends: Option<String>,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    optional: Vec<String>,
    #[serde(default)]
    preload: Option<Vec<String>>,
}

/// A profile with `extends` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Requirements that must install (PEP 508 strings).
    pub packages: Vec<String>,
    /// Requirements installed where they resolve together with `packages`; left out (and
    /// recorded in the manifest) otherwise.
    pub optional: Vec<String>,
    /// Modules the kernel zygote imports before forking kernels.
    pub preload: Vec<String>,
    /// Where the profile came from (`builtin` or a file path).
    pub source: String,
}

/// The known profiles: built-in ones overlaid by the user's profile directory.
#[derive(Debug, Clone)]
pub struct ProfileSet {
    files: BTreeMap<String, (ProfileFile, String)>,
}

impl ProfileSet {
    /// The built-in profiles plus `*.toml` files in `user_dir` (a user file with a built-in
    /// name replaces the built-in one).
    pub fn load(user_dir: Option<&Path>) -> Result<Self> {
        let mut files = BTreeMap::new();
        for (name, text) in BUILTIN {
            let file = parse(text, Path::new(&format!("rootfs/profiles/{name}.toml")))?;
            files.insert((*name).to_string(), (file, "builtin".to_string()));
        }
        if let Some(dir) = user_dir {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self { files }),
                Err(e) => return Err(RootfsError::io(dir, e)),
            };
            for entry in entries {
                let path = entry.map_err(|e| RootfsError::io(dir, e))?.path();
                if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                    continue;
                }
                let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                let text = std::fs::read_to_string(&path).map_err(|e| RootfsError::io(&path, e))?;
                let file = parse(&text, &path)?;
                files.insert(name.to_string(), (file, path.display().to_string()));
            }
        }
        Ok(Self { files })
    }

    /// The user's profile directory: `$DSBOX_PROFILES`, else
    /// `$XDG_CONFIG_HOME/dsbox/profiles` (default `~/.config/dsbox/profiles`).
    pub fn default_user_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DSBOX_PROFILES") {
            return Some(PathBuf::from(dir));
        }
        let config = match std::env::var_os("XDG_CONFIG_HOME") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
        };
        Some(config.join("dsbox").join("profiles"))
    }

    /// Names of every known profile, sorted.
    pub fn names(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }

    /// Whether `name` is a known profile.
    pub fn contains(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    /// The profile `name` with its `extends` chain merged (parent packages first).
    pub fn get(&self, name: &str) -> Result<Profile> {
        let mut chain: Vec<&str> = Vec::new();
        let mut current = name;
        loop {
            let Some((file, _)) = self.files.get(current) else {
                return Err(RootfsError::UnknownProfile {
                    name: current.to_string(),
                    known: self.names(),
                });
            };
            if chain.contains(&current) {
                return Err(RootfsError::ProfileInvalid {
                    path: PathBuf::from(&self.files[name].1),
                    message: format!("`extends` forms a cycle through `{current}`"),
                });
            }
            chain.push(current);
            match &file.extends {
                Some(parent) => current = parent,
                None => break,
            }
        }
        let (top, source) = &self.files[name];
        let mut packages = Vec::new();
        let mut optional = Vec::new();
        for link in chain.iter().rev() {
            let (file, _) = &self.files[*link];
            push_unique(&mut packages, &file.packages);
            push_unique(&mut optional, &file.optional);
        }
        // The nearest profile that names preload modules wins.
        let preload = chain
            .iter()
            .find_map(|link| self.files[*link].0.preload.clone())
            .unwrap_or_default();
        Ok(Profile {
            name: name.to_string(),
            description: top.description.clone(),
            packages,
            optional,
            preload,
            source: source.clone(),
        })
    }
}

fn push_unique(into: &mut Vec<String>, from: &[String]) {
    for item in from {
        if !into
            .iter()
            .any(|have| requirement_name(have) == requirement_name(item))
        {
            into.push(item.clone());
        }
    }
}

fn parse(text: &str, path: &Path) -> Result<ProfileFile> {
    let file: ProfileFile = toml::from_str(text).map_err(|e| RootfsError::ProfileInvalid {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })?;
    for req in file.packages.iter().chain(&file.optional) {
        if requirement_name(req).is_empty() {
            return Err(RootfsError::ProfileInvalid {
                path: path.to_path_buf(),
                message: format!("`{req}` is not a package requirement"),
            });
        }
    }
    Ok(file)
}

/// The normalised project name of a requirement string (`Scikit_Learn>=1.2` -> `scikit-learn`),
/// per PEP 503.
pub fn requirement_name(req: &str) -> String {
    let end = req
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .unwrap_or(req.len());
    normalize_name(&req[..end])
}

/// PEP 503 normalisation: lowercase, runs of `-_.` become one `-`.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut last_sep = false;
    for c in name.trim().chars() {
        if c == '-' || c == '_' || c == '.' {
            if !last_sep {
                out.push('-');
            }
            last_sep = true;
        } else {
            out.push(c.to_ascii_lowercase());
            last_sep = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse_and_analysis_preloads_pandas_numpy() {
        let set = ProfileSet::load(None).unwrap();
        assert_eq!(
            set.names(),
            ["analysis", "bench", "bio", "minimal", "prediction"]
        );
        let analysis = set.get("analysis").unwrap();
        assert_eq!(analysis.preload, ["pandas", "numpy"]);
        for pkg in [
            "numpy",
            "pandas",
            "scikit-learn",
            "statsmodels",
            "linearmodels",
        ] {
            assert!(analysis.packages.iter().any(|p| p == pkg), "{pkg}");
        }
        assert_eq!(analysis.optional, ["dowhy", "econml"]);
        assert!(set.get("minimal").unwrap().packages.is_empty());
    }

    #[test]
    fn extends_merges_parent_packages_first() {
        let set = ProfileSet::load(None).unwrap();
        let bench = set.get("bench").unwrap();
        assert_eq!(bench.packages[0], "numpy");
        assert!(
            bench
                .packages
                .ends_with(&["jupyter_client".into(), "ipykernel".into()])
        );
        assert_eq!(bench.optional, ["dowhy", "econml"]);
    }

    #[test]
    fn unknown_profile_lists_known_ones() {
        let set = ProfileSet::load(None).unwrap();
        let err = set.get("nope").unwrap_err().to_string();
        assert!(err.contains("unknown profile `nope`"), "{err}");
        assert!(
            err.contains("analysis, bench, bio, minimal, prediction"),
            "{err}"
        );
    }

    #[test]
    fn user_dir_adds_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mine.toml"),
            "extends = \"minimal\"\npackages = [\"tabulate\"]\npreload = [\"tabulate\"]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("minimal.toml"), "packages = [\"six\"]\n").unwrap();
        let set = ProfileSet::load(Some(dir.path())).unwrap();
        let mine = set.get("mine").unwrap();
        assert_eq!(mine.packages, ["six", "tabulate"]);
        assert_eq!(mine.preload, ["tabulate"]);
        assert!(set.get("minimal").unwrap().source.ends_with("minimal.toml"));
    }

    #[test]
    fn bad_profile_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.toml"), "pakages = [\"x\"]\n").unwrap();
        let err = ProfileSet::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("pakages"), "{err}");
    }

    #[test]
    fn extends_cycle_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), "extends = \"b\"\n").unwrap();
        std::fs::write(dir.path().join("b.toml"), "extends = \"a\"\n").unwrap();
        let set = ProfileSet::load(Some(dir.path())).unwrap();
        assert!(set.get("a").unwrap_err().to_string().contains("cycle"));
    }

    #[test]
    fn requirement_names_are_normalised() {
        assert_eq!(requirement_name("Scikit_Learn>=1.2"), "scikit-learn");
        assert_eq!(
            requirement_name("numpy[extra] ; python_version>'3'"),
            "numpy"
        );
        assert_eq!(normalize_name("jupyter_client"), "jupyter-client");
    }
}
