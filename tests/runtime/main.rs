//! Integration tests of the sandbox runtime: real sandboxes, as root. Each protection gets
//! a test that tries to break it, with a positive control where one is needed to prove
//! the check can fail. Most tests drive the `dsbox` binary and read the JSON that
//! `dsbox-probe` prints from inside; a few use the library directly.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dsbox_runtime::spec::{Mount, SandboxSpec};
use dsbox_runtime::{Sandbox, SpawnOptions, Stdio};
use dsbox_tests::{
    PROBE_INSIDE, dsbox, join_and_run, parse_last_json, probe_bin, require_root, run_probe,
    run_probe_with_env,
};
use serde_json::Value;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// A pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array for pipe2 to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn read_all(fd: OwnedFd) -> String {
    let mut f = std::fs::File::from(fd);
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

fn probe_spec(args: &[&str]) -> SandboxSpec {
    let mut argv = vec![PROBE_INSIDE.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    SandboxSpec::builder()
        .with_command(argv)
        .with_memory(256 << 20)
        .with_pids(64)
        .with_mount(Mount::Bind {
            source: probe_bin(),
            destination: PROBE_INSIDE.into(),
            readonly: true,
        })
        .build()
        .unwrap()
}

/// Run a spec with the library, stdout captured; returns (probe JSON, exit code).
fn lib_run(spec: &SandboxSpec) -> (Value, i32) {
    let (r, w) = pipe();
    let mut sb = Sandbox::spawn(
        spec,
        SpawnOptions {
            stdout: Stdio::Fd(w),
            stdin: Stdio::Null,
            ..SpawnOptions::default()
        },
    )
    .unwrap();
    let report = sb.wait().unwrap();
    sb.destroy().unwrap();
    (parse_last_json(read_all(r).as_bytes()), report.code())
}

// ---------------------------------------------------------------- filesystem

#[test]
fn host_files_outside_the_rootfs_are_invisible() {
    require_root();
    let own_source = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let own = own_source.to_str().unwrap();
    assert!(
        own_source.exists(),
        "the control file must exist on the host"
    );
    let (j, out) = run_probe(
        &[],
        &[
            "report",
            "--read",
            own,
            "--read",
            "/root",
            "--read",
            "/etc/shadow",
            "--read",
            "/work",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for p in [own, "/root", "/etc/shadow", "/work"] {
        assert_eq!(j["reads"][p], "ENOENT", "{p} must not exist inside: {j}");
    }
    // Control: the same file is readable once it is bound in, so the check can fail.
    let bind = format!("{}:/data/src", own_source.parent().unwrap().display());
    let (j, _) = run_probe(
        &["--ro", &bind],
        &["report", "--read", "/data/src/Cargo.toml"],
    );
    assert_eq!(j["reads"]["/data/src/Cargo.toml"], "ok", "{j}");
}

#[test]
fn rootfs_and_data_are_read_only_and_scratch_is_writable() {
    require_root();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f.csv"), "a,b\n").unwrap();
    let bind = format!("{}:/data/task", data.path().display());
    let (j, out) = run_probe(
        &["--ro", &bind],
        &[
            "report",
            "--write",
            "/usr/bin/dsbox-evil",
            "--write",
            "/etc/passwd",
            "--write",
            "/evil",
            "--write",
            "/data/task/f.csv",
            "--write",
            "/data/task/new",
            "--write",
            "/tmp/ok",
            "--write",
            "/workdir/ok",
            "--write",
            "/submission/ok",
            "--read",
            "/data/task/f.csv",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for p in [
        "/usr/bin/dsbox-evil",
        "/etc/passwd",
        "/evil",
        "/data/task/f.csv",
        "/data/task/new",
    ] {
        let r = j["writes"][p].as_str().unwrap();
        assert!(
            r == "EROFS" || r == "EACCES",
            "write to {p} must fail, got {r}"
        );
    }
    for p in ["/tmp/ok", "/workdir/ok", "/submission/ok"] {
        assert_eq!(j["writes"][p], "ok", "scratch {p} must be writable: {j}");
    }
    assert_eq!(j["reads"]["/data/task/f.csv"], "ok");
    assert_eq!(
        std::fs::read_to_string(data.path().join("f.csv")).unwrap(),
        "a,b\n"
    );
    assert!(!data.path().join("new").exists());
}

#[test]
fn rw_binds_are_writable() {
    require_root();
    let out_dir = tempfile::tempdir().unwrap();
    // Writable for the sandbox uid (DAC still applies inside).
    std::fs::set_permissions(
        out_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let bind = format!("{}:/out", out_dir.path().display());
    let (j, _) = run_probe(&["--rw", &bind], &["report", "--write", "/out/result.txt"]);
    assert_eq!(j["writes"]["/out/result.txt"], "ok", "{j}");
    assert_eq!(
        std::fs::read_to_string(out_dir.path().join("result.txt")).unwrap(),
        "probe\n"
    );
}

#[test]
fn scratch_fills_stop_at_their_size_limit() {
    require_root();
    let (j, out) = run_probe(&["--scratch-size", "8M"], &["fill", "/tmp/big"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(j["errno"], "ENOSPC", "{j}");
    let written = j["written"].as_u64().unwrap();
    assert!(
        written <= 8 << 20,
        "wrote {written} bytes into an 8M scratch"
    );
    assert!(
        written >= 4 << 20,
        "the scratch should take a few MiB first: {written}"
    );
}

#[test]
fn landlock_denies_paths_outside_its_rules() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::write(dir.path().join("secret.txt"), "x").unwrap();
    let mut spec = probe_spec(&[
        "report",
        "--read",
        "/unruled/secret.txt",
        "--write",
        "/unruled/new",
    ]);
    spec.mounts.push(Mount::Bind {
        source: dir.path().into(),
        destination: "/unruled".into(),
        readonly: false,
    });
    // Control: with a rule, the read-write bind is readable and writable.
    let (j, c) = lib_run(&spec);
    assert_eq!(c, 0);
    assert_eq!(j["reads"]["/unruled/secret.txt"], "ok", "{j}");
    assert_eq!(j["writes"]["/unruled/new"], "ok", "{j}");
    // Without a rule, landlock alone refuses both (the mount itself is read-write).
    spec.landlock.exclude.push("/unruled".into());
    let (j, c) = lib_run(&spec);
    assert_eq!(c, 0);
    assert_eq!(j["reads"]["/unruled/secret.txt"], "EACCES", "{j}");
    assert_eq!(j["writes"]["/unruled/new"], "EACCES", "{j}");
}

// ---------------------------------------------------------------- network

#[test]
fn network_is_loopback_only_and_dns_fails() {
    require_root();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (j, out) = run_probe(
        &[],
        &[
            "report",
            "--connect",
            &addr,
            "--connect",
            "1.1.1.1:53",
            "--dns",
            "example.com",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        j["connects"][&addr], "ECONNREFUSED",
        "the host's loopback must be unreachable: {j}"
    );
    assert_ne!(j["connects"]["1.1.1.1:53"], "ok", "{j}");
    assert_ne!(j["dns"]["example.com"], "ok", "{j}");
    assert_eq!(j["interfaces"], serde_json::json!(["lo"]), "{j}");
    // Control: with the host's network the same connect reaches our listener.
    let (j, _) = run_probe(&["--net", "host"], &["report", "--connect", &addr]);
    assert_eq!(j["connects"][&addr], "ok", "{j}");
}

// ---------------------------------------------------------------- processes, env, fds

#[test]
fn host_processes_are_invisible_and_cannot_be_signalled() {
    require_root();
    let me = std::process::id().to_string();
    let (j, out) = run_probe(&[], &["report", "--signal", &me, "--signal", "1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(j["signals"][&me], "ESRCH", "{j}");
    let pids: Vec<i64> = j["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    assert!(
        pids.contains(&1) && pids.len() <= 3,
        "only init and the probe are visible: {pids:?}"
    );
    assert!(j["pid"].as_i64().unwrap() <= 3, "{j}");
    // Signalling init from inside is refused (different uid, pid-namespace init).
    assert_eq!(j["signals"]["1"], "EPERM", "{j}");
}

#[test]
fn the_runtime_environment_does_not_leak() {
    require_root();
    let (j, out) = run_probe_with_env(
        &["--env", "TASK=42"],
        &["report"],
        &[
            ("OPENAI_API_KEY", "sk-test-secret"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let env = j["env"].as_object().unwrap();
    assert!(!env.contains_key("OPENAI_API_KEY"), "{j}");
    assert!(
        !env.values().any(|v| v.as_str().unwrap().contains("secret")),
        "{j}"
    );
    assert_eq!(env["TASK"], "42");
    assert_eq!(env["HOME"], "/workdir");
    let allowed = ["PATH", "HOME", "LANG", "LC_ALL", "TERM", "TZ", "TASK"];
    for k in env.keys() {
        assert!(
            allowed.contains(&k.as_str()),
            "unexpected variable {k} inside"
        );
    }
}

#[test]
fn leaked_fds_are_closed() {
    require_root();
    // fds without CLOEXEC, as a careless parent would leave them: dsbox inherits them
    // (std's Command does not close them), the sandbox must not.
    let leaked: Vec<i32> = (0..3)
        .map(|_| {
            // SAFETY: open(2) without O_CLOEXEC on purpose; closed at the end of the test.
            unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) }
        })
        .collect();
    assert!(leaked.iter().all(|&fd| fd > 2));
    let (j, out) = run_probe(&[], &["report"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let fds: Vec<i64> = j["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_i64().unwrap())
        .collect();
    // 0, 1, 2 and the fd of the /proc/self/fd listing itself.
    assert!(
        fds.len() <= 4 && fds.iter().take(3).eq([0, 1, 2].iter()),
        "fds inside: {fds:?}"
    );
    // The same through the library, in this very process.
    let (j, _) = lib_run(&probe_spec(&["report"]));
    let fds = j["fds"].as_array().unwrap();
    assert!(fds.len() <= 4, "fds inside: {fds:?}");
    for fd in leaked {
        // SAFETY: closing the fds opened above.
        unsafe { libc::close(fd) };
    }
}

/// A field of /proc/<pid>/status.
fn status_field(pid: i32, field: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')
                .map(|v| v.trim().to_owned())
        })
}

/// Sandboxes are cloned by the runtime's spawner, a fork of the runtime: it must hold none
/// of the runtime's files (a leaked channel end would keep a sandbox alive after the
/// runtime closed it), leave the sandboxes the runtime's children, and be replaced when
/// it dies. Runs alone in its own process: it kills the spawner, which a parallel test
/// could be using.
#[test]
fn the_spawner_holds_no_runtime_fd_keeps_the_runtime_the_parent_and_is_replaced() {
    require_root();
    if dsbox_tests::rerun_alone(
        "the_spawner_holds_no_runtime_fd_keeps_the_runtime_the_parent_and_is_replaced",
        "DSBOX_TEST_SPAWNER_ALONE",
    ) {
        return;
    }
    // Open before the spawner exists, without CLOEXEC: a fork inherits it.
    // SAFETY: open(2) of a constant path; closed at the end.
    let leaked = unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
    assert!(leaked > 2);
    assert_eq!(dsbox_runtime::process::spawner::pid(), None);
    let me = std::process::id().to_string();

    let shell = Sandbox::spawn(&SandboxSpec::default(), SpawnOptions::default()).unwrap();
    let spawner = dsbox_runtime::process::spawner::pid().expect("a spawner runs");
    assert_eq!(
        status_field(spawner, "Name").as_deref(),
        Some("dsbox-spawner")
    );
    assert_eq!(status_field(spawner, "PPid").as_deref(), Some(me.as_str()));
    assert_eq!(
        status_field(shell.pid(), "PPid").as_deref(),
        Some(me.as_str()),
        "init is the runtime's child, not the spawner's"
    );
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{spawner}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default()
        })
        .collect();
    assert!(
        fds.len() == 1 && fds[0].starts_with("socket:"),
        "the spawner holds only its socket to the runtime: {fds:?}"
    );
    // Positive control: the runtime itself does hold the file.
    assert!(
        std::fs::read_link(format!("/proc/self/fd/{leaked}"))
            .unwrap()
            .ends_with("hostname")
    );

    // A killed spawner is replaced (and reaped) by the next start.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(spawner, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_field(spawner, "State").is_some_and(|s| !s.starts_with('Z')) {
        assert!(Instant::now() < deadline, "the spawner did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (j, code) = lib_run(&probe_spec(&["report"]));
    assert_eq!(code, 0, "{j}");
    let second = dsbox_runtime::process::spawner::pid().expect("a new spawner runs");
    assert_ne!(second, spawner);
    assert!(
        !Path::new(&format!("/proc/{spawner}")).exists(),
        "the dead spawner was reaped"
    );
    shell.destroy().unwrap();
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(leaked) };
}

// ---------------------------------------------------------------- privileges

#[test]
fn dangerous_syscalls_return_eperm() {
    require_root();
    let (j, out) = run_probe(&[], &["report"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let s = &j["syscalls"];
    for name in [
        "mount",
        "unshare_user",
        "unshare_net",
        "ptrace_attach_1",
        "ptrace_traceme",
        "bpf",
        "keyctl",
        "perf_event_open",
        "personality_no_aslr",
        "chroot",
        "open_by_handle_at",
        "setuid_0",
    ] {
        assert_eq!(s[name], "EPERM", "{name}: {s}");
    }
    // clone3 gets ENOSYS so that libc falls back to clone, whose flags the filter checks.
    assert_eq!(s["clone3"], "ENOSYS", "{s}");
}

#[test]
fn capabilities_are_empty_no_new_privs_is_set_and_the_uid_is_unprivileged() {
    require_root();
    let (j, out) = run_probe(&[], &["report"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for set in ["cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb"] {
        assert_eq!(j[set], "0000000000000000", "{set}: {j}");
    }
    assert_eq!(j["no_new_privs"], "1");
    assert_eq!(j["seccomp"], "2");
    assert_eq!(j["uid"], 1000);
    assert_eq!(j["gid"], 1000);
    assert_eq!(j["groups"], "", "no supplementary groups: {j}");
    assert_eq!(j["hostname"], "dsbox");
    assert_eq!(j["cwd"], "/workdir");
}

#[test]
fn user_namespace_sandboxes_hold_the_same_protections() {
    require_root();
    let (j, out) = run_probe(&["--user-namespace"], &["report", "--read", "/etc/shadow"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(j["uid"], 1000);
    assert_eq!(j["cap_eff"], "0000000000000000");
    assert_eq!(j["cap_bnd"], "0000000000000000");
    assert_eq!(j["syscalls"]["mount"], "EPERM");
    assert_eq!(j["reads"]["/etc/shadow"], "ENOENT");
}

// ---------------------------------------------------------------- limits

#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_the_host_stays_responsive() {
    require_root();
    let bin = dsbox_tests::dsbox_bin();
    let mount = dsbox_tests::probe_mount();
    let child = std::process::Command::new(bin)
        .arg("run")
        .args(&mount)
        .args([
            "--pids",
            "64",
            "--timeout",
            "20s",
            "--",
            PROBE_INSIDE,
            "forkbomb",
            "3000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the bomb holds its children, the host still starts processes quickly.
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        assert!(
            std::process::Command::new("/bin/true")
                .status()
                .unwrap()
                .success()
        );
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let j = parse_last_json(&out.stdout);
    assert_eq!(j["errno"], "EAGAIN", "{j}");
    let forks = j["forks"].as_u64().unwrap();
    assert!(
        forks < 64,
        "the pids limit must stop the bomb below 64 tasks: {forks}"
    );
    assert!(
        forks >= 32,
        "the bomb should get close to the limit: {forks}"
    );
    assert!(stderr(&out).contains("pids limit (64)"), "{}", stderr(&out));
    assert!(
        worst < Duration::from_secs(1),
        "a host command took {worst:?} during the bomb"
    );
}

#[test]
fn a_memory_bomb_is_oom_killed_and_reported() {
    require_root();
    let (_, out) = run_probe(&["--mem", "64M"], &["membomb"]);
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("dsbox: killed: out of memory (limit 64 MiB)"),
        "{err}"
    );
}

#[test]
fn a_busy_loop_is_killed_at_the_timeout() {
    require_root();
    let t = Instant::now();
    let (_, out) = run_probe(&["--timeout", "1s"], &["spin"]);
    let took = t.elapsed();
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    assert!(stderr(&out).contains("killed: timeout"), "{}", stderr(&out));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "took {took:?}"
    );
}

#[test]
fn exit_codes_follow_the_command_and_signals_follow_the_shell_convention() {
    require_root();
    let out = dsbox(&["run", "--", "/bin/sh", "-c", "exit 3"]);
    assert_eq!(code(&out), 3);
    let out = dsbox(&["run", "--", "/bin/sh", "-c", "kill -TERM $$"]);
    assert_eq!(code(&out), 143);
    let out = dsbox(&["run", "--", "/bin/sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(stderr(&out), "err\n");
}

// ---------------------------------------------------------------- shells and joins

#[test]
fn a_process_joining_a_shell_with_its_join_plan_passes_the_payload_checks() {
    require_root();
    let mut spec = probe_spec(&[]);
    spec.process = None;
    let sb = Sandbox::spawn(&spec, SpawnOptions::default()).unwrap();
    let join = sb.join_plan();
    assert!(
        !join.cgroup_procs.is_empty(),
        "a shell keeps its cgroup.procs fds for joiners"
    );
    let plan = serde_json::to_value(&join.plan).unwrap();
    assert!(plan["seccomp_bpf"].is_string() && plan["landlock"]["abi"].as_u64().unwrap() >= 1);
    let me = std::process::id().to_string();
    let own_source = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let (r, w) = pipe();
    let procs: Vec<i32> = join.cgroup_procs.iter().map(|f| f.as_raw_fd()).collect();
    let code = join_and_run(
        &plan,
        join.pidfd.as_raw_fd(),
        &procs,
        &[
            PROBE_INSIDE,
            "report",
            "--signal",
            &me,
            "--read",
            own_source,
            "--write",
            "/usr/x",
            "--write",
            "/tmp/ok",
        ],
        w.as_raw_fd(),
    );
    drop(w);
    assert_eq!(
        code, 0,
        "the join failed (100+n: step n of tests/src/lib.rs)"
    );
    let j = parse_last_json(read_all(r).as_bytes());
    for set in ["cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb"] {
        assert_eq!(j[set], "0000000000000000", "{set}: {j}");
    }
    assert_eq!(j["no_new_privs"], "1");
    assert_eq!(j["seccomp"], "2");
    assert_eq!(j["uid"], 1000);
    assert_eq!(j["hostname"], "dsbox");
    assert_eq!(j["cwd"], "/workdir");
    assert_eq!(j["signals"][&me], "ESRCH", "{j}");
    assert_eq!(j["reads"][own_source], "ENOENT", "{j}");
    assert_ne!(j["writes"]["/usr/x"], "ok");
    assert_eq!(j["writes"]["/tmp/ok"], "ok");
    assert_eq!(j["interfaces"], serde_json::json!(["lo"]));
    for name in [
        "mount",
        "unshare_user",
        "ptrace_attach_1",
        "bpf",
        "keyctl",
        "perf_event_open",
    ] {
        assert_eq!(j["syscalls"][name], "EPERM", "{name}: {j}");
    }
    let pids: Vec<i64> = j["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    assert!(
        pids.contains(&1) && pids.len() <= 3,
        "joined into the shell's pid namespace: {pids:?}"
    );
    // It counted against the shell's cgroup: the pids controller saw it.
    sb.destroy().unwrap();
}

// ---------------------------------------------------------------- cleanup

fn cgroup_children(parents: &[PathBuf]) -> Vec<PathBuf> {
    parents
        .iter()
        .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect()
}

#[test]
fn two_hundred_sandboxes_leave_no_cgroup_mount_process_or_state_behind() {
    require_root();
    let mut ids = Vec::new();
    let mut pids = Vec::new();
    let mut cgroups = Vec::new();
    for i in 0..200 {
        let spec = if i % 2 == 0 {
            SandboxSpec::builder()
                .with_command(["/bin/true"])
                .with_memory(64 << 20)
                .with_pids(16)
                .build()
                .unwrap()
        } else {
            SandboxSpec::builder()
                .with_command(["/bin/sleep", "60"])
                .with_memory(64 << 20)
                .with_pids(16)
                .build()
                .unwrap()
        };
        let mut sb = Sandbox::spawn(
            &spec,
            SpawnOptions {
                stdin: Stdio::Null,
                ..Default::default()
            },
        )
        .unwrap();
        ids.push(sb.id().to_owned());
        pids.push(sb.pid());
        cgroups.extend(sb.cgroup_paths());
        if i % 2 == 0 {
            assert_eq!(sb.wait().unwrap().code(), 0);
        } else {
            sb.kill().unwrap();
            assert_eq!(sb.wait().unwrap().code(), 137);
        }
        sb.destroy().unwrap();
    }
    assert!(!cgroups.is_empty(), "the sandboxes had cgroups");
    for cg in &cgroups {
        assert!(!cg.exists(), "cgroup {} was left behind", cg.display());
    }
    for pid in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} was left behind"
        );
    }
    for id in &ids {
        let state = Path::new(dsbox_runtime::state::STATE_DIR).join(format!("{id}.json"));
        assert!(
            !state.exists(),
            "state record {} was left behind",
            state.display()
        );
    }
    let parents = dsbox_runtime::sandbox::cgroup_system().sandbox_parents(None);
    let left: Vec<_> = cgroup_children(&parents)
        .into_iter()
        .filter(|p| ids.iter().any(|id| p.ends_with(id)))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The sandboxes' mounts lived in their own mount namespaces: none shows up in ours.
    // (Other processes on the machine may mount things meanwhile, so only dsbox's own
    // sources and mount points are looked for.)
    let mountinfo_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo_after.lines() {
        let mount_point = line.split_whitespace().nth(4).unwrap_or("");
        let source = line
            .split_once(" - ")
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .unwrap_or("");
        assert!(
            !mount_point.starts_with("/run/dsbox")
                && source != "dsbox-root"
                && source != "dsbox-dev",
            "a sandbox mount leaked into the host: {line}"
        );
    }
}

#[test]
fn gc_removes_what_a_killed_runtime_left_behind() {
    require_root();
    let mut child = std::process::Command::new(dsbox_tests::dsbox_bin())
        .args(["run", "--", "/bin/sleep", "60"])
        .spawn()
        .unwrap();
    // Wait until its state record appears, then kill the runtime without warning.
    let state_dir = Path::new(dsbox_runtime::state::STATE_DIR);
    let prefix = format!("{:x}-", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let found = std::fs::read_dir(state_dir)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix));
        if let Some(e) = found {
            break e.path();
        }
        assert!(Instant::now() < deadline, "no state record appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    let rec: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let cgroups: Vec<PathBuf> = rec["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| PathBuf::from(c.as_str().unwrap()))
        .collect();
    assert!(!cgroups.is_empty());
    assert!(record.exists(), "the killed runtime could not clean up");
    let out = dsbox(&["gc", "--json"]);
    // Either this gc or the startup sweep of a `dsbox run` from a test running alongside
    // removes the leftovers; both are the collector at work.
    assert_eq!(
        code(&out),
        0,
        "{} {}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!record.exists());
    for cg in cgroups {
        assert!(!cg.exists(), "{} survived gc", cg.display());
    }
    // Init is gone, or at least no longer in the sandbox's cgroup (a zombie waiting for
    // the host's init to reap it is not).
    let init = rec["init_pid"].as_i64().unwrap();
    let id = rec["id"].as_str().unwrap();
    let cgroup_of_init =
        std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap_or_default();
    assert!(
        !cgroup_of_init.contains(id),
        "init {init} survived: {cgroup_of_init}"
    );
}

// ---------------------------------------------------------------- bad input

fn assert_one_clear_line(out: &std::process::Output, code_expected: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(code(out), code_expected, "{err}");
    assert_eq!(err.lines().count(), 1, "exactly one line: {err:?}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_gets_one_clear_line_each() {
    require_root();
    assert_one_clear_line(
        &dsbox(&["run", "--rootfs", "/nonexistent/rootfs", "--", "/bin/true"]),
        125,
        "rootfs directory /nonexistent/rootfs does not exist",
    );
    assert_one_clear_line(
        &dsbox(&["run", "--mem", "12XB", "--", "/bin/true"]),
        125,
        "invalid size `12XB`",
    );
    assert_one_clear_line(
        &dsbox(&["run", "--require", "seccomp,apparmor", "--", "/bin/true"]),
        125,
        "unknown protection `apparmor`",
    );
    assert_one_clear_line(
        &dsbox(&["run", "--timeout", "soon", "--", "/bin/true"]),
        125,
        "invalid duration `soon`",
    );
    assert_one_clear_line(
        &dsbox(&["run", "--ro", "/nonexistent:/data", "--", "/bin/true"]),
        125,
        "mount source /nonexistent does not exist",
    );
    assert_one_clear_line(
        &dsbox(&["run", "--", "no-such-command"]),
        127,
        "command not found in the sandbox: no-such-command",
    );
    assert_one_clear_line(
        &dsbox(&["run", "--", "/etc/passwd"]),
        126,
        "cannot execute /etc/passwd",
    );
    let bundle = tempfile::tempdir().unwrap();
    std::fs::write(bundle.path().join("config.json"), "{ not json").unwrap();
    let b = bundle.path().to_str().unwrap();
    assert_one_clear_line(
        &dsbox(&["run", "--oci-bundle", b]),
        125,
        "not a valid OCI runtime config",
    );
    std::fs::create_dir(bundle.path().join("rootfs")).unwrap();
    std::fs::write(
        bundle.path().join("config.json"),
        r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}, "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}}}"#,
    )
    .unwrap();
    assert_one_clear_line(
        &dsbox(&["run", "--oci-bundle", b]),
        125,
        "`linux.seccomp` is not supported",
    );
}

#[test]
fn an_oci_bundle_runs() {
    require_root();
    let bundle = tempfile::tempdir().unwrap();
    let root = bundle.path().join("rootfs");
    for d in ["usr", "tmp", "workdir", "submission", "proc", "dev", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(target, root.join(link)).unwrap();
    }
    std::fs::write(
        bundle.path().join("config.json"),
        r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": true},
            "process": {"args": ["/bin/sh", "-c", "echo oci:$(hostname):$(id -u):$X"], "env": ["X=1"], "cwd": "/tmp",
                        "user": {"uid": 1000, "gid": 1000}, "noNewPrivileges": true},
            "hostname": "ocibox",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]}],
            "linux": {"resources": {"memory": {"limit": 134217728}, "pids": {"limit": 32}},
                      "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]}}"#,
    )
    .unwrap();
    let out = dsbox(&["run", "--oci-bundle", bundle.path().to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "oci:ocibox:1000:1\n");
}

#[test]
fn require_refuses_nothing_that_this_kernel_has_and_doctor_reports_it() {
    require_root();
    let out = dsbox(&[
        "run",
        "--require",
        "seccomp,landlock,cgroup,userns",
        "--",
        "/bin/true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = dsbox(&["doctor", "--json"]);
    assert_eq!(code(&out), 0);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in [
        "user namespaces",
        "cgroups",
        "seccomp",
        "landlock",
        "overlayfs",
        "clone3",
        "pidfd",
        "open_tree",
    ] {
        assert!(names.contains(&n), "doctor must report {n}: {names:?}");
    }
    assert!(!j["sandbox_cgroup_parents"].as_array().unwrap().is_empty());
}

// ---------------------------------------------------------------- roles and policies

#[test]
fn without_a_pid_namespace_the_zygote_role_keeps_capabilities_but_not_the_host_filesystem() {
    require_root();
    let own_source = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let mut spec = probe_spec(&["report", "--read", own_source]);
    spec.namespaces.pid = false;
    spec.capabilities = dsbox_runtime::spec::CapabilityMode::Keep;
    spec.seccomp = dsbox_runtime::spec::SeccompPolicy::Disabled;
    spec.landlock.enabled = false;
    let (r, w) = pipe();
    let mut sb = Sandbox::spawn(
        &spec,
        SpawnOptions {
            stdout: Stdio::Fd(w),
            ..SpawnOptions::default()
        },
    )
    .unwrap();
    // No init: the runtime's child is the payload itself, in the host pid namespace.
    let host_pid = sb.pid();
    let report = sb.wait().unwrap();
    let cgroups = sb.cgroup_paths();
    sb.destroy().unwrap();
    assert_eq!(report.code(), 0);
    let j = parse_last_json(read_all(r).as_bytes());
    assert_eq!(j["pid"].as_i64().unwrap(), host_pid as i64, "{j}");
    assert_ne!(j["cap_eff"], "0000000000000000", "capabilities kept: {j}");
    assert_eq!(j["seccomp"], "0");
    assert_eq!(
        j["reads"][own_source], "ENOENT",
        "still pivoted into its own root: {j}"
    );
    assert_eq!(j["interfaces"], serde_json::json!(["lo"]));
    assert!(!cgroups.is_empty() && cgroups.iter().all(|c| !c.exists()));
}

#[test]
fn a_seccomp_policy_file_replaces_the_built_in_one() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"main": {"mismatch_action": "allow", "match_action": {"errno": 1},
            "filter": [{"syscall": "mkdir"}, {"syscall": "mkdirat"}]}}"#,
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let script = "mkdir /tmp/d 2>/dev/null && echo mkdir-ok || echo mkdir-denied; \
                  unshare -U true 2>/dev/null && echo unshare-ok || echo unshare-denied";
    let out = dsbox(&["run", "--seccomp", p, "--", "/bin/sh", "-c", script]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mkdir-denied"), "{text}");
    // Control: the built-in policy allows mkdir.
    let out = dsbox(&["run", "--", "/bin/sh", "-c", script]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("mkdir-ok"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unshare-denied"));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"main": {"mismatch_action": "allow", "match_action": "allow", "filter": [{"syscall": "nope"}]}}"#).unwrap();
    assert_one_clear_line(
        &dsbox(&["run", "--seccomp", bad.to_str().unwrap(), "--", "/bin/true"]),
        125,
        "does not compile",
    );
}

#[test]
fn sigterm_to_dsbox_reaches_the_payload_through_init() {
    require_root();
    let mut child = std::process::Command::new(dsbox_tests::dsbox_bin())
        .args([
            "run",
            "--",
            "/bin/sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    stdout.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(7), "{rest}");
    assert!(rest.contains("got-term"));
}

#[test]
fn the_cpu_quota_is_written_to_the_sandbox_cgroup() {
    require_root();
    let mut spec = probe_spec(&["spin"]);
    spec.limits.cpus = Some(0.5);
    let mut sb = Sandbox::spawn(&spec, SpawnOptions::default()).unwrap();
    let paths = sb.cgroup_paths();
    let quota: Vec<String> = paths
        .iter()
        .filter_map(|p| {
            std::fs::read_to_string(p.join("cpu.cfs_quota_us"))
                .or_else(|_| std::fs::read_to_string(p.join("cpu.max")))
                .ok()
        })
        .collect();
    sb.kill().unwrap();
    assert_eq!(sb.wait().unwrap().code(), 137);
    sb.destroy().unwrap();
    assert_eq!(quota.len(), 1, "{paths:?}");
    assert!(quota[0].starts_with("50000"), "{quota:?}");
}

#[test]
fn sandboxes_started_from_several_threads_at_once_all_work_and_leave_nothing() {
    require_root();
    let threads: Vec<_> = (0..4i32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut cgroups = Vec::new();
                for i in 0..25 {
                    let spec = SandboxSpec::builder()
                        .with_command(["/bin/sh", "-c", &format!("exit {}", (t * 25 + i) % 7)])
                        .with_memory(64 << 20)
                        .with_pids(16)
                        .build()
                        .unwrap();
                    let mut sb = Sandbox::spawn(
                        &spec,
                        SpawnOptions {
                            stdin: Stdio::Null,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                    cgroups.extend(sb.cgroup_paths());
                    assert_eq!(sb.wait().unwrap().code(), (t * 25 + i) % 7);
                    sb.destroy().unwrap();
                }
                cgroups
            })
        })
        .collect();
    let cgroups: Vec<PathBuf> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(
        cgroups.len() >= 4 * 25,
        "at least one cgroup leaf per sandbox"
    );
    assert!(cgroups.iter().all(|c| !c.exists()));
}

#[test]
fn an_unprivileged_user_gets_a_user_namespace_sandbox_with_the_same_protections() {
    require_root();
    // Copies of the binaries that uid 1000 can reach (the target dir may be private).
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dsbox_copy = dir.path().join("dsbox");
    let probe_copy = dir.path().join("probe");
    std::fs::copy(dsbox_tests::dsbox_bin(), &dsbox_copy).unwrap();
    std::fs::copy(probe_bin(), &probe_copy).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups"])
        .arg(&dsbox_copy)
        .args(["run", "--ro", &format!("{}:/probe", probe_copy.display())])
        .args(["--", "/probe", "report", "--read", "/etc/shadow"])
        .output()
        .expect("setpriv (util-linux) runs dsbox as uid 1000");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let j = parse_last_json(&out.stdout);
    assert_eq!(j["uid"], 1000);
    for set in ["cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb"] {
        assert_eq!(j[set], "0000000000000000", "{set}: {j}");
    }
    assert_eq!(j["seccomp"], "2");
    assert_eq!(j["no_new_privs"], "1");
    assert_eq!(j["syscalls"]["mount"], "EPERM");
    assert_eq!(j["reads"]["/etc/shadow"], "ENOENT");
    assert_eq!(j["interfaces"], serde_json::json!(["lo"]));
    // Without cgroups it says so instead of pretending to limit anything.
    assert!(
        stderr(&out).contains("no default memory and pids limits"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_rootfs_directory_takes_data_files_it_has_no_mount_points_for_read_only() {
    require_root();
    // A directory rootfs like the ones `dsbox rootfs build --base debootstrap` makes: an
    // empty /data, the scratch dirs, /usr from the host, merged-usr links.
    let root = tempfile::tempdir().unwrap();
    for d in [
        "tmp",
        "workdir",
        "submission",
        "proc",
        "dev",
        "data",
        "usr",
        "etc",
    ] {
        std::fs::create_dir(root.path().join(d)).unwrap();
    }
    for l in ["bin", "lib", "lib64", "sbin"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), root.path().join(l)).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("x.csv"), "a,b\n1,2\n").unwrap();
    let x = format!("{}:/data/qrdata/x.csv", data.path().join("x.csv").display());
    let out = dsbox(&[
        "run",
        "--rootfs",
        root.path().to_str().unwrap(),
        "--ro",
        "/usr:/usr",
        "--ro",
        &x,
        "--",
        "/bin/sh",
        "-c",
        "cat /data/qrdata/x.csv; ls /data; echo > /data/new || echo refused-new; \
         echo > /data/qrdata/x.csv || echo refused-x",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["a,b", "1,2", "qrdata", "refused-new", "refused-x"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The rootfs itself is untouched (the mount points live in a tmpfs).
    assert_eq!(
        std::fs::read_dir(root.path().join("data")).unwrap().count(),
        0
    );
}
