//! The manifest written beside every built rootfs, and the per-file hashing behind its
//! content hash and `verify`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result, RootfsError};

/// Version of the manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

/// How a rootfs's tree is used by the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutKind {
    /// The tree is a Python environment; the host's system dirs provide the rest.
    Host,
    /// The tree is a complete root filesystem that holds the environment.
    Dir,
}

/// Where the base system came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRecord {
    /// `host`, `debootstrap` or `oci`.
    pub kind: String,
    /// Details: the host interpreter, the Debian suite and mirror, or the OCI path and digest.
    pub source: String,
}

/// A pinned package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackagePin {
    pub name: String,
    pub version: String,
}

/// An optional requirement that was not installed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOut {
    pub package: String,
    pub reason: String,
}

/// One entry of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// `f` file, `d` directory, `l` symlink.
    pub kind: char,
    /// Permission bits (including setuid/setgid/sticky).
    pub mode: u32,
    /// Size in bytes (files only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// sha256 of the content (files) or the link target (symlinks).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Everything recorded about a built rootfs. `files` is large; [`ManifestHeader`] reads the
/// rest without it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The name it was built under.
    pub name: String,
    pub profile: String,
    pub layout: LayoutKind,
    pub base: BaseRecord,
    /// `major.minor.micro` of the environment's interpreter.
    pub python_version: String,
    /// The interpreter inside the sandbox.
    pub python: PathBuf,
    /// `uv 0.x` or `pip 2x`.
    pub installer: String,
    /// Requirements asked for (profile packages, optional ones that resolved, extras).
    pub requested: Vec<String>,
    pub extras: Vec<String>,
    pub left_out: Vec<LeftOut>,
    pub packages: Vec<PackagePin>,
    pub preload: Vec<String>,
    /// sha256 of lock.txt.
    pub lock_hash: String,
    pub size_bytes: u64,
    pub file_count: u64,
    /// RFC 3339, UTC.
    pub built_at: String,
    pub build_seconds: f64,
    /// Notes for the user (e.g. the host stdlib has no .pyc).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// `sha256:<hex>` over every entry of the tree (path, kind, mode, content hash).
    pub content_hash: String,
    /// Path relative to the tree -> record.
    pub files: BTreeMap<String, FileRecord>,
}

/// The manifest without the file list (cheap to read on every `dsbox run`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestHeader {
    pub format: u32,
    pub name: String,
    pub profile: String,
    pub layout: LayoutKind,
    pub base: BaseRecord,
    pub python_version: String,
    pub python: PathBuf,
    pub installer: String,
    pub requested: Vec<String>,
    pub extras: Vec<String>,
    pub left_out: Vec<LeftOut>,
    pub packages: Vec<PackagePin>,
    pub preload: Vec<String>,
    pub lock_hash: String,
    pub size_bytes: u64,
    pub file_count: u64,
    pub built_at: String,
    pub build_seconds: f64,
    #[serde(default)]
    pub warnings: Vec<String>,
    pub content_hash: String,
}

impl Manifest {
    /// Reads a full manifest (with the file list).
    pub fn read(path: &Path) -> Result<Self> {
        read_json(path)
    }

    /// Writes it (pretty JSON is not worth its size with tens of thousands of files).
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec(self).map_err(|e| RootfsError::BadManifest {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        std::fs::write(path, json).at(path)
    }
}

impl ManifestHeader {
    /// Reads the manifest without keeping its file list.
    pub fn read(path: &Path) -> Result<Self> {
        read_json(path)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).at(path)?;
    serde_json::from_slice(&bytes).map_err(|e| RootfsError::BadManifest {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The hashed listing of a tree.
#[derive(Debug, Clone)]
pub struct TreeHash {
    pub files: BTreeMap<String, FileRecord>,
    pub content_hash: String,
    pub size_bytes: u64,
}

/// Hashes every entry under `root` (not following symlinks). Device nodes, sockets and
/// fifos are refused: a rootfs never needs them (the sandbox mounts its own /dev).
pub fn hash_tree(root: &Path) -> Result<TreeHash> {
    let mut files = BTreeMap::new();
    walk(root, root, &mut files, true)?;
    hash_contents(root, &mut files, true)?;
    let size_bytes = files.values().map(|r| r.size).sum();
    Ok(TreeHash {
        content_hash: content_hash(&files),
        files,
        size_bytes,
    })
}

/// The content hash of a file listing: sha256 over `path\0kind mode hash\n` in path order.
pub fn content_hash(files: &BTreeMap<String, FileRecord>) -> String {
    let mut hasher = Sha256::new();
    for (path, rec) in files {
        hasher.update(path.as_bytes());
        hasher.update(format!("\0{} {:o} {}\n", rec.kind, rec.mode, rec.hash).as_bytes());
    }
    format!("sha256:{}", hex(&hasher.finalize()))
}

/// Lists the tree; file records get their hash later, in [`hash_contents`].
/// `strict`: refuse special files (building); otherwise record them as kind `s` so
/// `verify` reports them as changed and goes on.
fn walk(
    root: &Path,
    dir: &Path,
    files: &mut BTreeMap<String, FileRecord>,
    strict: bool,
) -> Result<()> {
    let entries: Vec<_> = std::fs::read_dir(dir)
        .at(dir)?
        .collect::<std::io::Result<_>>()
        .at(dir)?;
    for entry in entries {
        let path = entry.path();
        let rel = rel_path(root, &path);
        let meta = std::fs::symlink_metadata(&path).at(&path)?;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&path).at(&path)?;
            let hash = hex(&Sha256::digest(target.as_os_str().as_encoded_bytes()));
            files.insert(
                rel,
                FileRecord {
                    kind: 'l',
                    mode: 0o777,
                    size: 0,
                    hash,
                },
            );
        } else if ft.is_dir() {
            files.insert(
                rel,
                FileRecord {
                    kind: 'd',
                    mode,
                    size: 0,
                    hash: String::new(),
                },
            );
            walk(root, &path, files, strict)?;
        } else if ft.is_file() {
            files.insert(
                rel,
                FileRecord {
                    kind: 'f',
                    mode,
                    size: meta.size(),
                    hash: String::new(),
                },
            );
        } else if strict {
            return Err(RootfsError::Io {
                path,
                source: std::io::Error::other(
                    "special file (device, fifo or socket) in a rootfs tree: remove it",
                ),
            });
        } else {
            files.insert(
                rel,
                FileRecord {
                    kind: 's',
                    mode,
                    size: 0,
                    hash: String::new(),
                },
            );
        }
    }
    Ok(())
}

/// Hashes the content of every file record, on all cores (a rootfs is a GB or more).
/// `strict`: stop at the first unreadable file; otherwise mark it unreadable and go on.
fn hash_contents(
    root: &Path,
    files: &mut BTreeMap<String, FileRecord>,
    strict: bool,
) -> Result<()> {
    let mut todo: Vec<(&String, &mut FileRecord)> =
        files.iter_mut().filter(|(_, r)| r.kind == 'f').collect();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let chunk = todo.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = todo
            .chunks_mut(chunk)
            .map(|part| {
                scope.spawn(move || -> Result<()> {
                    for (rel, rec) in part.iter_mut() {
                        rec.hash = match hash_file(&root.join(rel.as_str())) {
                            Ok(hash) => hash,
                            Err(err) if strict => return Err(err),
                            Err(err) => format!("unreadable: {err}"),
                        };
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap_or_else(|_| {
                Err(RootfsError::Io {
                    path: root.to_path_buf(),
                    source: std::io::Error::other("a hashing thread panicked"),
                })
            })?;
        }
        Ok(())
    })
}

fn rel_path(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// sha256 of a file's content, hex.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).at(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Content, kind or mode differs.
    pub changed: Vec<String>,
    pub missing: Vec<String>,
    pub added: Vec<String>,
    /// The recomputed content hash.
    pub content_hash: String,
    pub files_checked: usize,
}

impl VerifyReport {
    /// True when the tree matches the manifest exactly.
    pub fn is_clean(&self) -> bool {
        self.changed.is_empty() && self.missing.is_empty() && self.added.is_empty()
    }
}

/// Re-hashes `root` and compares it with `expected`.
pub fn verify_tree(root: &Path, expected: &BTreeMap<String, FileRecord>) -> VerifyReport {
    let mut files = BTreeMap::new();
    let mut report = VerifyReport::default();
    // Lenient: a special or unreadable file is reported as changed, and the rest is still
    // checked; only a directory that cannot be listed stops the walk below it.
    let walked =
        walk(root, root, &mut files, false).and_then(|()| hash_contents(root, &mut files, false));
    if let Err(RootfsError::Io { path, .. } | RootfsError::DiskFull { path }) = &walked {
        report.changed.push(rel_path(root, path));
    }
    for (path, want) in expected {
        match files.get(path) {
            None => {
                if !report.changed.contains(path) {
                    report.missing.push(path.clone())
                }
            }
            Some(have) if have != want => report.changed.push(path.clone()),
            Some(_) => {}
        }
    }
    for path in files.keys() {
        if !expected.contains_key(path) {
            report.added.push(path.clone());
        }
    }
    report.files_checked = files.len();
    report.content_hash = content_hash(&files);
    report
}

/// The current time, RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// `dir`'s tree location inside an object directory.
pub fn tree_dir(object_dir: &Path, layout: LayoutKind) -> PathBuf {
    object_dir.join(match layout {
        LayoutKind::Host => "env",
        LayoutKind::Dir => "root",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/c.py"), "print(1)\n").unwrap();
        std::fs::write(dir.path().join("top"), "x").unwrap();
        std::os::unix::fs::symlink("a/b/c.py", dir.path().join("link")).unwrap();
        dir
    }

    #[test]
    fn hash_is_stable_and_sensitive_to_content_mode_and_links() {
        let dir = tree();
        let first = hash_tree(dir.path()).unwrap();
        assert_eq!(first.files.len(), 5);
        assert_eq!(first.size_bytes, 10);
        assert_eq!(
            hash_tree(dir.path()).unwrap().content_hash,
            first.content_hash
        );

        std::fs::write(dir.path().join("a/b/c.py"), "print(2)\n").unwrap();
        let changed = hash_tree(dir.path()).unwrap().content_hash;
        assert_ne!(changed, first.content_hash);

        std::fs::set_permissions(dir.path().join("top"), PermissionsExt::from_mode(0o700)).unwrap();
        assert_ne!(hash_tree(dir.path()).unwrap().content_hash, changed);

        std::fs::remove_file(dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("top", dir.path().join("link")).unwrap();
        assert_ne!(hash_tree(dir.path()).unwrap().content_hash, changed);
    }

    #[test]
    fn verify_names_changed_missing_and_added_files() {
        let dir = tree();
        let before = hash_tree(dir.path()).unwrap();
        assert!(verify_tree(dir.path(), &before.files).is_clean());

        std::fs::write(dir.path().join("a/b/c.py"), "import os\n").unwrap();
        std::fs::remove_file(dir.path().join("top")).unwrap();
        std::fs::write(dir.path().join("new"), "").unwrap();
        let report = verify_tree(dir.path(), &before.files);
        assert_eq!(report.changed, ["a/b/c.py"]);
        assert_eq!(report.missing, ["top"]);
        assert_eq!(report.added, ["new"]);
        assert!(!report.is_clean());
    }

    #[test]
    fn special_files_are_refused() {
        let dir = tree();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = hash_tree(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("fifo") && err.contains("special file"),
            "{err}"
        );
    }

    #[test]
    fn verify_reports_a_file_swapped_for_a_fifo_and_checks_the_rest() {
        let dir = tree();
        let before = hash_tree(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("top")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("top"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(dir.path().join("a/b/c.py"), "changed\n").unwrap();
        let report = verify_tree(dir.path(), &before.files);
        assert_eq!(report.changed, ["a/b/c.py", "top"]);
        assert!(report.missing.is_empty() && report.added.is_empty());
    }
}
