//! Upload and download files in a sandbox's scratch directories from outside it, through
//! `/proc/<init>/root`, confined:
//!
//! * the path must be absolute, without `..`, inside one of the scratch dirs
//!   (`/workdir`, `/tmp`, `/submission`);
//! * the scratch dir itself is opened with `RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS` from
//!   the sandbox's root and must be a tmpfs; everything below it is resolved with
//!   `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS)` relative to it,
//!   so a symlink the sandboxed code planted (`/workdir/x -> /proc/sys/...`) resolves
//!   inside that scratch dir and never leaves its filesystem: the runtime, which is root,
//!   writes and reads only the sandbox's own scratch files;
//! * only regular files are read or written (opened `O_NONBLOCK`, so a FIFO cannot block
//!   the runtime; the final component is never a symlink);
//! * created files and directories belong to the sandbox's uid.
//!
//! These functions block (file I/O); the pool calls them from `spawn_blocking`.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Why a file could not be transferred.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("invalid sandbox path `{path}`: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error(
        "`{path}` is outside the sandbox's scratch directories ({}): upload and download work only there",
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotScratch { path: String, dirs: Vec<PathBuf> },
    #[error("{op} `{path}` in the sandbox: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` in the sandbox is not a regular file")]
    NotRegular { path: String },
    #[error("`{path}` in the sandbox is {size} bytes, more than the {max} asked for")]
    TooLarge { path: String, size: u64, max: u64 },
}

/// Result alias of this module.
pub type Result<T, E = FileError> = std::result::Result<T, E>;

/// `struct open_how`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Where a sandbox's files are, seen from the runtime.
#[derive(Debug, Clone)]
pub struct SandboxFiles {
    /// Host pid of the sandbox's init (the runtime's child: stable until reaped).
    pub init_pid: i32,
    pub scratch: Vec<PathBuf>,
    pub uid: u32,
    pub gid: u32,
}

/// A validated path: the scratch dir and the components below it.
struct Target {
    scratch: PathBuf,
    rest: Vec<std::ffi::OsString>,
}

impl SandboxFiles {
    fn target(&self, path: &str) -> Result<Target> {
        let bad = |reason| FileError::BadPath {
            path: path.to_owned(),
            reason,
        };
        if path.contains('\0') {
            return Err(bad("it contains a NUL byte"));
        }
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(bad("give an absolute path such as /workdir/data.csv"));
        }
        let mut comps = Vec::new();
        for c in p.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => comps.push(n.to_owned()),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(bad("`..` is not allowed"));
                }
            }
        }
        for dir in &self.scratch {
            let dir_comps: Vec<_> = dir
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_owned()),
                    _ => None,
                })
                .collect();
            if comps.len() > dir_comps.len() && comps[..dir_comps.len()] == dir_comps[..] {
                return Ok(Target {
                    scratch: dir.clone(),
                    rest: comps[dir_comps.len()..].to_vec(),
                });
            }
        }
        Err(FileError::NotScratch {
            path: path.to_owned(),
            dirs: self.scratch.clone(),
        })
    }

    /// The scratch dir, opened from the sandbox's root.
    fn open_scratch(&self, t: &Target, path: &str) -> Result<OwnedFd> {
        let io = |op| {
            move |source| FileError::Io {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let root = open_path(&format!("/proc/{}/root", self.init_pid))
            .map_err(io("open the sandbox's root for"))?;
        let rel = t.scratch.strip_prefix("/").unwrap_or(&t.scratch);
        let dir = openat2(
            root.as_raw_fd(),
            rel,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
        )
        .map_err(io("open the scratch dir of"))?;
        // SAFETY: statfs is plain data filled in by fstatfs.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and out-pointer.
        if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut st) } < 0 {
            return Err(io("statfs the scratch dir of")(
                std::io::Error::last_os_error(),
            ));
        }
        #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
        if st.f_type as i64 != TMPFS_MAGIC {
            return Err(io("check the scratch dir of")(std::io::Error::other(
                "it is not the sandbox's scratch tmpfs",
            )));
        }
        Ok(dir)
    }

    /// Write `data` to `path` (parents created), owned by the sandbox's uid.
    pub fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        let t = self.target(path)?;
        let scratch = self.open_scratch(&t, path)?;
        let io = |op| {
            move |source| FileError::Io {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_XDEV | libc::RESOLVE_NO_MAGICLINKS;
        // Parents, one by one, each created owned by the sandbox's uid when missing.
        let mut parent = PathBuf::new();
        for name in &t.rest[..t.rest.len() - 1] {
            let next = parent.join(name);
            match openat2(
                scratch.as_raw_fd(),
                &next,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                0,
                resolve,
            ) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let dir = if parent.as_os_str().is_empty() {
                        None
                    } else {
                        Some(
                            openat2(
                                scratch.as_raw_fd(),
                                &parent,
                                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                                0,
                                resolve,
                            )
                            .map_err(io("open a parent directory of"))?,
                        )
                    };
                    let at = dir.as_ref().map_or(scratch.as_raw_fd(), AsRawFd::as_raw_fd);
                    let cname = cstring(name.as_bytes(), path)?;
                    // SAFETY: a valid dirfd and NUL-terminated name.
                    if unsafe { libc::mkdirat(at, cname.as_ptr(), 0o755) } < 0 {
                        let e = std::io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EEXIST) {
                            return Err(io("create a parent directory of")(e));
                        }
                    } else {
                        // SAFETY: as above; the new directory is not followed if replaced.
                        unsafe {
                            libc::fchownat(
                                at,
                                cname.as_ptr(),
                                self.uid,
                                self.gid,
                                libc::AT_SYMLINK_NOFOLLOW,
                            )
                        };
                    }
                }
                Err(e) => return Err(io("open a parent directory of")(e)),
            }
            parent = next;
        }
        let rel: PathBuf = t.rest.iter().collect();
        let fd = openat2(
            scratch.as_raw_fd(),
            &rel,
            libc::O_WRONLY
                | libc::O_CREAT
                | libc::O_TRUNC
                | libc::O_NOFOLLOW
                | libc::O_NONBLOCK
                | libc::O_CLOEXEC,
            0o644,
            resolve,
        )
        .map_err(io("create"))?;
        if !is_regular(&fd) {
            return Err(FileError::NotRegular {
                path: path.to_owned(),
            });
        }
        // SAFETY: a valid fd we own.
        if unsafe { libc::fchown(fd.as_raw_fd(), self.uid, self.gid) } < 0 {
            return Err(io("chown")(std::io::Error::last_os_error()));
        }
        let mut file = std::fs::File::from(fd);
        file.write_all(data).map_err(io("write"))?;
        Ok(())
    }

    /// Read `path` (a regular file of at most `max` bytes).
    pub fn read(&self, path: &str, max: u64) -> Result<Vec<u8>> {
        let t = self.target(path)?;
        let scratch = self.open_scratch(&t, path)?;
        let rel: PathBuf = t.rest.iter().collect();
        let fd = openat2(
            scratch.as_raw_fd(),
            &rel,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            0,
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_XDEV | libc::RESOLVE_NO_MAGICLINKS,
        )
        .map_err(|source| FileError::Io {
            op: "open",
            path: path.to_owned(),
            source,
        })?;
        if !is_regular(&fd) {
            return Err(FileError::NotRegular {
                path: path.to_owned(),
            });
        }
        let file = std::fs::File::from(fd);
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size > max {
            return Err(FileError::TooLarge {
                path: path.to_owned(),
                size,
                max,
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        // The file may grow meanwhile: read at most max + 1 bytes to notice.
        file.take(max + 1)
            .read_to_end(&mut out)
            .map_err(|source| FileError::Io {
                op: "read",
                path: path.to_owned(),
                source,
            })?;
        if out.len() as u64 > max {
            return Err(FileError::TooLarge {
                path: path.to_owned(),
                size: out.len() as u64,
                max,
            });
        }
        Ok(out)
    }
}

fn cstring(bytes: &[u8], path: &str) -> Result<CString> {
    CString::new(bytes).map_err(|_| FileError::BadPath {
        path: path.to_owned(),
        reason: "it contains a NUL byte",
    })
}

fn is_regular(fd: &OwnedFd) -> bool {
    // SAFETY: stat is plain data filled in by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and out-pointer.
    unsafe {
        libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG
    }
}

fn open_path(path: &str) -> std::io::Result<OwnedFd> {
    let c = CString::new(path).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// openat2(2): libc has no wrapper.
fn openat2(
    dirfd: RawFd,
    path: &Path,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let how = OpenHow {
        flags: flags as u64,
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve,
    };
    loop {
        // SAFETY: a valid dirfd, NUL-terminated path and open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a new fd nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = std::io::Error::last_os_error();
        // EAGAIN: a rename raced the RESOLVE_IN_ROOT walk; the kernel asks us to retry.
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> SandboxFiles {
        SandboxFiles {
            init_pid: 1,
            scratch: vec!["/workdir".into(), "/tmp".into(), "/submission".into()],
            uid: 1000,
            gid: 1000,
        }
    }

    #[test]
    fn paths_must_be_inside_a_scratch_dir_without_climbing() {
        let f = files();
        let t = f.target("/workdir/a/./b.csv").unwrap();
        assert_eq!(t.scratch, PathBuf::from("/workdir"));
        assert_eq!(t.rest, vec!["a", "b.csv"]);
        for (path, expect) in [
            ("/workdir/../etc/passwd", "`..`"),
            ("workdir/x", "absolute"),
            ("/workdir", "outside"),
            ("/etc/passwd", "outside"),
            ("/workdirx/y", "outside"),
            ("/data/train.csv", "outside"),
            ("/tmp/a\0b", "NUL"),
        ] {
            let err = f
                .target(path)
                .err()
                .unwrap_or_else(|| panic!("{path} accepted"));
            assert!(err.to_string().contains(expect), "{path}: {err}");
        }
    }
}
