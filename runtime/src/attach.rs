//! Changing the mounts of a *running* sandbox from outside it: attach host files and
//! directories read-only (a task's data into a pooled sandbox that was made before the
//! task was known), make a mount read-only.
//!
//! How ([`apply`]):
//! 1. Here, in the runtime's own mount namespace: `open_tree(OPEN_TREE_CLONE |
//!    AT_RECURSIVE)` makes a detached copy of each host tree, and
//!    `mount_setattr(MOUNT_ATTR_RDONLY | NOSUID | NODEV)` makes it read-only before anyone
//!    inside can see it. Every path becomes a C string now.
//! 2. A short-lived helper — `clone(CLONE_VM | CLONE_VFORK)` on its own stack, so no page
//!    table is copied however large the runtime is — `setns`es into the sandbox's mount
//!    namespace through init's pidfd, creates the mount points (`mkdir`, or an empty file
//!    for a file) and `move_mount`s the detached trees there. It only makes syscalls on
//!    data prepared in step 1 (no allocation, no locks) and reports a failure as
//!    (operation index, errno) in memory it shares with the caller.
//!
//! The helper is root with every capability in the sandbox's mount namespace (the
//! sandbox's own processes have none), so it may create mount points where they cannot
//! write (e.g. in a directory their landlock rules make read-only).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use crate::sandbox::Sandbox;
use crate::syscall::Errno;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
/// Stack of the helper: a handful of syscalls deep.
const HELPER_STACK: usize = 256 << 10;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// One change to a running sandbox's mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountEdit {
    /// The host file or directory `source` (with its submounts), read-only, nosuid and
    /// nodev, at `destination`; missing parent directories and the mount point are created.
    AttachReadOnly {
        source: PathBuf,
        destination: PathBuf,
    },
    /// Make the mount at `path` read-only (e.g. a scratch dir a task may not write).
    MakeReadOnly { path: PathBuf },
    /// Make the mount at `path` writable again (undo [`MountEdit::MakeReadOnly`]).
    MakeWritable { path: PathBuf },
}

/// Why an edit failed. The sandbox is unchanged by the failed edit and by every later one;
/// earlier edits of the same call stay applied.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "mount destination `{}` must be an absolute path without `..` below `/` (e.g. /data/train.csv)",
        path.display()
    )]
    BadDestination { path: PathBuf },
    #[error("cannot attach {}: {errno}; check that the path exists and is readable", path.display())]
    Source { path: PathBuf, errno: Errno },
    #[error("cannot make the copy of {} read-only: {errno}", path.display())]
    SetAttr { path: PathBuf, errno: Errno },
    #[error("path {} contains a NUL byte", path.display())]
    Nul { path: PathBuf },
    #[error("sandbox {id}: cannot start the mount helper: {errno}")]
    Helper { id: String, errno: Errno },
    #[error("sandbox {id}: cannot enter its mount namespace: {errno} (has it ended?)")]
    Enter { id: String, errno: Errno },
    #[error("sandbox {id}: {op} {} failed: {errno}", path.display())]
    Step {
        id: String,
        op: &'static str,
        path: PathBuf,
        errno: Errno,
    },
}

/// One syscall the helper makes, with everything it needs prepared.
#[derive(Debug)]
enum Op {
    /// mkdir, EEXIST is fine.
    Mkdir {
        path: CString,
    },
    /// An empty file as a mount point, EEXIST is fine.
    CreateFile {
        path: CString,
    },
    MoveMount {
        tree: RawFd,
        path: CString,
    },
    SetReadOnly {
        path: CString,
    },
    SetWritable {
        path: CString,
    },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Mkdir { .. } => "mkdir",
            Op::CreateFile { .. } => "create mount point",
            Op::MoveMount { .. } => "move_mount to",
            Op::SetReadOnly { .. } => "mount_setattr(MOUNT_ATTR_RDONLY) on",
            Op::SetWritable { .. } => "mount_setattr(clear MOUNT_ATTR_RDONLY) on",
        }
    }

    fn path(&self) -> PathBuf {
        let c = match self {
            Op::Mkdir { path }
            | Op::CreateFile { path }
            | Op::MoveMount { path, .. }
            | Op::SetReadOnly { path }
            | Op::SetWritable { path } => path,
        };
        PathBuf::from(c.to_string_lossy().into_owned())
    }
}

/// The normalized absolute form of a destination inside the sandbox.
fn destination(path: &Path) -> Result<PathBuf, AttachError> {
    let bad = || AttachError::BadDestination { path: path.into() };
    if !path.is_absolute() {
        return Err(bad());
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    if out == Path::new("/") {
        return Err(bad());
    }
    Ok(out)
}

fn cstring(path: &Path) -> Result<CString, AttachError> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| AttachError::Nul { path: path.into() })
}

/// A detached, read-only copy of `source` (step 1).
fn detached_copy(source: &Path) -> Result<OwnedFd, AttachError> {
    let c = cstring(source)?;
    // SAFETY: open_tree takes a dirfd, a NUL-terminated path and flags; it returns a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    };
    if fd < 0 {
        return Err(AttachError::Source {
            path: source.into(),
            errno: Errno::last(),
        });
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: attr is a valid struct mount_attr of the size passed; "" with AT_EMPTY_PATH
    // names the detached tree itself.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(AttachError::SetAttr {
            path: source.into(),
            errno: Errno::last(),
        });
    }
    Ok(tree)
}

/// What the helper needs; lives on the caller's stack while the helper runs.
struct HelperArgs<'a> {
    pidfd: RawFd,
    ops: &'a [Op],
    /// Set by the helper on failure: index of the failed op (usize::MAX: setns), errno.
    failed: *mut (usize, i32),
}

/// The helper (step 2). Only syscalls; never allocates, locks or unwinds.
extern "C" fn helper(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the HelperArgs of `run_helper`, which is suspended
    // (CLONE_VFORK) and keeps it alive until this function has returned.
    let args = unsafe { &*(arg as *const HelperArgs<'_>) };
    let fail = |index: usize| -> libc::c_int {
        // SAFETY: errno location of this thread of execution; `failed` is valid (above).
        unsafe { *args.failed = (index, *libc::__errno_location()) };
        1
    };
    // SAFETY: setns on a pidfd with one namespace flag.
    if unsafe { libc::setns(args.pidfd, libc::CLONE_NEWNS) } < 0 {
        return fail(usize::MAX);
    }
    for (i, op) in args.ops.iter().enumerate() {
        // SAFETY: every call below gets NUL-terminated paths prepared by the caller,
        // fds it keeps open, plain flags, and a mount_attr on this stack.
        let rc: libc::c_long = unsafe {
            match op {
                Op::Mkdir { path } => {
                    let rc = libc::mkdir(path.as_ptr(), 0o755);
                    if rc < 0 && *libc::__errno_location() == libc::EEXIST {
                        0
                    } else {
                        rc as libc::c_long
                    }
                }
                Op::CreateFile { path } => {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                        0o644,
                    );
                    if fd >= 0 {
                        libc::close(fd);
                        0
                    } else {
                        fd as libc::c_long
                    }
                }
                Op::MoveMount { tree, path } => libc::syscall(
                    libc::SYS_move_mount,
                    *tree,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                ),
                Op::SetReadOnly { path } | Op::SetWritable { path } => {
                    let read_only = matches!(op, Op::SetReadOnly { .. });
                    let attr = MountAttr {
                        attr_set: if read_only { MOUNT_ATTR_RDONLY } else { 0 },
                        attr_clr: if read_only { 0 } else { MOUNT_ATTR_RDONLY },
                        propagation: 0,
                        userns_fd: 0,
                    };
                    libc::syscall(
                        libc::SYS_mount_setattr,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                        &attr as *const MountAttr,
                        std::mem::size_of::<MountAttr>(),
                    )
                }
            }
        };
        if rc < 0 {
            return fail(i);
        }
    }
    0
}

/// Run the helper and wait for it.
fn run_helper(id: &str, pidfd: RawFd, ops: &[Op]) -> Result<(), AttachError> {
    let mut failed: (usize, i32) = (0, 0);
    let args = HelperArgs {
        pidfd,
        ops,
        failed: &mut failed,
    };
    // SAFETY: an anonymous private mapping used only as the helper's stack; unmapped
    // after the helper has exited.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            HELPER_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(AttachError::Helper {
            id: id.into(),
            errno: Errno::last(),
        });
    }
    // SAFETY: the stack grows down from the end of the mapping. CLONE_VFORK suspends this
    // thread until the helper exits, so `args` (and what it points to) outlives it; the
    // helper shares our memory but not our fs_struct (no CLONE_FS), so its setns and
    // chdir do not affect this process.
    let pid = unsafe {
        libc::clone(
            helper,
            stack.cast::<u8>().add(HELPER_STACK).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const HelperArgs<'_> as *mut libc::c_void,
        )
    };
    let clone_errno = Errno::last();
    let mut status = 0;
    if pid > 0 {
        loop {
            // SAFETY: reaping our own child; status is a valid out-pointer.
            let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
            if rc >= 0 || Errno::last() != Errno::EINTR {
                break;
            }
        }
    }
    // SAFETY: the helper has exited; nothing uses the stack any more.
    unsafe { libc::munmap(stack, HELPER_STACK) };
    if pid < 0 {
        return Err(AttachError::Helper {
            id: id.into(),
            errno: clone_errno,
        });
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(());
    }
    let (index, errno) = failed;
    let errno = Errno::from_raw(errno);
    match ops.get(index) {
        _ if index == usize::MAX => Err(AttachError::Enter {
            id: id.into(),
            errno,
        }),
        Some(op) => Err(AttachError::Step {
            id: id.into(),
            op: op.name(),
            path: op.path(),
            errno,
        }),
        None => Err(AttachError::Helper {
            id: id.into(),
            errno: Errno::from_raw(libc::ECHILD),
        }),
    }
}

/// Apply `edits`, in order, to the running sandbox's mounts (see the module docs).
///
/// ```no_run
/// use dsbox_runtime::attach::{self, MountEdit};
/// use dsbox_runtime::{Sandbox, SandboxSpec, SpawnOptions};
/// let sandbox = Sandbox::spawn(&SandboxSpec::default(), SpawnOptions::default())?;
/// attach::apply(&sandbox, &[MountEdit::AttachReadOnly {
///     source: "/srv/tasks/42/train.csv".into(),
///     destination: "/tmp/train.csv".into(),
/// }])?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn apply(sandbox: &Sandbox, edits: &[MountEdit]) -> Result<(), AttachError> {
    if edits.is_empty() {
        return Ok(());
    }
    let mut trees: Vec<OwnedFd> = Vec::new();
    let mut ops: Vec<Op> = Vec::new();
    for edit in edits {
        match edit {
            MountEdit::AttachReadOnly {
                source,
                destination: dest,
            } => {
                let dest = destination(dest)?;
                let meta = std::fs::metadata(source).map_err(|e| AttachError::Source {
                    path: source.clone(),
                    errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                })?;
                let tree = detached_copy(source)?;
                // Parents first (the deepest existing one is found by EEXIST).
                let mut parent = PathBuf::from("/");
                let comps: Vec<_> = dest.components().skip(1).collect();
                for c in &comps[..comps.len().saturating_sub(1)] {
                    parent.push(c);
                    ops.push(Op::Mkdir {
                        path: cstring(&parent)?,
                    });
                }
                let path = cstring(&dest)?;
                ops.push(if meta.is_dir() {
                    Op::Mkdir { path: path.clone() }
                } else {
                    Op::CreateFile { path: path.clone() }
                });
                ops.push(Op::MoveMount {
                    tree: tree.as_raw_fd(),
                    path,
                });
                trees.push(tree);
            }
            MountEdit::MakeReadOnly { path } => {
                let path = destination(path)?;
                ops.push(Op::SetReadOnly {
                    path: cstring(&path)?,
                });
            }
            MountEdit::MakeWritable { path } => {
                let path = destination(path)?;
                ops.push(Op::SetWritable {
                    path: cstring(&path)?,
                });
            }
        }
    }
    run_helper(sandbox.id(), sandbox.pidfd().as_raw_fd(), &ops)
    // `trees` closes here: the moved mounts are attached and no longer need the fds.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_absolute_normalized_and_never_climb() {
        assert_eq!(
            destination(Path::new("/data/./a//b.csv")).unwrap(),
            PathBuf::from("/data/a/b.csv")
        );
        for bad in ["data/x", "/data/../etc", "/", "/.."] {
            assert!(
                matches!(
                    destination(Path::new(bad)),
                    Err(AttachError::BadDestination { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_missing_source_is_named_with_its_errno() {
        let err = detached_copy(Path::new("/nonexistent/dsbox-attach-source")).unwrap_err();
        match &err {
            AttachError::Source { path, errno } => {
                assert_eq!(path, Path::new("/nonexistent/dsbox-attach-source"));
                // ENOENT as root; EPERM for an unprivileged caller (open_tree needs
                // CAP_SYS_ADMIN to clone).
                assert!(matches!(*errno, Errno::ENOENT | Errno::EPERM), "{errno}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("/nonexistent/dsbox-attach-source"));
    }
}
