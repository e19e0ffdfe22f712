//! The `dsbox eval`, `dsbox report` and `dsbox demo` commands as users run them, against
//! the fake server: a run killed with SIGKILL resumes without redoing or losing anything,
//! Ctrl-C and a vanished server stop a run cleanly, and bad input gets one clear line
//! and leaves no run directory behind.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use dsbox_agent::fake::{FakeConfig, FakeReply, FakeServer, Script};
use dsbox_tasks::Task;
use tokio::process::{Child, Command};

use crate::shared_data::analyst_script;
use crate::{ROOTFS, rootfs, scratch, starter_suite, store_and_profiles};

/// `dsbox <args>` with the test rootfs store and a private starter dir, no API key.
fn dsbox(starter: &Path, args: &[&str]) -> Command {
    let _ = rootfs();
    let (store, _) = store_and_profiles();
    let mut cmd = Command::new(dsbox_tests::dsbox_bin());
    cmd.args(args);
    if matches!(args.first(), Some(&"eval") | Some(&"demo")) {
        cmd.arg("--store")
            .arg(&store)
            .arg("--starter-dir")
            .arg(starter);
    }
    cmd.env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env("DSBOX_PROFILES", "/nonexistent-dsbox-profiles")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn eval_args<'a>(url: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "eval",
        "--suite",
        "starter",
        "--model",
        "fake-model",
        "--base-url",
        url,
        "--rootfs",
        ROOTFS,
        "--out",
        out,
        "--max-retries",
        "1",
    ]
}

async fn output(mut cmd: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("dsbox finished in time")
        .expect("run dsbox")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The analyst through the fake server, each reply `delay` late.
fn slow_analyst(tasks: &[&Task], delay: Duration) -> Script {
    let Script::Handler(inner) = analyst_script(tasks) else {
        unreachable!("analyst_script is a handler")
    };
    Script::handler(move |r| FakeReply::delayed(delay, inner(r)))
}

fn result_lines(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(str::to_owned)
        .collect()
}

async fn wait_for_lines(out: &Path, n: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while result_lines(out).len() < n {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("dsbox eval ended early ({status})");
        }
        assert!(Instant::now() < deadline, "no {n} results in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Direct children of `pid` but its spawner (sandbox inits are children of the runtime).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out.retain(|c| {
        std::fs::read_to_string(format!("/proc/{c}/comm"))
            .is_ok_and(|n| n.trim() != "dsbox-spawner")
    });
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

fn keys(lines: &[String]) -> Vec<(String, u64)> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (
                v["sample_id"].as_str().unwrap().to_owned(),
                v["trajectory"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_resumes_without_redoing_or_losing_anything() {
    let dir = scratch();
    let starter = dir.path().join("starter");
    let suite = starter_suite(&starter);
    let tasks: Vec<&Task> = suite.tasks.iter().collect();
    let server = FakeServer::start(
        FakeConfig::default(),
        slow_analyst(&tasks, Duration::from_millis(150)),
    )
    .await
    .unwrap();
    let url = server.base_url();
    let out = dir.path().join("run");
    let out_s = out.to_str().unwrap();
    let mut args = eval_args(&url, out_s);
    args.extend(["--k", "2", "--concurrency", "2"]);
    let mut child = dsbox(&starter, &args).spawn().expect("spawn dsbox eval");
    let pid = child.id().unwrap();
    wait_for_lines(&out, 5, &mut child).await;
    // Sandboxes come and go between episodes: catch a moment with some alive.
    let mut inits = children(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while inits.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        inits = children(pid);
    }
    assert!(!inits.is_empty(), "the run has live sandboxes");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success());

    // The sandboxes of the killed run go away by themselves (their kernels see the
    // channel close).
    let deadline = Instant::now() + Duration::from_secs(20);
    while inits.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "sandbox inits {inits:?} outlived the run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let before = result_lines(&out);
    assert!((5..24).contains(&before.len()), "{}", before.len());
    // A line cut short by the crash (as a kill during a write leaves it).
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(out.join("results.jsonl"))
            .unwrap();
        f.write_all(br#"{"sample_id":"starter/peak-day","dataset":"sta"#)
            .unwrap();
    }
    let requests_before = server.request_count();
    let resumed = output(dsbox(&starter, &["eval", "--resume", out_s])).await;
    let stderr = text(&resumed.stderr);
    assert!(resumed.status.success(), "resume failed: {stderr}");
    assert!(
        stderr.contains("dropped a half-written last line"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{} of 24 trajectories finished", before.len())),
        "{stderr}"
    );

    let after = result_lines(&out);
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "finished lines are untouched"
    );
    let all = keys(&after);
    let unique: std::collections::BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 24, "one line per trajectory");
    assert_eq!(unique.len(), 24, "nothing redone");
    for t in &suite.tasks {
        for j in 0..2 {
            assert!(unique.contains(&(t.id.clone(), j)), "{} #{j} missing", t.id);
        }
    }
    // Only the unfinished trajectories went to the model: a preflight request plus three
    // per trajectory (two cells and the answer).
    let resumed_requests = server.request_count() - requests_before;
    assert_eq!(resumed_requests, 1 + 3 * (24 - before.len()));
    for l in &after {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["score"], 1.0, "{l}");
        assert!(out.join(v["trajectory_file"].as_str().unwrap()).is_file());
    }
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["complete"], true);
    assert_eq!(metrics["overall"]["finished"], 24);
    assert_eq!(metrics["overall"]["pass_at"]["pass@2"], 1.0);
    assert!(out.join("report.html").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_and_a_vanished_server_stop_the_run_cleanly_and_resume_finishes_it() {
    let dir = scratch();
    let starter = dir.path().join("starter");
    let suite = starter_suite(&starter);
    let tasks: Vec<&Task> = suite.tasks.iter().collect();
    let server = FakeServer::start(
        FakeConfig::default(),
        slow_analyst(&tasks, Duration::from_millis(150)),
    )
    .await
    .unwrap();
    let url = server.base_url();
    let out = dir.path().join("run");
    let out_s = out.to_str().unwrap().to_owned();

    // Ctrl-C: exit 130, summaries written for what finished.
    let mut child = dsbox(&starter, &eval_args(&url, &out_s)).spawn().unwrap();
    wait_for_lines(&out, 2, &mut child).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let o = child.wait_with_output().await.unwrap();
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!("dsbox eval --resume {out_s}")),
        "{stderr}"
    );
    let first = result_lines(&out).len();
    assert!((2..12).contains(&first), "{first}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["complete"], false);
    assert_eq!(metrics["overall"]["finished"], first);

    // The server goes away mid-run: the run stops (exit 1) instead of failing every
    // remaining trajectory, and records nothing for the interrupted ones.
    let mut child = dsbox(
        &starter,
        &["eval", "--resume", &out_s, "--max-retries", "1"],
    )
    .spawn()
    .unwrap();
    wait_for_lines(&out, first + 2, &mut child).await;
    drop(server);
    let o = child.wait_with_output().await.unwrap();
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach the model server"), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let second = result_lines(&out);
    for l in &second {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(
            v["end_reason"], "answered",
            "no failed trajectory was recorded: {l}"
        );
    }

    // A new server at a new address: resume there and finish.
    let server = FakeServer::start(
        FakeConfig::default(),
        slow_analyst(&tasks, Duration::from_millis(10)),
    )
    .await
    .unwrap();
    let url = server.base_url();
    let o = output(dsbox(
        &starter,
        &["eval", "--resume", &out_s, "--base-url", &url],
    ))
    .await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let all = keys(&result_lines(&out));
    assert_eq!(all.len(), 12);
    assert_eq!(
        all.iter().collect::<std::collections::BTreeSet<_>>().len(),
        12
    );
    assert!(text(&o.stdout).contains("starter"), "{}", text(&o.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_one_clear_line_and_leaves_no_run_behind() {
    let dir = scratch();
    let starter = dir.path().join("starter");
    let server = FakeServer::start(
        FakeConfig {
            models: vec!["fake-model".into()],
            api_key: Some("sk-right".into()),
        },
        Script::handler(|_| FakeReply::text("<answer>1</answer>")),
    )
    .await
    .unwrap();
    let url = server.base_url();
    let out = dir.path().join("run");
    let out_s = out.to_str().unwrap();

    struct Case {
        args: Vec<String>,
        env: Vec<(&'static str, &'static str)>,
        code: i32,
        says: Vec<String>,
    }
    let base = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = eval_args(&url, out_s)
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let replace = |args: Vec<String>, flag: &str, value: &str| -> Vec<String> {
        let mut a = args;
        let i = a.iter().position(|x| x == flag).unwrap();
        a[i + 1] = value.to_owned();
        a
    };
    let key = [("OPENAI_API_KEY", "sk-right")];
    let cases = vec![
        Case {
            args: replace(base(&[]), "--suite", "nope"),
            env: key.to_vec(),
            code: 1,
            says: vec!["unknown suite `nope`".into(), "starter".into()],
        },
        Case {
            args: base(&["--k", "0"]),
            env: key.to_vec(),
            code: 2,
            says: vec!["--k must be at least 1".into()],
        },
        Case {
            args: replace(base(&[]), "--base-url", "http://127.0.0.1:1/v1"),
            env: key.to_vec(),
            code: 1,
            says: vec![
                "cannot reach the model server at http://127.0.0.1:1/v1".into(),
                "--base-url".into(),
            ],
        },
        Case {
            args: base(&[]),
            env: vec![("OPENAI_API_KEY", "sk-wrong")],
            code: 1,
            says: vec![
                "rejected the API key (HTTP 401)".into(),
                "$OPENAI_API_KEY".into(),
            ],
        },
        Case {
            args: base(&["--api-key-env", "DSBOX_TEST_UNSET_KEY"]),
            env: vec![],
            code: 1,
            says: vec!["no key was sent: set $DSBOX_TEST_UNSET_KEY".into()],
        },
        Case {
            args: replace(base(&[]), "--model", "nope"),
            env: key.to_vec(),
            code: 1,
            says: vec!["does not know model `nope`: it serves fake-model".into()],
        },
        Case {
            args: base(&["--ids", "starter/peak-day,starter/nope"]),
            env: key.to_vec(),
            code: 1,
            says: vec!["starter/nope not a task of starter".into()],
        },
        Case {
            args: vec![
                "eval".into(),
                "--resume".into(),
                dir.path().join("empty").display().to_string(),
            ],
            env: key.to_vec(),
            code: 1,
            says: vec!["holds no dsbox run".into()],
        },
    ];
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    for case in &cases {
        let mut cmd = dsbox(
            &starter,
            &case.args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        cmd.envs(case.env.iter().copied());
        let o = output(cmd).await;
        let stderr = text(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(case.code),
            "{:?}: {stderr}",
            case.args
        );
        for s in &case.says {
            assert!(
                stderr.contains(s.as_str()),
                "{:?}: expected {s:?} in: {stderr}",
                case.args
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        if case.code == 1 && !case.args.contains(&"--resume".to_string()) {
            assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        }
        assert!(
            !out.exists(),
            "{:?} left {} behind",
            case.args,
            out.display()
        );
    }

    // A finished run in --out: a second run there is refused (suggesting --resume), and
    // the first run is left exactly as it was.
    let mut cmd = dsbox(&starter, &base_strs(&base(&["--ids", "starter/peak-day"])));
    cmd.envs(key);
    let o = output(cmd).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let snapshot = std::fs::read(out.join("results.jsonl")).unwrap();
    let mut cmd = dsbox(&starter, &base_strs(&base(&[])));
    cmd.envs(key);
    let o = output(cmd).await;
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already holds a run"), "{stderr}");
    assert!(
        stderr.contains(&format!("dsbox eval --resume {out_s}")),
        "{stderr}"
    );
    assert_eq!(std::fs::read(out.join("results.jsonl")).unwrap(), snapshot);
    // --resume keeps the run's settings.
    let mut cmd = dsbox(&starter, &["eval", "--resume", out_s, "--model", "other"]);
    cmd.envs(key);
    let o = output(cmd).await;
    assert!(
        text(&o.stderr).contains("differs from the run's"),
        "{}",
        text(&o.stderr)
    );
    // A directory with other files is not a run directory.
    let busy = dir.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "x").unwrap();
    let busy_s = busy.display().to_string();
    let mut cmd = dsbox(&starter, &base_strs(&replace(base(&[]), "--out", &busy_s)));
    cmd.envs(key);
    let o = output(cmd).await;
    assert!(
        text(&o.stderr).contains("is not empty and holds no dsbox run"),
        "{}",
        text(&o.stderr)
    );
    assert!(!busy.join("run.json").exists());
}

fn base_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_without_a_key_and_report_renders_the_run() {
    let dir = scratch();
    let starter = dir.path().join("starter");
    let out: PathBuf = dir.path().join("demo");
    let out_s = out.to_str().unwrap();
    let o = output(dsbox(
        &starter,
        &["demo", "--starter-only", "--rootfs", ROOTFS, "--out", out_s],
    ))
    .await;
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("starter"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains("12/12") && row.contains("1.000"), "{row}");
    assert!(
        stderr.contains("dsbox eval --suite starter --model"),
        "{stderr}"
    );
    assert!(stderr.contains("report.html"), "{stderr}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Score per suite"));
    assert!(html.contains("starter/busy-days"));
    // The figure the correlation task draws is saved and linked.
    let figures: Vec<_> = std::fs::read_dir(out.join("images/starter"))
        .unwrap()
        .collect();
    assert_eq!(figures.len(), 1);
    assert!(html.contains("images/starter/"));

    let o = output(dsbox(&starter, &["report", out_s, "--json"])).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["overall"]["mean"], 1.0);
    assert_eq!(m["suites"]["starter"]["finished"], 12);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| starter | 12 | 12/12 | 1.000 |"), "{md}");

    let o = output(dsbox(&starter, &["report", "/nonexistent-run"])).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("holds no dsbox run"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_eval_measures_both_sides() {
    let dir = scratch();
    let starter = dir.path().join("starter");
    let _ = starter_suite(&starter);
    let (store, _) = store_and_profiles();
    let _ = rootfs();
    let mut cmd = Command::new(dsbox_tests::dsbox_bin());
    cmd.args([
        "bench",
        "eval",
        "--tasks",
        "14",
        "--baseline-tasks",
        "2",
        "--json",
    ])
    .args(["--rootfs", ROOTFS, "--store"])
    .arg(&store)
    // No data root: the starter suite, repeated to 14 tasks.
    .args(["--data-root", "/nonexistent-dsgym"])
    .env("DSBOX_STARTER_DIR", &starter)
    .stdin(Stdio::null());
    let o = output(cmd).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(
        r["source"]
            .as_str()
            .unwrap()
            .contains("starter suite repeated"),
        "{r}"
    );
    assert_eq!(r["dsbox"]["tasks"], 14);
    assert_eq!(r["dsbox"]["cells"], 42);
    assert_eq!(r["baseline"]["tasks"], 2);
    assert_eq!(r["baseline"]["cells"], 6);
    assert!(r["ratio"].as_f64().unwrap() > 0.0);
    assert!(r["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(r["baseline_cell"]["p50_ms"].as_f64().unwrap() > 0.0);
}
