//! The mount plan: every mount, directory, file and symlink of a sandbox's filesystem,
//! computed in the parent (C strings, flags, file contents) and applied by init after its
//! `unshare` — then `pivot_root` into it and detach the old root.
//!
//! Layout (docs/architecture.md): a read-only root (a rootfs directory bound read-only,
//! or for `Root::Host` a tmpfs skeleton with read-only binds of the host's /usr and the
//! /bin, /lib*, /sbin links, an /etc subset and generated passwd/group/hosts), size-limited
//! scratch tmpfs, the spec's binds, a fresh /proc and a minimal /dev.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::process::message::{Step, StepError};
use crate::spec::{Mount, Root, SANDBOX_GID, SANDBOX_UID, SandboxSpec};
use crate::syscall::Syscall;

/// Errors building a mount plan (in the parent, before anything runs).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("mount point {} does not exist in rootfs {}: create it in the rootfs (mkdir -p {})", inside.display(), root.display(), root.join(inside.strip_prefix("/").unwrap_or(inside)).display())]
    MissingMountPoint { root: PathBuf, inside: PathBuf },
    #[error("path contains a NUL byte: {}", path.display())]
    Nul { path: PathBuf },
}

/// One operation of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountOp {
    Mount {
        step: Step,
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    WriteFile {
        path: CString,
        data: Vec<u8>,
        mode: libc::mode_t,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    Mknod {
        path: CString,
        mode: libc::mode_t,
        dev: libc::dev_t,
    },
}

/// The whole filesystem setup of one sandbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountPlan {
    new_root: CString,
    ops: Vec<MountOp>,
}

const DEV_NODES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
];

fn cstr(path: &Path) -> Result<CString, PlanError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| PlanError::Nul { path: path.into() })
}

fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Mount flags that a read-only remount must keep because the source mount has them
/// (inside a user namespace the kernel refuses to clear them).
fn locked_flags(path: &Path) -> libc::c_ulong {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs is plain old data; all-zero is valid and the call only writes it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    flags
}

/// Small files of the host's /etc copied into the skeleton; read once per process. (The
/// larger ld.so.cache is bind-mounted instead: a bind is cheaper than writing 50+ KiB.)
fn host_etc_files() -> &'static [(&'static str, Vec<u8>)] {
    static FILES: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        ["nsswitch.conf", "host.conf"]
            .into_iter()
            .filter_map(|name| {
                std::fs::read(Path::new("/etc").join(name))
                    .ok()
                    .map(|data| (name, data))
            })
            .collect()
    })
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/workdir:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n";

struct Builder {
    /// Where the new root is assembled (host path, inside the sandbox's mount ns).
    root: PathBuf,
    ops: Vec<MountOp>,
    host_skeleton: bool,
    /// For `Root::Dir`: the rootfs directory, where mount points must already exist.
    rootfs_dir: Option<PathBuf>,
    /// Empty directories of a `Root::Dir` rootfs covered by a tmpfs that holds mount
    /// points the rootfs lacks (see `overlay_for`); made read-only by `finish_overlays`.
    overlays: Vec<PathBuf>,
}

/// The directory under which a mount point missing from rootfs `dir` can be created: the
/// deepest ancestor of `inside_path` that the rootfs has, if it is an empty directory (not
/// `/`, not a symlink). A tmpfs over it hides nothing.
fn empty_ancestor(dir: &Path, inside_path: &Path) -> Option<PathBuf> {
    let base = inside_path
        .ancestors()
        .skip(1)
        .find(|a| std::fs::symlink_metadata(inside(dir, a)).is_ok())?;
    if base == Path::new("/") {
        return None;
    }
    let host = inside(dir, base);
    let meta = std::fs::symlink_metadata(&host).ok()?;
    let empty = std::fs::read_dir(&host).ok()?.next().is_none();
    (meta.is_dir() && empty).then(|| base.to_owned())
}

impl Builder {
    fn mkdir_p(&mut self, inside_path: &Path) -> Result<(), PlanError> {
        // Only tmpfs we own (the host skeleton, overlays) get directories created; a
        // rootfs directory must already have its mount points (checked by `require_dir`).
        self.mkdirs_below(inside_path, Path::new("/"))
    }

    /// Mkdir ops for `inside_path` and its ancestors strictly below `base`, outermost
    /// first.
    fn mkdirs_below(&mut self, inside_path: &Path, base: &Path) -> Result<(), PlanError> {
        let mut dirs: Vec<&Path> = inside_path
            .ancestors()
            .filter(|a| a.starts_with(base) && *a != base)
            .collect();
        dirs.reverse();
        for d in dirs {
            self.ops.push(MountOp::Mkdir {
                path: cstr(&inside(&self.root, d))?,
                mode: 0o755,
            });
        }
        Ok(())
    }

    /// Create mount point `inside_path` in a tmpfs we own whose top is `base`: a
    /// directory, or an empty file in its parent directories.
    fn create_mount_point(
        &mut self,
        inside_path: &Path,
        is_dir: bool,
        base: &Path,
    ) -> Result<(), PlanError> {
        if is_dir {
            return self.mkdirs_below(inside_path, base);
        }
        if let Some(parent) = inside_path.parent() {
            self.mkdirs_below(parent, base)?;
        }
        self.ops.push(MountOp::WriteFile {
            path: cstr(&inside(&self.root, inside_path))?,
            data: Vec::new(),
            mode: 0o644,
        });
        Ok(())
    }

    fn mount_point(&mut self, inside_path: &Path, is_dir: bool) -> Result<CString, PlanError> {
        let target = inside(&self.root, inside_path);
        if self.host_skeleton {
            self.create_mount_point(inside_path, is_dir, Path::new("/"))?;
        } else if let Some(dir) = self.rootfs_dir.clone()
            && std::fs::symlink_metadata(inside(&dir, inside_path)).is_err()
        {
            // A mount point the rootfs lacks, e.g. a task's /data/x.csv in a built
            // rootfs's empty /data: a tmpfs over the empty directory takes it.
            let Some(base) = self
                .overlays
                .iter()
                .find(|o| inside_path.starts_with(o))
                .cloned()
                .or_else(|| empty_ancestor(&dir, inside_path))
            else {
                return Err(PlanError::MissingMountPoint {
                    root: dir,
                    inside: inside_path.into(),
                });
            };
            if !self.overlays.contains(&base) {
                let base_c = cstr(&inside(&self.root, &base))?;
                self.mount(
                    Step::MountTmpfs,
                    Some("dsbox-mountpoints"),
                    base_c,
                    Some("tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    Some("mode=755,size=1m".into()),
                );
                self.overlays.push(base.clone());
            }
            self.create_mount_point(inside_path, is_dir, &base)?;
        }
        cstr(&target)
    }

    /// Make the tmpfs overlays read-only once every mount point is in them.
    fn finish_overlays(&mut self) -> Result<(), PlanError> {
        for base in std::mem::take(&mut self.overlays) {
            let target = cstr(&inside(&self.root, &base))?;
            self.mount(
                Step::RemountReadonly,
                None,
                target,
                None,
                libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                None,
            );
        }
        Ok(())
    }

    fn mount(
        &mut self,
        step: Step,
        source: Option<&str>,
        target: CString,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<String>,
    ) {
        self.ops.push(MountOp::Mount {
            step,
            source: source.and_then(|s| CString::new(s).ok()),
            target,
            fstype: fstype.and_then(|s| CString::new(s).ok()),
            flags,
            data: data.and_then(|s| CString::new(s).ok()),
        });
    }

    fn bind(&mut self, source: &Path, dest: &Path, readonly: bool) -> Result<(), PlanError> {
        let is_dir = source.is_dir();
        let target = self.mount_point(dest, is_dir)?;
        self.ops.push(MountOp::Mount {
            step: Step::BindMount,
            source: Some(cstr(source)?),
            target: target.clone(),
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        });
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
        flags |= locked_flags(source);
        if readonly {
            flags |= libc::MS_RDONLY;
        }
        self.mount(Step::RemountReadonly, None, target, None, flags, None);
        Ok(())
    }

    fn tmpfs(
        &mut self,
        dest: &Path,
        size: u64,
        mode: u32,
        flags: libc::c_ulong,
    ) -> Result<(), PlanError> {
        let target = self.mount_point(dest, true)?;
        self.mount(
            Step::MountTmpfs,
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            flags,
            Some(format!(
                "size={size},mode={mode:o},uid={SANDBOX_UID},gid={SANDBOX_GID}"
            )),
        );
        Ok(())
    }
}

impl MountPlan {
    /// Build the plan for `spec`, assembling the new root at `staging` (an empty host
    /// directory; every sandbox mounts it in its own mount namespace). `userns`: device
    /// nodes are bind-mounted from the host because mknod is not allowed there.
    pub fn build(spec: &SandboxSpec, staging: &Path, userns: bool) -> Result<MountPlan, PlanError> {
        let mut b = Builder {
            root: staging.to_owned(),
            ops: Vec::new(),
            host_skeleton: matches!(spec.root, Root::Host),
            rootfs_dir: match &spec.root {
                Root::Dir(dir) => Some(dir.clone()),
                Root::Host => None,
            },
            overlays: Vec::new(),
        };
        let root_c = cstr(staging)?;
        let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
        let root_remount_flags = match &spec.root {
            Root::Host => {
                b.mount(
                    Step::MountRoot,
                    Some("dsbox-root"),
                    root_c.clone(),
                    Some("tmpfs"),
                    nosuid_nodev,
                    Some("mode=755,size=16m".into()),
                );
                for dir in ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
                    let host = Path::new("/").join(dir);
                    match std::fs::read_link(&host) {
                        Ok(target) => b.ops.push(MountOp::Symlink {
                            target: cstr(&target)?,
                            link: cstr(&inside(staging, &host))?,
                        }),
                        Err(_) if host.is_dir() => b.bind(&host, &host, true)?,
                        Err(_) => {}
                    }
                }
                b.mkdir_p(Path::new("/etc"))?;
                let etc = staging.join("etc");
                for (name, data) in [
                    ("passwd", PASSWD.as_bytes()),
                    ("group", GROUP.as_bytes()),
                    (
                        "hosts",
                        format!(
                            "127.0.0.1\tlocalhost {0}\n::1\tlocalhost {0}\n",
                            spec.hostname
                        )
                        .as_bytes(),
                    ),
                    ("hostname", format!("{}\n", spec.hostname).as_bytes()),
                ] {
                    b.ops.push(MountOp::WriteFile {
                        path: cstr(&etc.join(name))?,
                        data: data.to_vec(),
                        mode: 0o644,
                    });
                }
                for (name, data) in host_etc_files() {
                    b.ops.push(MountOp::WriteFile {
                        path: cstr(&etc.join(name))?,
                        data: data.clone(),
                        mode: 0o644,
                    });
                }
                let ld_cache = Path::new("/etc/ld.so.cache");
                if ld_cache.is_file() {
                    b.bind(ld_cache, ld_cache, true)?;
                }
                if let Ok(target) = std::fs::read_link("/etc/localtime") {
                    b.ops.push(MountOp::Symlink {
                        target: cstr(&target)?,
                        link: cstr(&etc.join("localtime"))?,
                    });
                }
                for dir in ["ssl", "alternatives", "fonts", "matplotlibrc"] {
                    let host = Path::new("/etc").join(dir);
                    if host.is_dir() {
                        b.bind(&host, &host, true)?;
                    }
                }
                libc::MS_REMOUNT | libc::MS_RDONLY | nosuid_nodev
            }
            Root::Dir(dir) => {
                b.mount(
                    Step::MountRoot,
                    dir.to_str(),
                    root_c.clone(),
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                );
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | nosuid_nodev
                    | locked_flags(dir)
            }
        };
        for dir in &spec.scratch.dirs {
            let mode = if dir == Path::new("/tmp") {
                0o1777
            } else {
                0o755
            };
            b.tmpfs(dir, spec.scratch.size, mode, nosuid_nodev)?;
        }
        for mount in &spec.mounts {
            match mount {
                Mount::Bind {
                    source,
                    destination,
                    readonly,
                } => b.bind(source, destination, *readonly)?,
                Mount::Tmpfs { destination, size } => b.tmpfs(
                    destination,
                    size.unwrap_or(spec.scratch.size),
                    0o755,
                    nosuid_nodev,
                )?,
            }
        }
        b.finish_overlays()?;
        // A fresh /proc of the sandbox's pid namespace.
        let proc_target = b.mount_point(Path::new("/proc"), true)?;
        b.mount(
            Step::MountProc,
            Some("proc"),
            proc_target,
            Some("proc"),
            nosuid_nodev | libc::MS_NOEXEC,
            None,
        );
        // A minimal /dev.
        let dev = b.mount_point(Path::new("/dev"), true)?;
        b.mount(
            Step::MountTmpfs,
            Some("dsbox-dev"),
            dev.clone(),
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("mode=755,size=64k".into()),
        );
        let dev_dir = inside(staging, Path::new("/dev"));
        for (name, major, minor) in DEV_NODES {
            let path = dev_dir.join(name);
            if userns {
                b.ops.push(MountOp::WriteFile {
                    path: cstr(&path)?,
                    data: Vec::new(),
                    mode: 0o666,
                });
                b.mount(
                    Step::BindMount,
                    Some(&format!("/dev/{name}")),
                    cstr(&path)?,
                    None,
                    libc::MS_BIND,
                    None,
                );
            } else {
                b.ops.push(MountOp::Mknod {
                    path: cstr(&path)?,
                    mode: libc::S_IFCHR | 0o666,
                    dev: libc::makedev(*major, *minor),
                });
            }
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ] {
            b.ops.push(MountOp::Symlink {
                target: CString::new(target).unwrap_or_default(),
                link: cstr(&dev_dir.join(link))?,
            });
        }
        b.ops.push(MountOp::Mkdir {
            path: cstr(&dev_dir.join("shm"))?,
            mode: 0o755,
        });
        b.mount(
            Step::MountTmpfs,
            Some("tmpfs"),
            cstr(&dev_dir.join("shm"))?,
            Some("tmpfs"),
            nosuid_nodev | libc::MS_NOEXEC,
            Some(format!("size={},mode=1777", spec.scratch.size)),
        );
        b.mount(
            Step::RemountReadonly,
            None,
            dev,
            None,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
            None,
        );
        b.mount(
            Step::RemountReadonly,
            None,
            root_c.clone(),
            None,
            root_remount_flags,
            None,
        );
        Ok(MountPlan {
            new_root: root_c,
            ops: b.ops,
        })
    }

    /// The operations, in order (for tests and docs).
    pub fn ops(&self) -> &[MountOp] {
        &self.ops
    }

    /// Run the plan in the sandbox's fresh mount namespace, then pivot into the new root.
    /// Called by init (or the middle process without a pid namespace).
    pub fn apply(&self, sys: &dyn Syscall) -> Result<(), StepError> {
        self.apply_profiled(sys, &mut Vec::new(), false)
    }

    /// [`apply`](Self::apply), recording a timestamp after each operation when `every_op`
    /// (profiling), else after the private remount and the root mount only.
    pub fn apply_profiled(
        &self,
        sys: &dyn Syscall,
        steps: &mut Vec<crate::process::message::StepTime>,
        every_op: bool,
    ) -> Result<(), StepError> {
        use crate::process::message::{StepTime, monotonic_ns};
        let mut mark = |step: Step, force: bool| {
            if every_op || force {
                steps.push(StepTime {
                    step,
                    at_ns: monotonic_ns(),
                });
            }
        };
        let err = |step, e, d: Option<&CStr>| StepError::new(step, e, d);
        // Stop mount events from propagating back to the host (or in from it).
        sys.mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
            .map_err(|e| err(Step::MountPrivate, e, None))?;
        mark(Step::MountPrivate, true);
        for (i, op) in self.ops.iter().enumerate() {
            match op {
                MountOp::Mount {
                    step,
                    source,
                    target,
                    fstype,
                    flags,
                    data,
                } => sys
                    .mount(
                        source.as_deref(),
                        target,
                        fstype.as_deref(),
                        *flags,
                        data.as_deref(),
                    )
                    .map_err(|e| err(*step, e, Some(target)))?,
                MountOp::Mkdir { path, mode } => sys
                    .mkdir(path, *mode)
                    .map_err(|e| err(Step::Mkdir, e, Some(path)))?,
                MountOp::WriteFile { path, data, mode } => sys
                    .write_file(path, data, *mode)
                    .map_err(|e| err(Step::WriteFile, e, Some(path)))?,
                MountOp::Symlink { target, link } => sys
                    .symlink(target, link)
                    .map_err(|e| err(Step::Symlink, e, Some(link)))?,
                MountOp::Mknod { path, mode, dev } => sys
                    .mknod(path, *mode, *dev)
                    .map_err(|e| err(Step::Mknod, e, Some(path)))?,
            }
            let step = match op {
                MountOp::Mount { step, .. } => *step,
                MountOp::Mkdir { .. } => Step::Mkdir,
                MountOp::WriteFile { .. } => Step::WriteFile,
                MountOp::Symlink { .. } => Step::Symlink,
                MountOp::Mknod { .. } => Step::Mknod,
            };
            mark(step, i == 0);
        }
        // pivot_root(".", ".") stacks the old root on top of the new one; detaching it
        // leaves only the new root, with no directory needed for the old one.
        sys.chdir(&self.new_root)
            .map_err(|e| err(Step::PivotRoot, e, Some(&self.new_root)))?;
        mark(Step::Chdir, false);
        sys.pivot_root(c".", c".")
            .map_err(|e| err(Step::PivotRoot, e, Some(&self.new_root)))?;
        mark(Step::PivotRoot, false);
        sys.umount2(c".", libc::MNT_DETACH)
            .map_err(|e| err(Step::DetachOldRoot, e, None))?;
        mark(Step::DetachOldRoot, false);
        sys.chdir(c"/").map_err(|e| err(Step::Chdir, e, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, Errno, RecordingSyscall};

    fn targets(fake: &RecordingSyscall) -> Vec<(String, Option<String>, libc::c_ulong)> {
        fake.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Mount {
                    target,
                    fstype,
                    flags,
                    ..
                } => Some((target, fstype, flags)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn host_plan_is_private_then_readonly_root_then_pivot() {
        let spec = SandboxSpec::builder()
            .with_command(["/bin/true"])
            .with_mount(Mount::Bind {
                source: std::env::temp_dir(),
                destination: "/data/in".into(),
                readonly: true,
            })
            .build()
            .unwrap();
        let plan = MountPlan::build(&spec, Path::new("/stage"), false).unwrap();
        let fake = RecordingSyscall::new();
        plan.apply(&fake).unwrap();
        let mounts = targets(&fake);
        assert_eq!(mounts[0].0, "/");
        assert_eq!(mounts[0].2, libc::MS_REC | libc::MS_PRIVATE);
        assert_eq!(mounts[1].0, "/stage");
        assert_eq!(mounts[1].1.as_deref(), Some("tmpfs"));
        // the skeleton root is remounted read-only as the very last mount
        let last = mounts.last().unwrap();
        assert_eq!(last.0, "/stage");
        assert_ne!(last.2 & libc::MS_RDONLY, 0);
        // the data bind is remounted read-only
        let data: Vec<_> = mounts.iter().filter(|m| m.0 == "/stage/data/in").collect();
        assert_eq!(data.len(), 2);
        assert_ne!(data[1].2 & libc::MS_RDONLY, 0);
        // scratch dirs are tmpfs with a size
        let tmp = fake
            .calls()
            .into_iter()
            .find_map(|c| match c {
                Call::Mount { target, data, .. } if target == "/stage/tmp" => data,
                _ => None,
            })
            .unwrap();
        assert!(
            tmp.contains("size=268435456") && tmp.contains("mode=1777"),
            "{tmp}"
        );
        // proc, device nodes, pivot and detach
        assert!(
            mounts
                .iter()
                .any(|m| m.0 == "/stage/proc" && m.1.as_deref() == Some("proc"))
        );
        assert!(fake.calls().contains(&Call::Mknod(
            "/stage/dev/null".into(),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3)
        )));
        let names = fake.names();
        let n = names.len();
        assert_eq!(
            &names[n - 4..],
            &["chdir", "pivot_root", "umount2", "chdir"]
        );
    }

    #[test]
    fn a_failing_mount_names_the_step_and_target() {
        let spec = SandboxSpec::builder()
            .with_command(["/bin/true"])
            .build()
            .unwrap();
        let plan = MountPlan::build(&spec, Path::new("/stage"), false).unwrap();
        let fake = RecordingSyscall::failing("pivot_root", 0, Errno::EINVAL);
        let err = plan.apply(&fake).unwrap_err();
        assert_eq!(err.step, Step::PivotRoot);
        assert_eq!(err.errno, Errno::EINVAL as i32);
        let fake = RecordingSyscall::failing("mount", 1, Errno::ENOENT);
        let err = plan.apply(&fake).unwrap_err();
        assert_eq!(err.step, Step::MountRoot);
        assert_eq!(err.detail.as_deref(), Some("/stage"));
    }

    #[test]
    fn userns_plans_bind_device_nodes() {
        let spec = SandboxSpec::builder()
            .with_command(["/bin/true"])
            .build()
            .unwrap();
        let plan = MountPlan::build(&spec, Path::new("/stage"), true).unwrap();
        assert!(
            !plan
                .ops()
                .iter()
                .any(|op| matches!(op, MountOp::Mknod { .. }))
        );
        assert!(plan.ops().iter().any(|op| matches!(op,
            MountOp::Mount { source: Some(s), .. } if s.as_bytes() == b"/dev/urandom")));
    }

    #[test]
    fn rootfs_dirs_need_their_mount_points() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SandboxSpec::builder()
            .with_command(["/bin/true"])
            .with_root(Root::Dir(dir.path().into()))
            .build()
            .unwrap();
        let err = MountPlan::build(&spec, Path::new("/stage"), false).unwrap_err();
        assert!(
            err.to_string().contains("does not exist in rootfs"),
            "{err}"
        );
        for d in ["tmp", "workdir", "submission", "proc", "dev"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        MountPlan::build(&spec, Path::new("/stage"), false).unwrap();
    }

    #[test]
    fn binds_a_rootfs_dir_lacks_go_into_a_read_only_tmpfs_over_its_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["tmp", "workdir", "submission", "proc", "dev", "data", "opt"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("opt/keep"), b"x").unwrap();
        let host = tempfile::NamedTempFile::new().unwrap();
        let bind = |dest: &str| Mount::Bind {
            source: host.path().into(),
            destination: dest.into(),
            readonly: true,
        };
        let spec = SandboxSpec::builder()
            .with_command(["/bin/true"])
            .with_root(Root::Dir(dir.path().into()))
            .with_mount(bind("/data/qrdata/x.csv"))
            .with_mount(bind("/data/y.csv"))
            .build()
            .unwrap();
        let plan = MountPlan::build(&spec, Path::new("/stage"), false).unwrap();
        let ops: Vec<String> = plan.ops().iter().map(|op| format!("{op:?}")).collect();
        let at = |needle: &str| {
            ops.iter()
                .position(|o| o.contains(needle))
                .unwrap_or_else(|| panic!("no op with {needle}: {ops:#?}"))
        };
        let overlay = at("dsbox-mountpoints");
        assert_eq!(
            ops.iter()
                .filter(|o| o.contains("dsbox-mountpoints"))
                .count(),
            1,
            "one tmpfs for both binds"
        );
        let mkdir = at("Mkdir { path: \"/stage/data/qrdata\"");
        let file = at("WriteFile { path: \"/stage/data/qrdata/x.csv\"");
        let readonly = ops
            .iter()
            .rposition(|o| o.contains("RemountReadonly") && o.contains("\"/stage/data\""))
            .expect("the overlay is remounted read-only");
        assert!(
            overlay < mkdir && mkdir < file && file < readonly,
            "{ops:#?}"
        );
        assert!(ops[readonly].contains("flags: 39,"), "{}", ops[readonly]);

        // Below a directory that is not empty a tmpfs would hide files: refused.
        let spec = SandboxSpec::builder()
            .with_command(["/bin/true"])
            .with_root(Root::Dir(dir.path().into()))
            .with_mount(bind("/opt/x.csv"))
            .build()
            .unwrap();
        let err = MountPlan::build(&spec, Path::new("/stage"), false).unwrap_err();
        assert!(
            err.to_string().contains("does not exist in rootfs"),
            "{err}"
        );
    }
}
