//! `dsbox exec` and `dsbox shell` as a user runs them (the binary, a rootfs from the test
//! store, real sandboxes), as root.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::{is_root, test_rootfs};

fn dsbox(args: &[&str], stdin: &str, cwd: &std::path::Path) -> Output {
    let rootfs = test_rootfs();
    let store = rootfs
        .object_dir
        .parent()
        .and_then(|objects| objects.parent())
        .expect("the store of the test rootfs")
        .to_path_buf();
    let mut child = Command::new(dsbox_tests::dsbox_bin())
        .args(args)
        .args(["--store", store.to_str().unwrap(), "--no-build"])
        .current_dir(cwd)
        .env("DSBOX_PROFILES", "/nonexistent-dsbox-profiles")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dsbox");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: sandboxed kernels need root");
            return;
        }
    };
}

#[test]
fn dsbox_exec_prints_outputs_saves_figures_and_exits_nonzero_on_an_error() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.csv");
    std::fs::write(&data, "a,b\n1,2\n3,4\n").unwrap();
    let code = "import pandas as pd, sys, os\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\nos.write(1, b'fd write\\n')\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\nint(pd.read_csv('/data/train.csv').b.sum())";
    let out = dsbox(
        &[
            "exec",
            "--rootfs",
            "analysis",
            "--data",
            data.to_str().unwrap(),
            "--images",
            dir.path().join("figs").to_str().unwrap(),
            code,
        ],
        "",
        dir.path(),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let figure = dir.path().join("figs/image-1.png");
    assert_eq!(
        stdout,
        format!(
            "to stdout\nfd write\n[<Figure size 640x480 with 1 Axes> saved to {}]\n6\n",
            figure.display()
        ),
        "{stderr}"
    );
    assert!(stderr.contains("to stderr"), "{stderr}");
    assert_eq!(&std::fs::read(&figure).unwrap()[..4], b"\x89PNG");

    // Code from stdin; an error item: traceback on stderr, exit code 1.
    let out = dsbox(
        &["exec", "--rootfs", "analysis", "-"],
        "x = 1\n1 / 0\n",
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("ZeroDivisionError: division by zero"),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "no ANSI codes: {stderr}");

    // A timeout: interrupted, reported, exit code 1.
    let out = dsbox(
        &[
            "exec",
            "--rootfs",
            "analysis",
            "--timeout",
            "1s",
            "import time; time.sleep(30)",
        ],
        "",
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("TimeoutError"),
        "{}",
        text(&out.stderr)
    );

    // JSON.
    let out = dsbox(
        &["exec", "--rootfs", "analysis", "--json", "6 * 7"],
        "",
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["result"]["items"][0]["data"]["text/plain"], "42", "{j}");
    assert_eq!(j["timings"]["pool_hit"], false);

    // Bad input: one line, exit 125.
    for (args, expect) in [
        (
            vec![
                "exec",
                "--rootfs",
                "analysis",
                "--data",
                "/nonexistent/x.csv",
                "1",
            ],
            "cannot open",
        ),
        (
            vec!["exec", "--rootfs", "analysis", "--timeout", "soon", "1"],
            "invalid duration",
        ),
        (
            vec!["exec", "--rootfs", "no-such-rootfs", "1"],
            "no-such-rootfs",
        ),
    ] {
        let out = dsbox(&args, "", dir.path());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn dsbox_shell_keeps_state_between_inputs_and_continues_blocks() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let input = "x = 40\nfor i in range(2):\n    x += i\n\nx + 1\ndef f(a,\n      b):\n    return a * b\n\nf(6, 7)\nimport nope\nprint('after error', x)\n";
    let out = dsbox(&["shell", "--rootfs", "analysis"], input, dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        stdout, "Out[3]: 42\nOut[5]: 42\nafter error 41\n",
        "{stderr}"
    );
    assert!(stderr.contains("ModuleNotFoundError"), "{stderr}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the last input succeeded: {stderr}"
    );
}

/// Every process below `pid` (children of all its threads, recursively).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// Alive and not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().chars().next()))
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

#[test]
fn a_killed_dsbox_leaves_no_sandbox_process_behind() {
    require_root!();
    let rootfs = test_rootfs();
    let store = rootfs.object_dir.parent().and_then(|o| o.parent()).unwrap();
    let mut child = Command::new(dsbox_tests::dsbox_bin())
        .args(["exec", "--rootfs", "analysis", "--no-build", "--store"])
        .arg(store)
        .args(["--timeout", "600s", "import time\ntime.sleep(600)"])
        .env("DSBOX_PROFILES", "/nonexistent-dsbox-profiles")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run dsbox exec");
    // `dsbox exec` prints when the cell ends: wait for the runtime's spawner, the zygote's
    // sandbox, the kernel's shell (its init) and the kernel (a child of the zygote) instead.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let below = loop {
        let below = descendants(child.id());
        if below.len() >= 4 {
            break below;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dsbox exec did not start its sandboxes within 60 s: {below:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let below = descendants(child.id())
        .into_iter()
        .chain(below)
        .collect::<Vec<_>>();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    // No PR_SET_PDEATHSIG here (the shells were forked by a thread pool): the sandboxes
    // notice the runtime's end of their channel closing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left: Vec<u32> = below.iter().copied().filter(|p| running(*p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox processes outlived the killed runtime by 10 s: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The README's figures come from `dsbox bench kernel`: a short P6 run reports its rate,
/// who spent the CPU, the leak check, and the bare-fork floor measured beside it (the
/// same interpreter forking children that exit at once, which a sandboxed kernel cannot
/// beat).
#[test]
fn dsbox_bench_kernel_p6_reports_rate_cpu_leaks_and_the_bare_fork_floor() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let out = dsbox(
        &[
            "bench",
            "kernel",
            "--rootfs",
            "analysis",
            "--only",
            "p6",
            "--cycles",
            "40",
            "--concurrency",
            "4",
            "--json",
        ],
        "",
        dir.path(),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let result: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let p6 = &result["p6"];
    assert_eq!(p6["cycles"], 40, "{p6}");
    assert_eq!(p6["leak_free"], true, "{p6}");
    assert!(p6["rate_per_s"].as_f64().unwrap() > 0.0, "{p6}");
    let cpu = &p6["cpu_per_cycle"];
    assert!(cpu["kernels_ms"].as_f64().unwrap() > 0.0, "{cpu}");
    assert!(cpu["zygote_faults"].as_f64().unwrap() > 0.0, "{cpu}");
    assert!(p6["baseline_error"].is_null(), "{p6}");
    let bare = p6["baseline_bare_fork"].as_array().expect("bare-fork runs");
    let whens: Vec<&str> = bare.iter().map(|b| b["when"].as_str().unwrap()).collect();
    assert_eq!(whens, ["before", "after"], "{p6}");
    for b in bare {
        assert_eq!(b["forks"], 100, "{b}");
        assert!(b["rate_per_s"].as_f64().unwrap() > 0.0, "{b}");
        // Every child of the preloaded interpreter writes some pages it shares.
        assert!(b["children_faults"].as_f64().unwrap() > 10.0, "{b}");
        assert!(b["parent_cpu_ms"].as_f64().unwrap() > 0.0, "{b}");
    }
    let share = p6["share_of_bare_fork_rate"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "P6 / bare fork = {share}: {p6}");
}
