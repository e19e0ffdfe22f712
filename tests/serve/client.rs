//! The `dsbox serve` binary as a user runs it: started on a free port, driven by a Python
//! client that knows only the documented contract (tests/serve/client_test.py, with
//! `requests`), then stopped with SIGTERM, after which none of its sandboxes remain.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{require_root, shared_data_root, target_dir, test_rootfs, test_store};

/// A Python that can `import requests`: Debian's python3 with python3-requests, else a
/// venv made with uv under the target dir.
fn python_with_requests() -> PathBuf {
    let system = PathBuf::from("/usr/bin/python3");
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", "import requests"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(&system) {
        return system;
    }
    let venv = target_dir().join("dsbox-serve-tests/client-venv");
    let py = venv.join("bin/python");
    if !has(&py) {
        let run = |args: &[&str]| {
            let out = Command::new("uv").args(args).output().unwrap_or_else(|e| {
                panic!("the Python client needs `requests`: install python3-requests, or uv (pip install uv) so the test can make a venv: {e}")
            });
            assert!(
                out.status.success(),
                "uv {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "venv",
            "--python",
            "/usr/bin/python3",
            venv.to_str().unwrap(),
        ]);
        run(&[
            "pip",
            "install",
            "--python",
            py.to_str().unwrap(),
            "requests",
        ]);
    }
    py
}

fn records_of(pid: u32) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir("/run/dsbox/sandboxes") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["runtime_pid"] == pid)
        })
        .collect()
}

#[test]
fn a_python_client_uses_the_documented_api_of_dsbox_serve() {
    require_root!();
    let _ = test_rootfs(); // built before the server looks for it
    let mut args: Vec<String> = [
        "serve",
        "--port",
        "0",
        "--template",
        "analysis",
        "--no-build",
        "--max-sandboxes",
        "16",
        "--pool-size",
        "2",
        "--memory",
        "1G",
        "--store",
    ]
    .map(String::from)
    .to_vec();
    args.push(test_store().display().to_string());
    let shared = shared_data_root();
    if let Some(root) = &shared {
        args.push("--data-root".into());
        args.push(root.display().to_string());
    } else {
        eprintln!("note: ../shared/data/dsgym is missing: the QRData episodes are skipped");
    }
    let mut child = Command::new(dsbox_tests::dsbox_bin())
        .args(["--log", "info", "--log-format", "json"])
        .args(&args)
        .env(
            "DSBOX_STARTER_DIR",
            target_dir().join("dsbox-serve-tests/starter"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dsbox serve");
    let pid = child.id();
    // Structured logs: one JSON object per line, a `request` event per request.
    let stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines
        .next()
        .expect("dsbox serve prints a line")
        .expect("read its stdout");
    let url = first
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("serve/client_test.py");
    let mut cmd = Command::new(python_with_requests());
    cmd.arg(&script).arg(&url);
    if shared.is_some() {
        cmd.arg("--qrdata");
    }
    let out = cmd.output().expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let passed = out.status.success() && stdout.contains("all checks passed");
    assert!(
        !records_of(pid).is_empty() || !passed,
        "the server holds its pool"
    );

    // SIGTERM: everything is destroyed, the process exits 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("dsbox serve did not stop within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let logs = logs.join().unwrap();
    assert!(
        passed,
        "the Python client failed:\n{stdout}\n{}",
        logs.join("\n")
    );
    let requests: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "request")
        .collect();
    assert!(
        requests.iter().any(
            |v| v["fields"]["route"] == "/session/{id}/execute" && v["fields"]["status"] == 200
        ),
        "JSON request logs: {:?}",
        &logs[..logs.len().min(5)]
    );
    assert!(status.success(), "dsbox serve exited with {status}");
    assert_eq!(
        records_of(pid),
        Vec::<PathBuf>::new(),
        "no sandbox of the server remains"
    );
}

#[test]
fn dsbox_bench_serve_reports_p4_beside_p3_and_the_load_figures() {
    require_root!();
    let _ = test_rootfs();
    let out = Command::new(dsbox_tests::dsbox_bin())
        .args([
            "bench",
            "serve",
            "--rootfs",
            "analysis",
            "--no-build",
            "--store",
        ])
        .arg(test_store())
        .args([
            "--clients",
            "6",
            "--executes",
            "5",
            "--roundtrips",
            "20",
            "--pool",
            "2",
            "--json",
        ])
        .output()
        .expect("run dsbox bench serve");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON out");
    assert_eq!(v["load"]["executes"], 30);
    assert_eq!(v["load"]["errors"], 0, "{v}");
    assert_eq!(v["load"]["execute_latency"]["n"], 30);
    assert_eq!(v["p3_kernel_client"]["n"], 20);
    assert_eq!(v["p4_http"]["n"], 20);
    assert!(v["p4_http"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(v["p4_over_p3"].as_f64().unwrap() > 0.0);
    assert!(v["server_peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
    assert_eq!(
        v["machine"]["cores"],
        std::thread::available_parallelism().unwrap().get()
    );
}
