//! The syscall seam: one trait over every syscall the start path makes after `fork`, a
//! real implementation ([`LinuxSyscall`]) and a recording fake ([`RecordingSyscall`]) that
//! unit tests use to check the order of the steps and to inject failures.
//!
//! Methods return [`Errno`] only: the caller (a forked child) turns a failure into a
//! `{step, errno}` message for the parent. Nothing here allocates on the success path
//! except where noted, logs or panics.

use std::ffi::CStr;
use std::os::fd::RawFd;

pub use nix::errno::Errno;

/// Result of one syscall.
pub type SysResult<T = ()> = std::result::Result<T, Errno>;

/// Landlock ruleset attributes (`struct landlock_ruleset_attr`, ABI 6 layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LandlockRulesetAttr {
    pub handled_access_fs: u64,
    pub handled_access_net: u64,
    pub scoped: u64,
}

/// Every syscall of the start path. Implemented for the real kernel and for the fake.
pub trait Syscall {
    fn unshare(&self, flags: libc::c_int) -> SysResult;
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> SysResult;
    fn umount2(&self, target: &CStr, flags: libc::c_int) -> SysResult;
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> SysResult;
    fn chdir(&self, path: &CStr) -> SysResult;
    fn mkdir(&self, path: &CStr, mode: libc::mode_t) -> SysResult;
    /// Create (or truncate) a file and write `data` to it.
    fn write_file(&self, path: &CStr, data: &[u8], mode: libc::mode_t) -> SysResult;
    fn symlink(&self, target: &CStr, link: &CStr) -> SysResult;
    fn mknod(&self, path: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> SysResult;
    fn sethostname(&self, name: &[u8]) -> SysResult;
    /// Bring the loopback interface up (ioctl SIOCSIFFLAGS on "lo").
    fn loopback_up(&self) -> SysResult;
    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> SysResult;
    /// Drop capabilities 0..=last_cap from the bounding set (PR_CAPBSET_DROP).
    fn drop_bounding_set(&self, last_cap: u32) -> SysResult;
    /// PR_CAP_AMBIENT_CLEAR_ALL.
    fn clear_ambient(&self) -> SysResult;
    /// capset: keep permitted/effective, clear inheritable.
    fn clear_inheritable(&self) -> SysResult;
    /// capset: clear permitted, effective and inheritable.
    fn clear_all_caps(&self) -> SysResult;
    fn set_no_new_privs(&self) -> SysResult;
    fn setgroups(&self, groups: &[libc::gid_t]) -> SysResult;
    fn setresgid(&self, gid: libc::gid_t) -> SysResult;
    fn setresuid(&self, uid: libc::uid_t) -> SysResult;
    fn landlock_create_ruleset(&self, attr: &LandlockRulesetAttr) -> SysResult<RawFd>;
    /// Open `path` (O_PATH) and add a path-beneath rule with `access`.
    fn landlock_add_path_rule(&self, ruleset: RawFd, path: &CStr, access: u64) -> SysResult;
    fn landlock_restrict_self(&self, ruleset: RawFd) -> SysResult;
    /// Install a seccomp BPF program (the caller has set no_new_privs or holds SYS_ADMIN).
    fn seccomp_set_filter(&self, program: &[libc::sock_filter]) -> SysResult;
    fn close_range(&self, first: u32, last: u32) -> SysResult;
    fn dup2(&self, from: RawFd, to: RawFd) -> SysResult;
    /// Write "0" to an open `cgroup.procs` file: moves the caller into that cgroup.
    fn join_cgroup(&self, procs_fd: RawFd) -> SysResult;
    fn close(&self, fd: RawFd) -> SysResult;
    fn setns(&self, fd: RawFd, nstype: libc::c_int) -> SysResult;
}

fn check(rc: libc::c_long) -> SysResult {
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// The real kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinuxSyscall;

// Capability header/data for capset(2), version 3 (two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

impl LinuxSyscall {
    fn capget(&self) -> SysResult<[CapData; 2]> {
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        // SAFETY: header and data are valid, correctly sized capget(2) v3 structures.
        check(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) })?;
        Ok(data)
    }

    fn capset(&self, data: &[CapData; 2]) -> SysResult {
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        // SAFETY: header and data are valid capset(2) v3 structures; the kernel only reads.
        check(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) })
    }
}

impl Syscall for LinuxSyscall {
    fn unshare(&self, flags: libc::c_int) -> SysResult {
        // SAFETY: unshare takes only flags.
        check(unsafe { libc::unshare(flags) } as libc::c_long)
    }

    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> SysResult {
        let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
        // SAFETY: every pointer is either null or a valid NUL-terminated string that
        // outlives the call.
        check(
            unsafe { libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data).cast()) }
                as libc::c_long,
        )
    }

    fn umount2(&self, target: &CStr, flags: libc::c_int) -> SysResult {
        // SAFETY: target is a valid C string.
        check(unsafe { libc::umount2(target.as_ptr(), flags) } as libc::c_long)
    }

    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> SysResult {
        // SAFETY: both arguments are valid C strings; glibc has no wrapper.
        check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
    }

    fn chdir(&self, path: &CStr) -> SysResult {
        // SAFETY: path is a valid C string.
        check(unsafe { libc::chdir(path.as_ptr()) } as libc::c_long)
    }

    fn mkdir(&self, path: &CStr, mode: libc::mode_t) -> SysResult {
        // SAFETY: path is a valid C string.
        match check(unsafe { libc::mkdir(path.as_ptr(), mode) } as libc::c_long) {
            Err(Errno::EEXIST) => Ok(()),
            other => other,
        }
    }

    fn write_file(&self, path: &CStr, data: &[u8], mode: libc::mode_t) -> SysResult {
        // SAFETY: path is a valid C string; the fd is closed below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                mode,
            )
        };
        if fd < 0 {
            return Err(Errno::last());
        }
        let mut rest = data;
        while !rest.is_empty() {
            // SAFETY: rest points to rest.len() readable bytes; fd is open.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                let err = Errno::last();
                // SAFETY: fd is ours.
                unsafe { libc::close(fd) };
                return Err(err);
            }
            rest = &rest[n as usize..];
        }
        // SAFETY: fd is ours.
        check(unsafe { libc::close(fd) } as libc::c_long)
    }

    fn symlink(&self, target: &CStr, link: &CStr) -> SysResult {
        // SAFETY: both are valid C strings.
        check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) } as libc::c_long)
    }

    fn mknod(&self, path: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> SysResult {
        // SAFETY: path is a valid C string.
        check(unsafe { libc::mknod(path.as_ptr(), mode, dev) } as libc::c_long)
    }

    fn sethostname(&self, name: &[u8]) -> SysResult {
        // SAFETY: name points to name.len() bytes.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } as libc::c_long)
    }

    fn loopback_up(&self) -> SysResult {
        // SAFETY: plain socket(2) call; the fd is closed below.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(Errno::last());
        }
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: req is a valid ifreq for SIOCGIFFLAGS / SIOCSIFFLAGS on an open socket.
        let result = unsafe {
            if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) < 0 {
                Err(Errno::last())
            } else {
                req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                if libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) < 0 {
                    Err(Errno::last())
                } else {
                    Ok(())
                }
            }
        };
        // SAFETY: sock is ours.
        unsafe { libc::close(sock) };
        result
    }

    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> SysResult {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: limit is a valid rlimit; resource is a RLIMIT_* number.
        check(unsafe { libc::setrlimit(resource as _, &limit) } as libc::c_long)
    }

    fn drop_bounding_set(&self, last_cap: u32) -> SysResult {
        for cap in 0..=last_cap {
            // SAFETY: PR_CAPBSET_DROP takes a capability number.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            // EINVAL: the kernel does not know this capability (older than last_cap says).
            if rc < 0 && Errno::last() != Errno::EINVAL {
                return Err(Errno::last());
            }
        }
        Ok(())
    }

    fn clear_ambient(&self) -> SysResult {
        // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        // EINVAL: the kernel has no ambient capabilities (< 4.3), so there is nothing to clear.
        if rc < 0 && Errno::last() != Errno::EINVAL {
            return Err(Errno::last());
        }
        Ok(())
    }

    fn clear_inheritable(&self) -> SysResult {
        let mut data = self.capget()?;
        for d in &mut data {
            d.inheritable = 0;
        }
        self.capset(&data)
    }

    fn clear_all_caps(&self) -> SysResult {
        self.capset(&[CapData::default(); 2])
    }

    fn set_no_new_privs(&self) -> SysResult {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long)
    }

    fn setgroups(&self, groups: &[libc::gid_t]) -> SysResult {
        // SAFETY: groups points to groups.len() gids. The raw syscall is used because
        // glibc's wrapper broadcasts to all threads with signals; we are single-threaded.
        check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })
    }

    fn setresgid(&self, gid: libc::gid_t) -> SysResult {
        // SAFETY: integers only; raw syscall for the same reason as setgroups.
        check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })
    }

    fn setresuid(&self, uid: libc::uid_t) -> SysResult {
        // SAFETY: integers only; raw syscall for the same reason as setgroups.
        check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })
    }

    fn landlock_create_ruleset(&self, attr: &LandlockRulesetAttr) -> SysResult<RawFd> {
        // The kernel rejects a size that covers fields it does not know unless they are 0,
        // so pass the shortest layout that holds every non-zero field.
        let size = if attr.scoped != 0 {
            24
        } else if attr.handled_access_net != 0 {
            16
        } else {
            8
        };
        // SAFETY: attr is a valid landlock_ruleset_attr of at least `size` bytes.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                attr as *const LandlockRulesetAttr,
                size as libc::size_t,
                0u32,
            )
        };
        if fd < 0 {
            return Err(Errno::last());
        }
        Ok(fd as RawFd)
    }

    fn landlock_add_path_rule(&self, ruleset: RawFd, path: &CStr, access: u64) -> SysResult {
        #[repr(C, packed)]
        struct PathBeneath {
            allowed_access: u64,
            parent_fd: i32,
        }
        // SAFETY: path is a valid C string; the fd is closed below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(Errno::last());
        }
        let attr = PathBeneath {
            allowed_access: access,
            parent_fd: fd,
        };
        const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;
        // SAFETY: attr is a valid landlock_path_beneath_attr; ruleset is a ruleset fd.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset,
                LANDLOCK_RULE_PATH_BENEATH,
                &attr as *const PathBeneath,
                0u32,
            )
        };
        let result = check(rc);
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        result
    }

    fn landlock_restrict_self(&self, ruleset: RawFd) -> SysResult {
        // SAFETY: ruleset is a landlock ruleset fd.
        check(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) })
    }

    fn seccomp_set_filter(&self, program: &[libc::sock_filter]) -> SysResult {
        let prog = libc::sock_fprog {
            len: program.len() as libc::c_ushort,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prog describes `program`, which outlives the call; the kernel copies it.
        check(unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        })
    }

    fn close_range(&self, first: u32, last: u32) -> SysResult {
        // SAFETY: integers only.
        check(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) })
    }

    fn dup2(&self, from: RawFd, to: RawFd) -> SysResult {
        // SAFETY: integers only; dup2 clears FD_CLOEXEC on `to`, which is what we want.
        check(unsafe { libc::dup2(from, to) } as libc::c_long)
    }

    fn join_cgroup(&self, procs_fd: RawFd) -> SysResult {
        // SAFETY: writes one byte from a static buffer to an open fd.
        let n = unsafe { libc::write(procs_fd, b"0".as_ptr().cast(), 1) };
        if n < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    fn close(&self, fd: RawFd) -> SysResult {
        // SAFETY: closing an fd number is always memory-safe.
        check(unsafe { libc::close(fd) } as libc::c_long)
    }

    fn setns(&self, fd: RawFd, nstype: libc::c_int) -> SysResult {
        // SAFETY: setns takes an fd and flags.
        check(unsafe { libc::setns(fd, nstype) } as libc::c_long)
    }
}

/// One recorded call, in a form that is easy to assert on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Unshare(libc::c_int),
    Mount {
        source: Option<String>,
        target: String,
        fstype: Option<String>,
        flags: libc::c_ulong,
        data: Option<String>,
    },
    Umount2(String, libc::c_int),
    PivotRoot(String, String),
    Chdir(String),
    Mkdir(String, libc::mode_t),
    WriteFile(String, Vec<u8>),
    Symlink(String, String),
    Mknod(String, libc::mode_t, libc::dev_t),
    Sethostname(String),
    LoopbackUp,
    Setrlimit(u32, u64, u64),
    DropBoundingSet(u32),
    ClearAmbient,
    ClearInheritable,
    ClearAllCaps,
    SetNoNewPrivs,
    Setgroups(Vec<libc::gid_t>),
    Setresgid(libc::gid_t),
    Setresuid(libc::uid_t),
    LandlockCreateRuleset(LandlockRulesetAttr),
    LandlockAddPathRule(String, u64),
    LandlockRestrictSelf,
    SeccompSetFilter(usize),
    CloseRange(u32, u32),
    Dup2(RawFd, RawFd),
    JoinCgroup(RawFd),
    Close(RawFd),
    Setns(RawFd, libc::c_int),
}

impl Call {
    /// The syscall's name, used to pick which call fails.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Unshare(_) => "unshare",
            Call::Mount { .. } => "mount",
            Call::Umount2(..) => "umount2",
            Call::PivotRoot(..) => "pivot_root",
            Call::Chdir(_) => "chdir",
            Call::Mkdir(..) => "mkdir",
            Call::WriteFile(..) => "write_file",
            Call::Symlink(..) => "symlink",
            Call::Mknod(..) => "mknod",
            Call::Sethostname(_) => "sethostname",
            Call::LoopbackUp => "loopback_up",
            Call::Setrlimit(..) => "setrlimit",
            Call::DropBoundingSet(_) => "drop_bounding_set",
            Call::ClearAmbient => "clear_ambient",
            Call::ClearInheritable => "clear_inheritable",
            Call::ClearAllCaps => "clear_all_caps",
            Call::SetNoNewPrivs => "set_no_new_privs",
            Call::Setgroups(_) => "setgroups",
            Call::Setresgid(_) => "setresgid",
            Call::Setresuid(_) => "setresuid",
            Call::LandlockCreateRuleset(_) => "landlock_create_ruleset",
            Call::LandlockAddPathRule(..) => "landlock_add_path_rule",
            Call::LandlockRestrictSelf => "landlock_restrict_self",
            Call::SeccompSetFilter(_) => "seccomp_set_filter",
            Call::CloseRange(..) => "close_range",
            Call::Dup2(..) => "dup2",
            Call::JoinCgroup(_) => "join_cgroup",
            Call::Close(_) => "close",
            Call::Setns(..) => "setns",
        }
    }
}

/// A fake kernel that records every call and fails the n-th call of a chosen syscall.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    calls: std::cell::RefCell<Vec<Call>>,
    fail: Option<(&'static str, usize, Errno)>,
}

impl RecordingSyscall {
    /// A fake on which every call succeeds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Make the `nth` (0-based) call named `name` fail with `errno`.
    pub fn failing(name: &'static str, nth: usize, errno: Errno) -> Self {
        Self {
            calls: Default::default(),
            fail: Some((name, nth, errno)),
        }
    }

    /// Every call made so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// The names of the calls made so far.
    pub fn names(&self) -> Vec<&'static str> {
        self.calls.borrow().iter().map(Call::name).collect()
    }

    fn record(&self, call: Call) -> SysResult {
        let name = call.name();
        let mut calls = self.calls.borrow_mut();
        let seen = calls.iter().filter(|c| c.name() == name).count();
        calls.push(call);
        match self.fail {
            Some((fail_name, nth, errno)) if fail_name == name && nth == seen => Err(errno),
            _ => Ok(()),
        }
    }
}

fn s(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

impl Syscall for RecordingSyscall {
    fn unshare(&self, flags: libc::c_int) -> SysResult {
        self.record(Call::Unshare(flags))
    }
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> SysResult {
        self.record(Call::Mount {
            source: source.map(s),
            target: s(target),
            fstype: fstype.map(s),
            flags,
            data: data.map(s),
        })
    }
    fn umount2(&self, target: &CStr, flags: libc::c_int) -> SysResult {
        self.record(Call::Umount2(s(target), flags))
    }
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> SysResult {
        self.record(Call::PivotRoot(s(new_root), s(put_old)))
    }
    fn chdir(&self, path: &CStr) -> SysResult {
        self.record(Call::Chdir(s(path)))
    }
    fn mkdir(&self, path: &CStr, mode: libc::mode_t) -> SysResult {
        self.record(Call::Mkdir(s(path), mode))
    }
    fn write_file(&self, path: &CStr, data: &[u8], _mode: libc::mode_t) -> SysResult {
        self.record(Call::WriteFile(s(path), data.to_vec()))
    }
    fn symlink(&self, target: &CStr, link: &CStr) -> SysResult {
        self.record(Call::Symlink(s(target), s(link)))
    }
    fn mknod(&self, path: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> SysResult {
        self.record(Call::Mknod(s(path), mode, dev))
    }
    fn sethostname(&self, name: &[u8]) -> SysResult {
        self.record(Call::Sethostname(
            String::from_utf8_lossy(name).into_owned(),
        ))
    }
    fn loopback_up(&self) -> SysResult {
        self.record(Call::LoopbackUp)
    }
    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> SysResult {
        self.record(Call::Setrlimit(resource, soft, hard))
    }
    fn drop_bounding_set(&self, last_cap: u32) -> SysResult {
        self.record(Call::DropBoundingSet(last_cap))
    }
    fn clear_ambient(&self) -> SysResult {
        self.record(Call::ClearAmbient)
    }
    fn clear_inheritable(&self) -> SysResult {
        self.record(Call::ClearInheritable)
    }
    fn clear_all_caps(&self) -> SysResult {
        self.record(Call::ClearAllCaps)
    }
    fn set_no_new_privs(&self) -> SysResult {
        self.record(Call::SetNoNewPrivs)
    }
    fn setgroups(&self, groups: &[libc::gid_t]) -> SysResult {
        self.record(Call::Setgroups(groups.to_vec()))
    }
    fn setresgid(&self, gid: libc::gid_t) -> SysResult {
        self.record(Call::Setresgid(gid))
    }
    fn setresuid(&self, uid: libc::uid_t) -> SysResult {
        self.record(Call::Setresuid(uid))
    }
    fn landlock_create_ruleset(&self, attr: &LandlockRulesetAttr) -> SysResult<RawFd> {
        self.record(Call::LandlockCreateRuleset(*attr)).map(|_| 99)
    }
    fn landlock_add_path_rule(&self, _ruleset: RawFd, path: &CStr, access: u64) -> SysResult {
        self.record(Call::LandlockAddPathRule(s(path), access))
    }
    fn landlock_restrict_self(&self, _ruleset: RawFd) -> SysResult {
        self.record(Call::LandlockRestrictSelf)
    }
    fn seccomp_set_filter(&self, program: &[libc::sock_filter]) -> SysResult {
        self.record(Call::SeccompSetFilter(program.len()))
    }
    fn close_range(&self, first: u32, last: u32) -> SysResult {
        self.record(Call::CloseRange(first, last))
    }
    fn dup2(&self, from: RawFd, to: RawFd) -> SysResult {
        self.record(Call::Dup2(from, to))
    }
    fn join_cgroup(&self, procs_fd: RawFd) -> SysResult {
        self.record(Call::JoinCgroup(procs_fd))
    }
    fn close(&self, fd: RawFd) -> SysResult {
        self.record(Call::Close(fd))
    }
    fn setns(&self, fd: RawFd, nstype: libc::c_int) -> SysResult {
        self.record(Call::Setns(fd, nstype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_fails_the_chosen_call_only() {
        let fake = RecordingSyscall::failing("mount", 1, Errno::EPERM);
        let t = c"/a";
        assert!(fake.mount(None, t, None, 0, None).is_ok());
        assert_eq!(fake.mount(None, t, None, 0, None), Err(Errno::EPERM));
        assert!(fake.mount(None, t, None, 0, None).is_ok());
        assert_eq!(fake.names(), vec!["mount"; 3]);
    }
}
