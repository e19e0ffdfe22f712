//! Shared helpers for dsbox's workspace-level integration tests: where the built binaries
//! are, running the `dsbox-probe` inside sandboxes, and joining a shell sandbox from a
//! `JoinPlan` exactly as the kernel crate's Python zygote child does.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::{Command, Output};

use base64::Engine;
use serde_json::Value;

/// The `dsbox` binary built by `cargo test --workspace` (the `dsbox-cli` package's own
/// integration test makes cargo build it before any test runs).
pub fn dsbox_bin() -> PathBuf {
    let bin = profile_dir().join("dsbox");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p dsbox-cli` first) so it gets built",
        bin.display()
    );
    bin
}

/// The `dsbox-probe` binary (this crate's own binary, built with its tests).
pub fn probe_bin() -> PathBuf {
    let bin = profile_dir().join("dsbox-probe");
    assert!(
        bin.exists(),
        "{} is missing: build the dsbox-tests crate",
        bin.display()
    );
    bin
}

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf()
}

/// For a test that must be the only one in its process (it measures the process, or
/// kills something the process shares): the first call, from the harness, runs the test
/// binary again with only `test` (its full path, e.g. `limits::name`) and `marker` set in
/// the environment, asserts that run passed, and returns true: the caller returns. In
/// that run the call returns false and the caller goes on with the test.
pub fn rerun_alone(test: &str, marker: &str) -> bool {
    if std::env::var_os(marker).is_some() {
        return false;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", test, "--test-threads=1", "--nocapture"])
        .env(marker, "1")
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test}, run alone, failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Where the probe appears inside sandboxes.
pub const PROBE_INSIDE: &str = "/probe";

/// `--ro <probe>:/probe`, to put the probe into a sandbox.
pub fn probe_mount() -> Vec<String> {
    vec![
        "--ro".into(),
        format!("{}:{PROBE_INSIDE}", probe_bin().display()),
    ]
}

/// Panic with a clear message unless we are root (the runtime tests need real
/// namespaces and cgroups).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the runtime integration tests need root (namespaces, cgroups, pivot_root)"
    );
}

/// Run `dsbox <args>`.
pub fn dsbox(args: &[&str]) -> Output {
    dsbox_with_env(args, &[])
}

/// Run `dsbox <args>` with extra environment variables for the dsbox process itself.
pub fn dsbox_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(dsbox_bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run dsbox")
}

/// `dsbox run <run_args> --ro probe:/probe -- /probe <probe_args>`; returns the probe's
/// JSON (Null if it printed none) and the raw output.
pub fn run_probe(run_args: &[&str], probe_args: &[&str]) -> (Value, Output) {
    run_probe_with_env(run_args, probe_args, &[])
}

/// [`run_probe`] with extra environment variables for the dsbox process.
pub fn run_probe_with_env(
    run_args: &[&str],
    probe_args: &[&str],
    env: &[(&str, &str)],
) -> (Value, Output) {
    let mount = probe_mount();
    let mut args: Vec<&str> = vec!["run"];
    args.extend(mount.iter().map(String::as_str));
    args.extend_from_slice(run_args);
    args.push("--");
    args.push(PROBE_INSIDE);
    args.extend_from_slice(probe_args);
    let out = dsbox_with_env(&args, env);
    let json = parse_last_json(&out.stdout);
    (json, out)
}

/// The last line of `stdout` that parses as JSON.
pub fn parse_last_json(stdout: &[u8]) -> Value {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null)
}

/// handled_access_fs, handled_access_net, scoped, rules (path, access).
type LandlockJoin = (u64, u64, u64, Vec<(CString, u64)>);

/// Everything the joining child needs, converted before fork so the child only makes
/// syscalls.
struct PreparedJoin {
    namespaces: libc::c_int,
    uid: u32,
    gid: u32,
    cwd: CString,
    env: Vec<CString>,
    rlimits: Vec<(u32, u64, u64)>,
    landlock: Option<LandlockJoin>,
    seccomp: Option<Vec<libc::sock_filter>>,
    drop_caps: bool,
    argv: Vec<CString>,
}

fn prepare(plan: &Value, argv: &[&str]) -> PreparedJoin {
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let landlock = plan.get("landlock").filter(|l| !l.is_null()).map(|l| {
        (
            u(&l["handled_access_fs"]),
            u(&l["handled_access_net"]),
            u(&l["scoped"]),
            l["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    (
                        CString::new(r["path"].as_str().unwrap_or("/")).unwrap(),
                        u(&r["access"]),
                    )
                })
                .collect(),
        )
    });
    let seccomp = plan["seccomp_bpf"].as_str().map(|b64| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("seccomp_bpf is base64");
        bytes
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect()
    });
    PreparedJoin {
        namespaces: u(&plan["namespaces"]) as libc::c_int,
        uid: u(&plan["uid"]) as u32,
        gid: u(&plan["gid"]) as u32,
        cwd: CString::new(plan["cwd"].as_str().unwrap_or("/")).unwrap(),
        env: plan["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                CString::new(format!(
                    "{}={}",
                    kv[0].as_str().unwrap_or(""),
                    kv[1].as_str().unwrap_or("")
                ))
                .unwrap()
            })
            .collect(),
        rlimits: plan["rlimits"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| (u(&r[0]) as u32, u(&r[1]), u(&r[2])))
            .collect(),
        landlock,
        seccomp,
        drop_caps: plan["drop_capabilities"].as_bool().unwrap_or(true),
        argv: argv.iter().map(|a| CString::new(*a).unwrap()).collect(),
    }
}

fn fail(step: i32) -> ! {
    // SAFETY: _exit in a forked child; the exit code names the failed step.
    unsafe { libc::_exit(100 + step) }
}

/// In the (single-threaded) grandchild: apply the plan step by step, then exec.
fn apply_and_exec(p: &PreparedJoin, pidfd: RawFd, stdout: RawFd) -> ! {
    // SAFETY: this runs in a forked, single-threaded child; every call below is a plain
    // syscall on values prepared before the fork, and the child ends in execve or _exit.
    unsafe {
        if libc::setns(pidfd, p.namespaces) != 0 {
            fail(1);
        }
        if libc::chdir(p.cwd.as_ptr()) != 0 {
            fail(2);
        }
        libc::dup2(stdout, 1);
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        for &(res, soft, hard) in &p.rlimits {
            let rl = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(res as _, &rl) != 0 {
                fail(3);
            }
        }
        if p.drop_caps {
            for cap in 0..64 {
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) != 0
                || libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) != 0
            {
                fail(4);
            }
            #[repr(C)]
            struct Header {
                version: u32,
                pid: i32,
            }
            let mut h = Header {
                version: 0x2008_0522,
                pid: 0,
            };
            let data = [0u32; 6];
            if libc::syscall(libc::SYS_capset, &mut h, data.as_ptr()) != 0 {
                fail(5);
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(6);
        }
        if let Some((fs, net, scoped, rules)) = &p.landlock {
            let attr = [*fs, *net, *scoped];
            let size = if *scoped != 0 {
                24
            } else if *net != 0 {
                16
            } else {
                8
            };
            let rs = libc::syscall(
                libc::SYS_landlock_create_ruleset,
                attr.as_ptr(),
                size as usize,
                0u32,
            );
            if rs < 0 {
                fail(7);
            }
            for (path, access) in rules {
                let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                if fd < 0 {
                    continue;
                }
                #[repr(C, packed)]
                struct PathBeneath {
                    access: u64,
                    fd: i32,
                }
                let pb = PathBeneath {
                    access: *access,
                    fd,
                };
                if libc::syscall(
                    libc::SYS_landlock_add_rule,
                    rs,
                    1,
                    &pb as *const PathBeneath,
                    0u32,
                ) != 0
                {
                    fail(8);
                }
                libc::close(fd);
            }
            if libc::syscall(libc::SYS_landlock_restrict_self, rs, 0u32) != 0 {
                fail(9);
            }
            libc::close(rs as i32);
        }
        if let Some(prog) = &p.seccomp {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0 {
                fail(10);
            }
        }
        let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = p.env.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
        fail(11)
    }
}

/// Join a shell sandbox the way the kernel crate's zygote child does, from the JSON form
/// of its `JoinPlan` and the passed fds: write "0" to each `cgroup.procs` fd,
/// `setns(pidfd, CLONE_NEWPID)`, fork; the grandchild enters the other namespaces and
/// applies the plan, then execs `argv` with stdout on `stdout`. Returns the exit code of
/// the joined process (100+n: step n of the join failed).
pub fn join_and_run(
    plan: &Value,
    pidfd: RawFd,
    cgroup_procs: &[RawFd],
    argv: &[&str],
    stdout: RawFd,
) -> i32 {
    let prepared = prepare(plan, argv);
    // SAFETY: fork from the test process; the child only makes syscalls and exits.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        // SAFETY: single-threaded child; syscalls on fds that the parent owns and keeps
        // open until we exit.
        unsafe {
            for &fd in cgroup_procs {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    fail(12);
                }
            }
            if libc::setns(pidfd, libc::CLONE_NEWPID) != 0 {
                fail(13);
            }
            let grandchild = libc::fork();
            if grandchild == 0 {
                apply_and_exec(&prepared, pidfd, stdout);
            }
            let mut status = 0;
            libc::waitpid(grandchild, &mut status, 0);
            libc::_exit(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}
