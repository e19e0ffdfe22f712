//! The cgroup v2 backend on a real pure-v2 kernel: detection, where the leaves go, the
//! limit files, OOM from memory.events, the pids limit, cgroup.kill, cleanup, gc, and the
//! layouts a runtime meets (alone in its cgroup, sharing it, a delegated parent, the root).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dsbox_runtime::cgroups::{CgroupError, CgroupLimits, CgroupSystem, SandboxCgroup};
use dsbox_runtime::spec::SandboxSpec;
use dsbox_runtime::state::{STATE_DIR, StateRecord};
use dsbox_runtime::{KillReason, Sandbox, SpawnOptions, Stdio};
use dsbox_tests::{PROBE_INSIDE, parse_last_json};

use crate::fixture::{
    alive, cgroup_children, cgroup_of, code, keyed, matrix, own_cgroup, probe_spec, read, read_all,
    remove_tree, spawn_captured, stderr, stdout, wait_until,
};

const MIB: u64 = 1 << 20;

#[test]
fn the_v2_backend_is_picked_and_sandboxes_go_below_the_runtime_own_cgroup() {
    let Some(m) = matrix() else { return };
    let sys = dsbox_runtime::sandbox::cgroup_system();
    let CgroupSystem::V2 {
        hierarchy,
        controllers,
    } = sys
    else {
        panic!("a pure v2 host must use the v2 backend, got {sys:?}");
    };
    assert_eq!(sys.version(), "v2");
    assert_eq!(hierarchy.mount, m.mount);
    assert_eq!(hierarchy.own, m.own, "the runtime's own cgroup");
    for c in ["memory", "pids", "cpu"] {
        assert!(controllers.iter().any(|x| x == c), "{c}: {controllers:?}");
    }
    let parents = sys.sandbox_parents(None);
    assert_eq!(parents, vec![m.sandbox_parent_dir()]);
    assert_ne!(
        parents[0],
        m.mount.join("dsbox"),
        "sandboxes must not go to the hierarchy root"
    );
    // Detection from the real files agrees with the cached one (own cgroup aside: the
    // runtime may have moved itself into its leaf by now).
    let fresh = CgroupSystem::detect();
    assert_eq!(fresh.version(), "v2", "{fresh:?}");
}

#[test]
fn limits_are_written_to_the_v2_leaf_below_the_runtime_own_cgroup() {
    let Some(m) = matrix() else { return };
    let spec = SandboxSpec::builder()
        .with_command(["/bin/sleep", "60"])
        .with_memory(64 * MIB)
        .with_pids(32)
        .with_cpus(0.5)
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
    let leaf = m.sandbox_parent_dir().join(sb.id());
    assert_eq!(sb.cgroup_paths(), vec![leaf.clone()]);
    assert_eq!(read(&leaf, "memory.max"), (64 * MIB).to_string());
    if leaf.join("memory.swap.max").exists() {
        assert_eq!(read(&leaf, "memory.swap.max"), "0");
    }
    assert_eq!(read(&leaf, "pids.max"), "32");
    assert_eq!(read(&leaf, "cpu.max"), "50000 100000");
    // Controllers were enabled on the way down, and the runtime's own cgroup holds no
    // process any more: v2 allows none in a cgroup that delegates controllers.
    let own_dir = m.dir(&m.own);
    for dir in [&own_dir, &own_dir.join("dsbox")] {
        let enabled = read(dir, "cgroup.subtree_control");
        for c in ["memory", "pids", "cpu"] {
            assert!(
                enabled.split_whitespace().any(|x| x == c),
                "{c} not enabled in {}: {enabled}",
                dir.display()
            );
        }
    }
    assert_eq!(read(&own_dir, "cgroup.procs"), "");
    assert_eq!(own_cgroup(), m.own.join("dsbox-runtime"));
    // Init lives in the leaf.
    let init_cg = cgroup_of(&sb.pid().to_string()).unwrap();
    assert_eq!(init_cg, m.own.join("dsbox").join(sb.id()));
    assert_eq!(read(&leaf, "cgroup.type"), "domain");
    let stats = sb.cgroup().unwrap();
    assert!(stats.memory_current.is_some_and(|c| c > 0), "{stats:?}");
    if m.required {
        assert!(
            !m.mount.join("dsbox").join(sb.id()).exists(),
            "a sandbox leaf appeared at the hierarchy root"
        );
    }
    sb.kill().unwrap();
    assert_eq!(sb.wait().unwrap().code(), 137);
    sb.destroy().unwrap();
    assert!(!leaf.exists(), "the leaf was not removed");
}

#[test]
fn the_sandbox_sees_its_own_leaf_as_the_cgroup_root_and_the_cli_flags_reach_the_files() {
    let Some(m) = matrix() else { return };
    // Through the CLI: bind the command's own cgroup directory into the sandbox (read
    // only) so the payload reads the limit files the runtime wrote for it.
    let cg = m.new_cgroup("cli");
    let bind = format!("{}:/cg", m.dir(&cg).display());
    let script = "cat /proc/self/cgroup; for f in memory.max memory.swap.max pids.max cpu.max; do \
                  echo \"$f=$(cat /cg/dsbox/*/$f)\"; done";
    let out = m
        .dsbox_in(
            &cg,
            &[
                "run", "--mem", "48M", "--pids", "20", "--cpus", "0.25", "--ro", &bind, "--",
                "/bin/sh", "-c", script,
            ],
        )
        .output()
        .unwrap();
    m.finish_cli_cgroup(&cg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    // The cgroup namespace is rooted at the sandbox's leaf.
    assert_eq!(text.lines().next(), Some("0::/"), "{text}");
    assert!(text.contains(&format!("memory.max={}", 48 * MIB)), "{text}");
    assert!(text.contains("pids.max=20"), "{text}");
    assert!(text.contains("cpu.max=25000 100000"), "{text}");
    assert!(
        text.contains("memory.swap.max=0") || text.contains("memory.swap.max=\n"),
        "{text}"
    );
}

#[test]
fn the_cpu_quota_throttles_a_busy_loop() {
    let Some(_m) = matrix() else { return };
    let mut spec = probe_spec(&["spin"]);
    spec.limits.cpus = Some(0.2);
    spec.limits.timeout = Some(Duration::from_secs(2));
    let t = Instant::now();
    let (mut sb, _out) = spawn_captured(&spec);
    let leaf = sb.cgroup_paths().remove(0);
    let report = sb.wait().unwrap();
    let wall = t.elapsed();
    let usage = keyed(&leaf, "cpu.stat", "usage_usec").unwrap();
    let throttled = keyed(&leaf, "cpu.stat", "nr_throttled").unwrap();
    sb.destroy().unwrap();
    assert!(
        matches!(report.killed, Some(KillReason::Timeout { .. })),
        "{report:?}"
    );
    assert!(throttled >= 3, "cpu.max never throttled: {throttled}");
    // 0.2 CPU over the run's wall time, with room for the start and the kill.
    let allowed = wall.as_micros() as f64 * 0.2 * 1.5 + 100_000.0;
    assert!(
        (usage as f64) < allowed,
        "a 0.2 CPU quota let the loop use {usage} µs in {wall:?}"
    );
}

#[test]
fn a_memory_bomb_is_oom_killed_and_reported_from_memory_events() {
    let Some(m) = matrix() else { return };
    let mut spec = probe_spec(&["membomb"]);
    spec.limits.memory = Some(64 * MIB);
    let (mut sb, _out) = spawn_captured(&spec);
    let leaf = sb.cgroup_paths().remove(0);
    let report = sb.wait().unwrap();
    // The kernel's own counters, read independently of the runtime.
    let oom_kill = keyed(&leaf, "memory.events", "oom_kill").unwrap();
    let max_events = keyed(&leaf, "memory.events", "max").unwrap();
    let peak: u64 = read(&leaf, "memory.peak").parse().unwrap();
    sb.destroy().unwrap();
    assert_eq!(report.code(), 137, "{report:?}");
    assert_eq!(
        report.killed,
        Some(KillReason::OutOfMemory {
            limit: Some(64 * MIB)
        }),
        "{report:?}"
    );
    let stats = report.cgroup.unwrap();
    assert!(oom_kill >= 1 && stats.oom_kills == oom_kill, "{stats:?}");
    assert!(max_events >= 1);
    assert!(
        peak > 32 * MIB && peak <= 64 * MIB,
        "memory.peak {peak} should approach the 64 MiB limit without passing it"
    );
    assert_eq!(stats.memory_peak, Some(peak));
    assert!(!leaf.exists());

    // The CLI says so in one line.
    let mount = dsbox_tests::probe_mount();
    let mut args = vec!["run"];
    args.extend(mount.iter().map(String::as_str));
    args.extend(["--mem", "64M", "--", PROBE_INSIDE, "membomb"]);
    let out = m.dsbox(&args);
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dsbox: killed: out of memory (limit 64 MiB)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_the_host_stays_responsive() {
    let Some(m) = matrix() else { return };
    let mut spec = probe_spec(&["forkbomb", "4000"]);
    spec.limits.pids = Some(32);
    spec.limits.timeout = Some(Duration::from_secs(60));
    let (mut sb, out) = spawn_captured(&spec);
    let leaf = sb.cgroup_paths().remove(0);
    // While the bomb holds its children, the host still starts processes (emulated VMs
    // are slow: the bound is loose, the point is that it is not starved).
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    assert!(
        std::process::Command::new("/bin/true")
            .status()
            .unwrap()
            .success()
    );
    let host_start = t.elapsed();
    let current_during: u64 = read(&leaf, "pids.current").parse().unwrap_or(0);
    let report = sb.wait().unwrap();
    let events = keyed(&leaf, "pids.events", "max").unwrap();
    sb.destroy().unwrap();
    let j = parse_last_json(read_all(out).as_bytes());
    assert_eq!(report.code(), 0, "{report:?} {j}");
    assert_eq!(j["errno"], "EAGAIN", "{j}");
    let forks = j["forks"].as_u64().unwrap();
    assert!(
        forks < 32,
        "the pids limit must stop the bomb: {forks} forks"
    );
    assert!(forks >= 16, "the bomb should get near the limit: {forks}");
    assert!(current_during <= 32, "pids.current {current_during}");
    assert!(events >= 1, "pids.events max");
    assert!(report.cgroup.unwrap().pids_max_events >= 1);
    assert!(
        host_start < Duration::from_secs(5),
        "a host command took {host_start:?}"
    );

    let mount = dsbox_tests::probe_mount();
    let mut args = vec!["run"];
    args.extend(mount.iter().map(String::as_str));
    args.extend(["--pids", "32", "--", PROBE_INSIDE, "forkbomb", "1000"]);
    let out = m.dsbox(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the pids limit (32) was reached"),
        "{}",
        stderr(&out)
    );
}

/// Pids printed one per line by a payload, once `n` of them arrived.
fn read_pids(fd: std::os::fd::OwnedFd, n: usize) -> Vec<i32> {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(std::fs::File::from(fd)).lines();
    let mut pids = Vec::new();
    while pids.len() < n {
        let line = lines.next().expect("the payload printed its pids").unwrap();
        pids.push(line.trim().parse().unwrap());
    }
    pids
}

#[test]
fn cgroup_kill_ends_every_process_of_a_sandbox_without_a_pid_namespace() {
    let Some(m) = matrix() else { return };
    // No pid namespace (the zygote's role): killing the payload does not take its
    // children along; only cgroup.kill does.
    let mut spec = SandboxSpec::builder()
        .with_command([
            "/bin/sh",
            "-c",
            "for i in 1 2 3; do sleep 600 & echo $!; done; echo $$; wait",
        ])
        .with_memory(64 * MIB)
        .with_pids(16)
        .build()
        .unwrap();
    spec.namespaces.pid = false;
    let (mut sb, out) = spawn_captured(&spec);
    let pids = read_pids(out, 4);
    let leaf = sb.cgroup_paths().remove(0);
    assert!(
        leaf.join("cgroup.kill").exists(),
        "Linux 5.14+ has cgroup.kill"
    );
    let mut members = dsbox_runtime::cgroups::read_procs(&leaf);
    members.sort_unstable();
    let mut expected = pids.clone();
    expected.sort_unstable();
    assert_eq!(
        members, expected,
        "the payload and its children are the members"
    );
    let state = Path::new(STATE_DIR).join(format!("{}.json", sb.id()));
    assert!(state.exists());
    sb.kill().unwrap();
    assert_eq!(sb.wait().unwrap().code(), 137);
    sb.destroy().unwrap();
    for pid in &pids {
        assert!(
            wait_until(Duration::from_secs(5), || !alive(*pid)),
            "process {pid} survived the kill"
        );
    }
    assert!(!leaf.exists(), "the leaf was left behind");
    assert!(!state.exists(), "the state record was left behind");
    let left: Vec<PathBuf> = cgroup_children(&m.sandbox_parent_dir())
        .into_iter()
        .filter(|p| p.ends_with(leaf.file_name().unwrap()))
        .collect();
    assert!(left.is_empty());
}

/// `sh -c 'echo $$ > <dir>/cgroup.procs; exec sleep 600'`: a process placed in `dir`.
fn sleeper_in(dir: &Path) -> std::process::Child {
    let child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && exec sleep 600"#)
        .arg("sh")
        .arg(dir)
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    assert!(
        wait_until(Duration::from_secs(10), || {
            dsbox_runtime::cgroups::read_procs(dir).contains(&pid)
        }),
        "the sleeper did not enter {}",
        dir.display()
    );
    child
}

#[test]
fn the_v2_backend_creates_limits_kills_and_removes_a_cgroup_by_itself() {
    let Some(m) = matrix() else { return };
    let sys = dsbox_runtime::sandbox::cgroup_system();
    let parent = m.new_cgroup("direct");
    let limits = CgroupLimits {
        memory: Some(32 * MIB),
        pids: Some(8),
        cpus: Some(1.5),
        freezer: true,
    };
    let cg = sys
        .create("matrix-direct", Some(&parent), &limits)
        .unwrap()
        .unwrap();
    let SandboxCgroup::V2(v2) = &cg else {
        panic!("expected a v2 cgroup, got {cg:?}")
    };
    let leaf = m.dir(&parent).join("dsbox/matrix-direct");
    assert_eq!(v2.path(), leaf);
    assert_eq!(read(&leaf, "memory.max"), (32 * MIB).to_string());
    assert_eq!(read(&leaf, "pids.max"), "8");
    assert_eq!(read(&leaf, "cpu.max"), "150000 100000");
    // No freezer in v2: cgroup.freeze exists but kill-all is cgroup.kill.
    assert_eq!(read(&leaf, "cgroup.freeze"), "0");
    // open_procs hands out fds a child joins through; two sleepers join by path here.
    assert_eq!(cg.open_procs().unwrap().len(), 1);
    let mut a = sleeper_in(&leaf);
    let mut b = sleeper_in(&leaf);
    assert_eq!(cg.stats().oom_kills, 0);
    // rmdir refuses while members live: remove() reports it as a clear error.
    let busy = cg.remove().unwrap_err();
    assert!(matches!(busy, CgroupError::Busy { .. }), "{busy}");
    assert!(busy.to_string().contains("dsbox gc"), "{busy}");
    cg.kill_all().unwrap();
    for child in [&mut a, &mut b] {
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
    cg.remove().unwrap();
    assert!(!leaf.exists());
    remove_tree(&m.dir(&parent));
}

#[test]
fn a_runtime_sharing_its_cgroup_gets_one_clear_line_and_cgroup_parent_fixes_it() {
    let Some(m) = matrix() else { return };
    // A login shell's cgroup: another process lives there, so v2's "no internal
    // processes" rule forbids enabling controllers in it.
    let shared = m.new_cgroup("shared");
    let mut other = sleeper_in(&m.dir(&shared));
    let out = m
        .dsbox_in(&shared, &["run", "--mem", "64M", "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("still holds processes other than dsbox") && err.contains("--cgroup-parent"),
        "{err}"
    );
    // The library says the same with the path as data.
    let sys = dsbox_runtime::sandbox::cgroup_system();
    let e = sys
        .create("matrix-busy", Some(&shared), &CgroupLimits::default())
        .unwrap_err();
    assert!(
        matches!(&e, CgroupError::InternalProcesses { path } if *path == m.dir(&shared)),
        "{e:?}"
    );
    // A delegated, empty parent works; the sandbox goes below it.
    let delegated = m.new_cgroup("delegated");
    let parent_arg = delegated.display().to_string();
    let bind = format!("{}:/cg", m.dir(&delegated).display());
    let out = m
        .dsbox_in(
            &shared,
            &[
                "run",
                "--cgroup-parent",
                &parent_arg,
                "--mem",
                "40M",
                "--ro",
                &bind,
                "--",
                "/bin/sh",
                "-c",
                "cat /cg/dsbox/*/memory.max",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), (40 * MIB).to_string());
    assert!(cgroup_children(&m.dir(&delegated).join("dsbox")).is_empty());
    other.kill().unwrap();
    other.wait().unwrap();
    remove_tree(&m.dir(&shared));
    remove_tree(&m.dir(&delegated));
}

#[test]
fn a_runtime_in_the_root_cgroup_works_and_leaves_nothing() {
    let Some(m) = matrix() else { return };
    // A container with its own cgroup namespace runs dsbox at "/": only on a machine of
    // our own (the VM), since this creates dsbox's directories at the hierarchy root.
    if !m.required {
        return;
    }
    let out = m
        .dsbox_in(
            Path::new("/"),
            &[
                "run",
                "--mem",
                "64M",
                "--",
                "/bin/sh",
                "-c",
                "cat /proc/self/cgroup",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "0::/");
    let base = m.mount.join("dsbox");
    let left: Vec<PathBuf> = cgroup_children(&base);
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn gc_kills_and_removes_what_dead_runtimes_left_behind() {
    let Some(m) = matrix() else { return };
    // 1. A record whose runtime is gone, naming a cgroup with a live process: gc must
    // kill it through cgroup.kill and remove the cgroup and the record.
    let sys = dsbox_runtime::sandbox::cgroup_system();
    let parent = m.new_cgroup("gc");
    let cg = sys
        .create("matrix-gc", Some(&parent), &CgroupLimits::default())
        .unwrap()
        .unwrap();
    let leaf = cg.paths().remove(0);
    let mut orphan = sleeper_in(&leaf);
    let mut dead = std::process::Command::new("/bin/true").spawn().unwrap();
    let dead_pid = dead.id() as i32;
    dead.wait().unwrap();
    let record = StateRecord {
        id: "matrix-gc".into(),
        runtime_pid: dead_pid,
        runtime_start_time: 1,
        init_pid: orphan.id() as i32,
        cgroups: vec![leaf.clone()],
    };
    let record_path = record.write(Path::new(STATE_DIR)).unwrap();
    let out = m.dsbox(&["gc", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // This gc or the startup sweep of a concurrent `dsbox run` did the work.
    let status = orphan.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(!leaf.exists(), "gc left {}", leaf.display());
    assert!(!record_path.exists());
    remove_tree(&m.dir(&parent));

    // 2. `dsbox run` killed without warning: its sandbox dies with it (pdeathsig) and
    // gc removes the cgroup and the record.
    let (mut cmd, cli_cg) = m.dsbox_command(&["run", "--", "/bin/sleep", "600"]);
    let mut child = cmd.spawn().unwrap();
    let prefix = format!("{:x}-", child.id());
    let mut found = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            found = std::fs::read_dir(STATE_DIR)
                .into_iter()
                .flatten()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path());
            found.is_some()
        }),
        "no state record appeared"
    );
    let record_path = found.unwrap();
    let rec: StateRecord = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        record_path.exists(),
        "the killed runtime could not clean up"
    );
    let out = m.dsbox(&["gc", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!record_path.exists());
    for cg in &rec.cgroups {
        assert!(
            wait_until(Duration::from_secs(5), || !cg.exists()),
            "{} survived gc",
            cg.display()
        );
    }
    assert!(wait_until(Duration::from_secs(5), || !alive(rec.init_pid)));
    remove_tree(&m.dir(&cli_cg));
}

#[test]
fn many_sandboxes_leave_no_cgroup_process_or_state_behind() {
    let Some(m) = matrix() else { return };
    let mut ids = Vec::new();
    let mut pids = Vec::new();
    let mut leaves = Vec::new();
    for i in 0..40 {
        let mut spec = SandboxSpec::builder()
            .with_command(if i % 2 == 0 {
                vec!["/bin/true"]
            } else {
                vec!["/bin/sleep", "60"]
            })
            .with_memory(64 * MIB)
            .with_pids(16)
            .build()
            .unwrap();
        if i % 4 == 3 {
            spec.process = None; // a shell, destroyed without ever being joined
        }
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
        leaves.extend(sb.cgroup_paths());
        match i % 4 {
            0 | 2 => assert_eq!(sb.wait().unwrap().code(), 0),
            1 => {
                sb.kill().unwrap();
                assert_eq!(sb.wait().unwrap().code(), 137);
            }
            _ => {}
        }
        sb.destroy().unwrap();
    }
    assert_eq!(leaves.len(), 40, "every sandbox had a v2 leaf");
    for leaf in &leaves {
        assert!(!leaf.exists(), "{} was left behind", leaf.display());
    }
    for pid in &pids {
        assert!(
            wait_until(Duration::from_secs(5), || !alive(*pid)),
            "process {pid} was left behind"
        );
    }
    for id in &ids {
        let state = Path::new(STATE_DIR).join(format!("{id}.json"));
        assert!(!state.exists(), "{} was left behind", state.display());
    }
    let left: Vec<PathBuf> = cgroup_children(&m.sandbox_parent_dir())
        .into_iter()
        .filter(|p| ids.iter().any(|id| p.ends_with(id)))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
