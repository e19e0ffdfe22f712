//! The zygote's Python side without the runtime: preload, fork, reap, and each step of
//! joining (namespaces, identity, capabilities, landlock, seccomp), as root.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dsbox_kernel::zygote::{JoinPlan, SpawnFds, SpawnedKernel, Zygote, ZygoteConfig, ZygoteEvent};
use dsbox_kernel::{CellResult, ClientConfig, KernelClient, KernelControl, KernelError};
use dsbox_runtime::landlock::{
    EXECUTE, LandlockPlan, LandlockRule, READ_DIR, READ_FILE, fs_access_for_abi, kernel_abi,
};

use crate::{CELL, is_root, test_python};

struct SigintPid(i32);

impl KernelControl for SigintPid {
    fn interrupt(&self) -> std::io::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGINT,
        )
        .map_err(std::io::Error::from)
    }
}

async fn zygote(preload: &[&str]) -> Zygote {
    let mut config = ZygoteConfig::new(test_python());
    config.preload = preload.iter().map(|s| s.to_string()).collect();
    let z = Zygote::start(&config).await.expect("start the zygote");
    assert!(z.failed.is_empty(), "preload failures: {:?}", z.failed);
    z
}

fn plan(uid: u32) -> JoinPlan {
    JoinPlan {
        namespaces: 0,
        uid,
        gid: uid,
        cwd: PathBuf::from("/"),
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("HOME".into(), "/tmp".into()),
        ],
        rlimits: vec![],
        landlock: None,
        seccomp_bpf: None,
        hostname: "dsbox".into(),
        drop_capabilities: false,
        no_new_privs: false,
    }
}

async fn connect(spawned: SpawnedKernel) -> Result<KernelClient, KernelError> {
    KernelClient::connect(
        spawned.channel,
        Arc::new(SigintPid(spawned.pid as i32)),
        ClientConfig::default(),
    )
    .await
}

async fn cell(client: &mut KernelClient, code: &str) -> CellResult {
    client.execute(code, CELL).await.expect("execute")
}

/// The next `exited` event for `pid`.
async fn exit_of(z: &mut Zygote, pid: u32) -> (Option<i32>, Option<i32>) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), z.next_event())
            .await
            .expect("an exit event")
            .expect("zygote event");
        if let ZygoteEvent::Exited {
            pid: p,
            code,
            signal,
            ..
        } = event
            && p == pid
        {
            return (code, signal);
        }
    }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: the zygote join tests need root");
            return;
        }
    };
}

#[tokio::test]
async fn the_zygote_forks_kernels_that_hold_its_modules_and_reports_their_exits() {
    require_root!();
    let mut z = zygote(&["numpy"]).await;
    let zygote_pid = z.pid().unwrap();
    let a = z.spawn(&plan(0), SpawnFds::default()).await.unwrap();
    let b = z.spawn(&plan(0), SpawnFds::default()).await.unwrap();
    let (a_pid, b_pid) = (a.pid, b.pid);
    let mut a = connect(a).await.unwrap();
    let mut b = connect(b).await.unwrap();
    let probe = "import os, sys, random\n('numpy' in sys.modules, os.getppid())";
    let expected = format!("(True, {zygote_pid})");
    assert_eq!(
        cell(&mut a, probe).await.result_text(),
        Some(expected.as_str())
    );
    assert_eq!(
        cell(&mut b, probe).await.result_text(),
        Some(expected.as_str())
    );
    let draw = "import numpy\n(random.random(), float(numpy.random.rand()))";
    let ra = cell(&mut a, draw).await;
    let rb = cell(&mut b, draw).await;
    assert_ne!(
        ra.result_text(),
        rb.result_text(),
        "children draw different random numbers"
    );
    assert_eq!(z.ping().await.unwrap(), 2);

    a.shutdown().await.unwrap();
    assert_eq!(exit_of(&mut z, a_pid).await, (Some(0), None));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(exit_of(&mut z, b_pid).await, (None, Some(9)));
    assert_eq!(z.ping().await.unwrap(), 0, "both children reaped");
    z.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_join_step_is_reported_by_name_and_errno() {
    require_root!();
    let mut z = zygote(&[]).await;
    let mut bad = plan(0);
    bad.cwd = PathBuf::from("/nonexistent/dsbox");
    let spawned = z.spawn(&bad, SpawnFds::default()).await.unwrap();
    let pid = spawned.pid;
    match connect(spawned).await {
        Err(KernelError::JoinFailed {
            step,
            errno,
            detail,
        }) => {
            assert_eq!(step, "chdir");
            assert_eq!(errno, libc::ENOENT);
            assert_eq!(detail, "/nonexistent/dsbox");
        }
        other => panic!("expected a join failure, got {other:?}"),
    }
    assert_eq!(exit_of(&mut z, pid).await, (Some(111), None));

    let mut bad = plan(0);
    bad.seccomp_bpf = Some("AAAA".into()); // 3 bytes: not a BPF program
    let spawned = z.spawn(&bad, SpawnFds::default()).await.unwrap();
    let err = connect(spawned).await.unwrap_err();
    assert!(err.to_string().contains("step `seccomp`"), "{err}");
    z.shutdown().await.unwrap();
}

fn compile_seccomp(json: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, json).unwrap();
    dsbox_runtime::seccomp::compile_file(&path)
        .expect("compile the test policy")
        .to_base64()
}

#[tokio::test]
async fn a_joined_child_drops_privileges_and_applies_seccomp() {
    require_root!();
    let mut z = zygote(&[]).await;
    let mut p = plan(1000);
    p.drop_capabilities = true;
    p.no_new_privs = true;
    p.rlimits = vec![(7 /* RLIMIT_NOFILE */, 256, 512)];
    p.seccomp_bpf = Some(compile_seccomp(
        r#"{"test": {"default_action": "allow", "filter_action": {"errno": 1},
            "filter": [{"syscall": "getppid"}]}}"#,
    ));
    let mut k = connect(z.spawn(&p, SpawnFds::default()).await.unwrap())
        .await
        .unwrap();
    let status = cell(
        &mut k,
        "import os, resource\nst = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n\
         print({k: st[k].split()[0] for k in ('Uid', 'Gid', 'CapEff', 'CapPrm', 'CapInh', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp')})\n\
         print(os.getgroups(), resource.getrlimit(resource.RLIMIT_NOFILE), os.getppid())",
    )
    .await;
    assert_eq!(
        status.stdout(),
        "{'Uid': '1000', 'Gid': '1000', 'CapEff': '0000000000000000', 'CapPrm': '0000000000000000', \
         'CapInh': '0000000000000000', 'CapBnd': '0000000000000000', 'CapAmb': '0000000000000000', \
         'NoNewPrivs': '1', 'Seccomp': '2'}\n[] (256, 512) -1\n",
        "{status:?}"
    );
    let cell2 = cell(&mut k, "!id -u\nprint('still serving')").await;
    assert_eq!(cell2.stdout(), "1000\nstill serving\n", "{cell2:?}");
    z.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_joined_child_serves_cells_under_the_runtime_default_seccomp_policy() {
    require_root!();
    let mut z = zygote(&["numpy"]).await;
    let mut p = plan(1000);
    p.drop_capabilities = true;
    p.no_new_privs = true;
    p.seccomp_bpf = Some(dsbox_runtime::seccomp::default_program().to_base64());
    let mut k = connect(z.spawn(&p, SpawnFds::default()).await.unwrap())
        .await
        .unwrap();
    let c = cell(
        &mut k,
        "import numpy as np, subprocess, threading\nprint(np.arange(4).sum())\n!echo shell\nt = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n1 + 1",
    )
    .await;
    assert_eq!(c.stdout(), "6\nshell\nthread\n", "{c:?}");
    assert_eq!(c.result_text(), Some("2"));
    let c = cell(
        &mut k,
        "import ctypes\nctypes.CDLL(None).ptrace(0, 0, 0, 0)",
    )
    .await;
    assert_eq!(c.result_text(), Some("-1"), "ptrace is blocked: {c:?}");
    z.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_joined_child_is_confined_by_landlock() {
    require_root!();
    let abi = kernel_abi();
    if abi == 0 {
        eprintln!("skipped: this kernel has no landlock");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let outside =
        std::env::temp_dir().join(format!("dsbox-landlock-outside-{}", std::process::id()));
    let mut z = zygote(&[]).await;
    let mut p = plan(0);
    p.landlock = Some(LandlockPlan {
        abi,
        handled_access_fs: fs_access_for_abi(abi),
        handled_access_net: 0,
        scoped: 0,
        rules: vec![
            LandlockRule {
                path: "/".into(),
                access: EXECUTE | READ_FILE | READ_DIR,
            },
            LandlockRule {
                path: scratch.path().to_path_buf(),
                access: fs_access_for_abi(abi),
            },
        ],
    });
    let mut k = connect(z.spawn(&p, SpawnFds::default()).await.unwrap())
        .await
        .unwrap();
    let code = format!(
        "open({inside:?}, 'w').write('ok')\ntry:\n    open({outside:?}, 'w')\nexcept PermissionError as e:\n    print('denied', e.errno)\nopen({inside:?}).read()",
        inside = scratch.path().join("inside").display().to_string(),
        outside = outside.display().to_string(),
    );
    let c = cell(&mut k, &code).await;
    assert_eq!(c.stdout(), "denied 13\n", "{c:?}");
    assert_eq!(c.result_text(), Some("'ok'"));
    assert!(!outside.exists());
    z.shutdown().await.unwrap();
}

/// A stand-in for a shell sandbox: new pid/mount/net/uts/ipc namespaces around `sleep`.
struct FakeShell {
    unshare: std::process::Child,
    pidfd: OwnedFd,
}

impl FakeShell {
    /// `plan` set to enter the shell's mount, net, uts and ipc namespaces, and the fds.
    fn join(&self, mut plan: JoinPlan) -> (JoinPlan, SpawnFds<'_>) {
        plan.namespaces =
            (libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC)
                as u64;
        let fds = SpawnFds {
            pidfd: Some(self.pidfd.as_fd()),
            cgroup_procs: vec![],
        };
        (plan, fds)
    }

    fn start() -> FakeShell {
        let unshare = std::process::Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--net",
                "--uts",
                "--ipc",
                "sh",
                "-c",
            ])
            .arg("hostname dsbox-fake-shell && exec sleep 120")
            .spawn()
            .expect("run unshare(1)");
        // The shell's init is unshare's child; wait until it runs sleep.
        let children = format!("/proc/{}/task/{}/children", unshare.id(), unshare.id());
        let init = (0..500)
            .find_map(|_| {
                let pid = std::fs::read_to_string(&children).ok().and_then(|s| {
                    s.split_whitespace()
                        .next()
                        .and_then(|p| p.parse::<i32>().ok())
                });
                match pid {
                    Some(pid)
                        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
                            .is_ok_and(|c| c.trim() == "sleep") =>
                    {
                        Some(pid)
                    }
                    _ => {
                        std::thread::sleep(Duration::from_millis(10));
                        None
                    }
                }
            })
            .expect("the fake shell's init started");
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, init, 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a new, open file descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        FakeShell { unshare, pidfd }
    }
}

impl Drop for FakeShell {
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

#[tokio::test]
async fn a_joined_child_enters_the_shell_namespaces() {
    require_root!();
    let shell = FakeShell::start();
    let mut z = zygote(&[]).await;
    let (p, fds) = shell.join(plan(0));
    let mut k = connect(z.spawn(&p, fds).await.unwrap()).await.unwrap();
    let c = cell(
        &mut k,
        "import os, socket\nnets = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]\n(os.getpid() < 10, socket.gethostname(), nets, len([d for d in os.listdir('/proc') if d.isdigit()]))",
    )
    .await;
    assert_eq!(
        c.result_text(),
        Some("(True, 'dsbox-fake-shell', ['lo'], 2)"),
        "a small pid in the shell's pid namespace, its hostname, only loopback, and 2 processes (init and the kernel): {c:?}"
    );
    // The zygote is back in its own pid namespace: the next child is an ordinary one.
    let mut k2 = connect(z.spawn(&plan(0), SpawnFds::default()).await.unwrap())
        .await
        .unwrap();
    let c = cell(&mut k2, "import os\nos.getpid() > 2").await;
    assert_eq!(c.result_text(), Some("True"));
    drop(shell);
    z.shutdown().await.unwrap();
}

/// The child's uid as its parent's /proc shows it (the real uid, first field).
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn a_child_asked_for_early_joins_nothing_until_its_go_byte() {
    use tokio::io::AsyncWriteExt;
    require_root!();
    let mut z = zygote(&[]).await;
    let mut spawned = z
        .spawn_awaiting_go(&plan(65534), SpawnFds::default())
        .await
        .unwrap();
    let pid = spawned.pid;
    // No join step runs before the go byte: after a while the child is still root and
    // has said nothing on its channel.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(uid_of(pid), Some(0), "still the zygote's uid before go");
    let mut buf = [0u8; 16];
    match spawned.channel.try_read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the child spoke before its go byte: {other:?}"),
    }
    let go_at = dsbox_runtime::process::message::monotonic_ns();
    spawned
        .channel
        .write_all(&[dsbox_kernel::zygote::GO])
        .await
        .unwrap();
    let mut k = connect(spawned).await.unwrap();
    let timing = k.info().timing.clone().expect("the hello's timestamps");
    let at = |name: &str| {
        timing
            .steps
            .iter()
            .find(|(s, _)| s == name)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("no step {name}: {timing:?}"))
    };
    assert!(
        go_at <= at("go") && at("go") <= at("cgroup") && at("cgroup") <= at("seccomp"),
        "go, then every join step: {timing:?}"
    );
    let c = cell(&mut k, "import os\nos.getuid()").await;
    assert_eq!(c.result_text(), Some("65534"));
    k.shutdown().await.unwrap();
    assert_eq!(exit_of(&mut z, pid).await, (Some(0), None));
    z.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_child_whose_go_never_comes_exits_without_joining_and_is_reaped() {
    use tokio::io::AsyncWriteExt;
    require_root!();
    let mut z = zygote(&[]).await;
    // The runtime gave up (its shell failed): the channel closes before go.
    let spawned = z
        .spawn_awaiting_go(&plan(0), SpawnFds::default())
        .await
        .unwrap();
    let pid = spawned.pid;
    drop(spawned);
    assert_eq!(
        exit_of(&mut z, pid).await,
        (Some(dsbox_kernel::zygote::NO_GO_EXIT), None)
    );
    // Another byte than go is not a go-ahead either.
    let mut spawned = z
        .spawn_awaiting_go(&plan(0), SpawnFds::default())
        .await
        .unwrap();
    let pid = spawned.pid;
    spawned.channel.write_all(b"x").await.unwrap();
    assert_eq!(
        exit_of(&mut z, pid).await,
        (Some(dsbox_kernel::zygote::NO_GO_EXIT), None)
    );
    drop(spawned);
    assert_eq!(z.ping().await.unwrap(), 0, "both children reaped");
    z.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_child_asked_for_early_dies_with_a_shell_that_never_becomes_ready() {
    require_root!();
    let shell = FakeShell::start();
    let mut z = zygote(&[]).await;
    let (p, fds) = shell.join(plan(0));
    // Forked into the shell's pid namespace, waiting for go; the channel stays open.
    let spawned = z.spawn_awaiting_go(&p, fds).await.unwrap();
    let pid = spawned.pid;
    // The shell's init dies (as when the runtime kills a shell whose start failed):
    // the kernel kills everything in its pid namespace, the waiting child too, and the
    // zygote reaps it.
    // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            shell.pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    assert_eq!(rc, 0, "kill the shell's init");
    assert_eq!(exit_of(&mut z, pid).await, (None, Some(libc::SIGKILL)));
    assert_eq!(z.ping().await.unwrap(), 0, "the child was reaped");
    drop(spawned);
    drop(shell);
    z.shutdown().await.unwrap();
}

#[tokio::test]
async fn children_draw_different_numpy_numbers_and_can_still_seed_numpy() {
    require_root!();
    let mut z = zygote(&["numpy"]).await;
    let mut a = connect(z.spawn(&plan(0), SpawnFds::default()).await.unwrap())
        .await
        .unwrap();
    let mut b = connect(z.spawn(&plan(0), SpawnFds::default()).await.unwrap())
        .await
        .unwrap();
    let draw = "import numpy\n[int(x) for x in numpy.random.randint(0, 2**31, size=4)]";
    let (ra, rb) = (cell(&mut a, draw).await, cell(&mut b, draw).await);
    assert!(ra.result_text().is_some(), "{ra:?}");
    assert_ne!(
        ra.result_text(),
        rb.result_text(),
        "numpy's global generator is reseeded in every child"
    );
    let seeded = "numpy.random.seed(42)\n[int(x) for x in numpy.random.randint(0, 2**31, size=4)]";
    let (sa, sb) = (cell(&mut a, seeded).await, cell(&mut b, seeded).await);
    assert!(sa.result_text().is_some(), "{sa:?}");
    assert_eq!(sa.result_text(), sb.result_text(), "seed(42) still works");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    z.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_zygote_forks_as_a_single_thread_with_pyarrow_preloaded() {
    require_root!();
    // pyarrow's bundled jemalloc starts a background thread unless told not to; a zygote
    // holding it would fork as a threaded process.
    let z = zygote(&["pandas", "pyarrow"]).await;
    let pid = z.pid().expect("the zygote's pid");
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the zygote's tasks")
        .count();
    assert_eq!(
        threads, 1,
        "the zygote runs {threads} threads after preloading"
    );
    z.shutdown().await.unwrap();
}

#[tokio::test]
async fn kernels_get_pythons_own_fork_handling_and_unlocked_logging() {
    require_root!();
    let mut z = zygote(&["pandas"]).await;
    let mut k = connect(z.spawn(&plan(0), SpawnFds::default()).await.unwrap())
        .await
        .unwrap();
    // The zygote skips threading's and logging's at-fork repairs for its own children;
    // a fork made by user code in a kernel must get them: in the grandchild only the
    // forking thread exists.
    let fork_with_a_thread = "import os, threading\n\
        ev = threading.Event()\n\
        t = threading.Thread(target=ev.wait); t.start()\n\
        r, w = os.pipe()\n\
        pid = os.fork()\n\
        if pid == 0:\n    os.write(w, str(threading.active_count()).encode()); os._exit(0)\n\
        os.waitpid(pid, 0); ev.set(); t.join()\n\
        (threading.active_count(), int(os.read(r, 16)))";
    let r = cell(&mut k, fork_with_a_thread).await;
    assert_eq!(r.result_text(), Some("(1, 1)"), "{r:?}");
    // logging's module lock, held by the zygote across the fork, is free in the kernel:
    // another thread can take it.
    let logging_from_a_thread = "import logging, threading\n\
        done = []\n\
        t = threading.Thread(target=lambda: (logging.getLogger('dsbox-test').addHandler(logging.NullHandler()), done.append(1)), daemon=True)\n\
        t.start(); t.join(5)\n\
        done";
    let r = cell(&mut k, logging_from_a_thread).await;
    assert_eq!(r.result_text(), Some("[1]"), "{r:?}");
    k.shutdown().await.unwrap();
    z.shutdown().await.unwrap();
}
