//! The content-addressed store of built rootfs.
//!
//! ```text
//! <store>/objects/<hex>/      one built rootfs: env/ or root/, manifest.json, lock.txt
//! <store>/names/<name>        symlink -> ../objects/<hex>
//! <store>/tmp/<build>/        builds in progress (an `owner` file names the builder)
//! <store>/lock                flock: commit, rm and gc hold it exclusively
//! <store>/locks/<name>        flock: one `ensure` build per name at a time
//! ```
//!
//! A build fills a directory under `tmp/` and is renamed into `objects/` only once it is
//! complete, then its name is pointed at it with a second rename: a build killed at any
//! point leaves no name (so nothing in `list`), only a temp dir that `gc` removes.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use crate::error::{IoContext, Result, RootfsError};
use crate::manifest::{ManifestHeader, tree_dir};

/// A store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A named entry of the store.
#[derive(Debug, Clone)]
pub struct StoreEntry {
    pub name: String,
    pub object_dir: PathBuf,
    pub header: ManifestHeader,
}

impl StoreEntry {
    /// The tree: the env dir (host layout) or the root dir.
    pub fn tree(&self) -> PathBuf {
        tree_dir(&self.object_dir, self.header.layout)
    }
}

/// What `gc` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub temp_dirs_removed: Vec<String>,
    pub objects_removed: Vec<String>,
    pub names_removed: Vec<String>,
}

/// An exclusive lock on the store, released on drop.
pub struct StoreLock {
    _lock: Flock<File>,
}

impl Store {
    /// The store at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `--store` if given, else `$DSBOX_STORE`, else `$XDG_DATA_HOME/dsbox/rootfs`
    /// (default `~/.local/share/dsbox/rootfs`).
    pub fn locate(flag: Option<&Path>) -> Self {
        if let Some(dir) = flag {
            return Self::new(dir);
        }
        if let Some(dir) = std::env::var_os("DSBOX_STORE").filter(|d| !d.is_empty()) {
            return Self::new(dir);
        }
        let data = match std::env::var_os("XDG_DATA_HOME") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".local/share"),
        };
        Self::new(data.join("dsbox").join("rootfs"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn names_dir(&self) -> PathBuf {
        self.root.join("names")
    }

    fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Creates the store's directories.
    pub fn init(&self) -> Result<()> {
        for dir in [self.names_dir(), self.objects_dir(), self.tmp_dir()] {
            std::fs::create_dir_all(&dir).at(&dir)?;
        }
        Ok(())
    }

    /// Takes the store's exclusive lock (blocks while another commit/rm/gc holds it).
    pub fn lock(&self) -> Result<StoreLock> {
        self.init()?;
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| RootfsError::io(&path, errno.into()))?;
        Ok(StoreLock { _lock: lock })
    }

    /// Serialises builds of one name (`ensure` from several processes builds once): blocks
    /// while another process holds it.
    pub fn build_lock(&self, name: &str) -> Result<StoreLock> {
        validate_name(name)?;
        let dir = self.root.join("locks");
        std::fs::create_dir_all(&dir).at(&dir)?;
        let path = dir.join(name);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| RootfsError::io(&path, errno.into()))?;
        Ok(StoreLock { _lock: lock })
    }

    /// Every name with its object, sorted by name. Names whose object or manifest is
    /// unreadable are skipped (`gc` removes them).
    pub fn list(&self) -> Result<Vec<StoreEntry>> {
        let dir = self.names_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RootfsError::io(&dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.at(&dir)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            if let Ok(Some(found)) = self.get(&name) {
                out.push(found);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The entry called `name`, if it is built.
    pub fn get(&self, name: &str) -> Result<Option<StoreEntry>> {
        validate_name(name)?;
        let link = self.names_dir().join(name);
        let target = match std::fs::read_link(&link) {
            Ok(target) => target,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RootfsError::io(&link, e)),
        };
        let object_dir = self.names_dir().join(target);
        let manifest = object_dir.join("manifest.json");
        if !manifest.exists() {
            return Ok(None);
        }
        let header = ManifestHeader::read(&manifest)?;
        let object_dir = std::fs::canonicalize(&object_dir).at(&object_dir)?;
        Ok(Some(StoreEntry {
            name: name.to_string(),
            object_dir,
            header,
        }))
    }

    /// Starts a build: a fresh directory under `tmp/` with an `owner` file naming this
    /// process. It is removed on drop unless committed.
    pub fn begin(&self, name: &str) -> Result<TempBuild> {
        validate_name(name)?;
        self.init()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("build-{name}-"))
            .tempdir_in(self.tmp_dir())
            .at(self.tmp_dir())?
            .keep();
        let owner = dir.join("owner");
        std::fs::write(&owner, owner_token(std::process::id()).unwrap_or_default()).at(&owner)?;
        Ok(TempBuild {
            dir,
            committed: false,
        })
    }

    /// Moves a finished build into `objects/<hex>` (or drops it when an identical object
    /// exists) and points `name` at it. Returns the object dir and whether an identical
    /// object existed already (its manifest, from the first build, is kept).
    pub fn commit(
        &self,
        mut build: TempBuild,
        name: &str,
        content_hash: &str,
    ) -> Result<(PathBuf, bool)> {
        let hex = content_hash.trim_start_matches("sha256:");
        let _lock = self.lock()?;
        let object = self.objects_dir().join(hex);
        let owner = build.dir.join("owner");
        std::fs::remove_file(&owner).at(&owner)?;
        let existed = object.exists();
        if existed {
            // Same content already stored: keep the existing object (it may be in use).
            remove_tree(&build.dir)?;
        } else {
            std::fs::rename(&build.dir, &object).at(&object)?;
        }
        build.committed = true;
        let tmp_link = self
            .names_dir()
            .join(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(Path::new("../objects").join(hex), &tmp_link).at(&tmp_link)?;
        let link = self.names_dir().join(name);
        std::fs::rename(&tmp_link, &link).at(&link)?;
        Ok((object, existed))
    }

    /// Removes the name; its object too when no other name points at it. Returns whether
    /// the object was removed.
    pub fn remove(&self, name: &str) -> Result<bool> {
        validate_name(name)?;
        let _lock = self.lock()?;
        let link = self.names_dir().join(name);
        let target = match std::fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RootfsError::NotFound {
                    name: name.to_string(),
                    store: self.root.clone(),
                });
            }
            Err(e) => return Err(RootfsError::io(&link, e)),
        };
        std::fs::remove_file(&link).at(&link)?;
        let referenced = self.referenced_objects()?;
        let hex = target
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !hex.is_empty() && !referenced.contains(&hex) {
            let object = self.objects_dir().join(&hex);
            let existed = object.exists();
            if existed {
                remove_tree(&object)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn referenced_objects(&self) -> Result<Vec<String>> {
        let dir = self.names_dir();
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for entry in entries {
            let entry = entry.at(&dir)?;
            if let Ok(target) = std::fs::read_link(entry.path())
                && let Some(hex) = target.file_name()
            {
                out.push(hex.to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }

    /// Removes temp dirs of builders that are gone, objects no name points at, and names
    /// whose object is gone.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = self.lock()?;
        let mut report = GcReport::default();
        let tmp = self.tmp_dir();
        for entry in std::fs::read_dir(&tmp).at(&tmp)? {
            let path = entry.at(&tmp)?.path();
            let token = std::fs::read_to_string(path.join("owner")).unwrap_or_default();
            if builder_alive(&token) {
                continue;
            }
            remove_tree(&path)?;
            report.temp_dirs_removed.push(
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into(),
            );
        }
        let names = self.names_dir();
        for entry in std::fs::read_dir(&names).at(&names)? {
            let path = entry.at(&names)?.path();
            let dangling = std::fs::read_link(&path)
                .map(|t| !names.join(t).join("manifest.json").exists())
                .unwrap_or(true);
            if dangling {
                std::fs::remove_file(&path).at(&path)?;
                report.names_removed.push(
                    path.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into(),
                );
            }
        }
        let referenced = self.referenced_objects()?;
        let objects = self.objects_dir();
        for entry in std::fs::read_dir(&objects).at(&objects)? {
            let path = entry.at(&objects)?.path();
            let hex = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if !referenced.contains(&hex) {
                remove_tree(&path)?;
                report.objects_removed.push(hex);
            }
        }
        Ok(report)
    }
}

/// A build in progress under `<store>/tmp`; removed on drop unless committed.
#[derive(Debug)]
pub struct TempBuild {
    dir: PathBuf,
    committed: bool,
}

impl TempBuild {
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TempBuild {
    fn drop(&mut self) {
        if !self.committed
            && let Err(err) = remove_tree(&self.dir)
        {
            tracing::warn!(
                "could not remove the unfinished build {}: {err}",
                self.dir.display()
            );
        }
    }
}

/// Removes a directory tree, making read-only directories writable first when needed.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RootfsError::io(path, e)),
    }
}

/// Checks a rootfs name: it becomes a file name in the store.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(RootfsError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// `pid starttime`: identifies a process even after its pid is reused.
fn owner_token(pid: u32) -> Option<String> {
    Some(format!("{pid} {}", start_time(pid)?))
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 22 (starttime) is the 20th after the command name.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn builder_alive(token: &str) -> bool {
    let mut parts = token.split_whitespace();
    let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(pid) == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{BaseRecord, LayoutKind};

    fn header(name: &str) -> ManifestHeader {
        ManifestHeader {
            format: 1,
            name: name.into(),
            profile: "minimal".into(),
            layout: LayoutKind::Host,
            base: BaseRecord {
                kind: "host".into(),
                source: "/usr/bin/python3".into(),
            },
            python_version: "3.11.2".into(),
            python: "/opt/dsbox/env/bin/python".into(),
            installer: "uv".into(),
            requested: vec![],
            extras: vec![],
            left_out: vec![],
            packages: vec![],
            preload: vec![],
            lock_hash: String::new(),
            size_bytes: 0,
            file_count: 0,
            built_at: String::new(),
            build_seconds: 0.0,
            warnings: vec![],
            content_hash: "sha256:ab".into(),
        }
    }

    fn fake_build(store: &Store, name: &str, hex: &str) -> PathBuf {
        let build = store.begin(name).unwrap();
        std::fs::create_dir(build.path().join("env")).unwrap();
        let json = serde_json::to_vec(&header(name)).unwrap();
        std::fs::write(build.path().join("manifest.json"), json).unwrap();
        store.commit(build, name, hex).unwrap().0
    }

    #[test]
    fn commit_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let obj = fake_build(&store, "one", "sha256:aa");
        assert!(obj.ends_with("objects/aa"));
        fake_build(&store, "two", "sha256:aa");
        let names: Vec<_> = store.list().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["one", "two"]);
        // Shared object: removing one name keeps it.
        assert!(!store.remove("one").unwrap());
        assert!(obj.exists());
        assert!(store.remove("two").unwrap());
        assert!(!obj.exists());
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(
            store.remove("two"),
            Err(RootfsError::NotFound { .. })
        ));
    }

    #[test]
    fn dropped_build_leaves_nothing_and_dead_builders_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let build = store.begin("x").unwrap();
        let path = build.path().to_path_buf();
        drop(build);
        assert!(!path.exists());

        // A temp dir whose owner is dead (pid 0 never matches) is collected; ours is not.
        let stale = dir.path().join("tmp/build-stale");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("owner"), "999999999 1").unwrap();
        let live = store.begin("live").unwrap();
        let report = store.gc().unwrap();
        assert_eq!(report.temp_dirs_removed, ["build-stale"]);
        assert!(live.path().exists());
    }

    #[test]
    fn gc_removes_unreferenced_objects_and_dangling_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        fake_build(&store, "keep", "sha256:bb");
        std::fs::create_dir_all(dir.path().join("objects/cc")).unwrap();
        std::os::unix::fs::symlink("../objects/dd", dir.path().join("names/gone")).unwrap();
        let report = store.gc().unwrap();
        assert_eq!(report.objects_removed, ["cc"]);
        assert_eq!(report.names_removed, ["gone"]);
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn names_are_validated() {
        for bad in ["", ".hidden", "a/b", "../x", "sp ace"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        validate_name("analysis-3.11_x").unwrap();
    }
}
