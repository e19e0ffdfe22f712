//! Measure the `1+1` execute round trip (targets.md P3) through [`KernelClient`], against
//! a Jupyter kernel (ipykernel via jupyter_client) driven from the same Python, in the
//! same run. A hand-run measurement; `dsbox bench` (phase 2) reports P3 for sandboxes.
//!
//! ```text
//! cargo run --release -p dsbox-kernel --example roundtrip -- \
//!     --python /path/to/venv/bin/python [--count 2000] [--json] [--zygote]
//! ```
//! The venv needs `jupyter_client` and `ipykernel` for the baseline (skipped otherwise).
//! `--zygote` also measures a kernel forked from a zygote holding pandas+numpy (spawn
//! request to first `1+1` result, no sandbox: a lower bound for P1) against a fresh
//! `python -c "import pandas, numpy"`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::sync::Arc;

use dsbox_kernel::zygote::{JoinPlan, SpawnFds, Zygote, ZygoteConfig};
use dsbox_kernel::{ClientConfig, KernelClient, KernelControl, StandaloneConfig, StandaloneKernel};

fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

struct NoInterrupt;

impl KernelControl for NoInterrupt {
    fn interrupt(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Spawn request to first `1+1` result for kernels forked from a pandas+numpy zygote,
/// and a fresh interpreter importing the same modules. Both in microseconds.
async fn zygote_figures(
    python: &std::path::Path,
    count: usize,
) -> dsbox_kernel::Result<(Vec<f64>, Vec<f64>)> {
    let mut config = ZygoteConfig::new(python);
    config.preload = vec!["numpy".into(), "pandas".into()];
    let mut zygote = Zygote::start(&config).await?;
    let plan = JoinPlan {
        namespaces: 0,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        cwd: "/".into(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        rlimits: vec![],
        landlock: None,
        seccomp_bpf: None,
        hostname: "dsbox".into(),
        drop_capabilities: false,
        no_new_privs: false,
    };
    let mut forks = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let spawned = zygote.spawn(&plan, SpawnFds::default()).await?;
        let mut client = KernelClient::connect(
            spawned.channel,
            Arc::new(NoInterrupt),
            ClientConfig::default(),
        )
        .await?;
        let cell = client.execute("1+1", Duration::from_secs(10)).await?;
        forks.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(cell.result_text(), Some("2"));
        client.shutdown().await?;
    }
    // Memory: `live` children alive at once, each after one `1+1`; PSS summed from
    // /proc/<pid>/smaps_rollup (shared pages split between the processes sharing them).
    let live = 100;
    let mut clients = Vec::with_capacity(live);
    let mut pids = Vec::with_capacity(live);
    for _ in 0..live {
        let spawned = zygote.spawn(&plan, SpawnFds::default()).await?;
        pids.push(spawned.pid);
        let mut client = KernelClient::connect(
            spawned.channel,
            Arc::new(NoInterrupt),
            ClientConfig::default(),
        )
        .await?;
        client.execute("1+1", Duration::from_secs(10)).await?;
        clients.push(client);
    }
    let pss_kib: u64 = pids.iter().map(|pid| pss_kib(*pid)).sum();
    eprintln!(
        "{live} live kernels from the zygote: {:.1} MiB PSS in total, {:.2} MiB each (zygote not counted)",
        pss_kib as f64 / 1024.0,
        pss_kib as f64 / 1024.0 / live as f64
    );
    drop(clients);
    zygote.shutdown().await?;
    let mut fresh = Vec::new();
    for _ in 0..count.min(10) {
        let t = Instant::now();
        let ok = std::process::Command::new(python)
            .args(["-c", "import pandas, numpy"])
            .status()?
            .success();
        assert!(ok, "python -c 'import pandas, numpy' failed");
        fresh.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok((forks, fresh))
}

const JUPYTER_DRIVER: &str = r#"
import json, sys, time
from jupyter_client.manager import start_new_kernel
n = int(sys.argv[1])
km, kc = start_new_kernel(kernel_name="python3")
def run(code):
    msg_id = kc.execute(code)
    result = None
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "execute_result":
            result = msg["content"]["data"]["text/plain"]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    kc.get_shell_msg(timeout=30)
    return result
for _ in range(50):
    assert run("1+1") == "2"
samples = []
for _ in range(n):
    t = time.perf_counter()
    run("1+1")
    samples.append(time.perf_counter() - t)
kc.stop_channels()
km.shutdown_kernel(now=True)
print(json.dumps(samples))
"#;

struct Args {
    python: PathBuf,
    count: usize,
    json: bool,
    zygote: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        python: std::env::var_os("DSBOX_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/python3")),
        count: 2000,
        json: false,
        zygote: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--python" => args.python = it.next().ok_or("--python needs a path")?.into(),
            "--count" => {
                args.count = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--count needs a positive number")?
            }
            "--json" => args.json = true,
            "--zygote" => args.zygote = true,
            other => {
                return Err(format!(
                    "unknown argument {other:?}: use --python, --count, --json"
                ));
            }
        }
    }
    Ok(args)
}

/// (p50, p99) in microseconds.
fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("roundtrip: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ours = rt.block_on(async {
        let mut kernel = StandaloneKernel::start(StandaloneConfig::new(&args.python)).await?;
        for _ in 0..200 {
            kernel.execute("1+1", Duration::from_secs(10)).await?;
        }
        let mut samples = Vec::with_capacity(args.count);
        let mut kernel_us = Vec::with_capacity(args.count);
        for _ in 0..args.count {
            let t = Instant::now();
            let cell = kernel.execute("1+1", Duration::from_secs(10)).await?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(cell.result_text(), Some("2"));
            kernel_us.push(cell.timings.kernel_run.unwrap_or_default().as_secs_f64() * 1e6);
        }
        kernel.shutdown().await?;
        Ok::<_, dsbox_kernel::KernelError>((samples, kernel_us))
    });
    let (samples, kernel_us) = match ours {
        Ok(s) => s,
        Err(e) => {
            eprintln!("roundtrip: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (p50, p99) = percentiles(samples);
    let (k50, _) = percentiles(kernel_us);

    let jupyter = std::process::Command::new(&args.python)
        .args(["-c", JUPYTER_DRIVER, &args.count.to_string()])
        .output();
    let jupyter = match jupyter {
        Ok(out) if out.status.success() => serde_json::from_slice::<Vec<f64>>(&out.stdout)
            .ok()
            .map(|s| percentiles(s.into_iter().map(|x| x * 1e6).collect())),
        Ok(out) => {
            eprintln!(
                "roundtrip: Jupyter baseline skipped: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("failed")
            );
            None
        }
        Err(e) => {
            eprintln!("roundtrip: Jupyter baseline skipped: {e}");
            None
        }
    };
    let zygote = if args.zygote {
        match rt.block_on(zygote_figures(&args.python, 100)) {
            Ok((forks, fresh)) => Some((percentiles(forks), percentiles(fresh))),
            Err(e) => {
                eprintln!("roundtrip: zygote figure skipped: {e}");
                None
            }
        }
    } else {
        None
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    if args.json {
        let j = jupyter.map(|(a, b)| serde_json::json!({"p50_us": a, "p99_us": b}));
        let out = serde_json::json!({
            "figure": "P3 1+1 round trip (standalone kernel, no sandbox)",
            "count": args.count,
            "dsbox": {"p50_us": p50, "p99_us": p99, "kernel_side_p50_us": k50},
            "jupyter": j,
            "ratio_p50": jupyter.map(|(j50, _)| p50 / j50),
            "zygote_fork_to_first_result": zygote.map(|((a, b), (c, d))| serde_json::json!({
                "p50_us": a, "p99_us": b, "fresh_import_p50_us": c, "fresh_import_p99_us": d,
            })),
            "machine": {"cores": cores, "kernel": kernel_release},
        });
        println!("{out}");
    } else {
        println!(
            "machine: {cores} cores, Linux {kernel_release}; {} round trips each",
            args.count
        );
        println!("dsbox   1+1: p50 {p50:8.1} us  p99 {p99:8.1} us  (kernel side p50 {k50:.1} us)");
        if let Some((j50, j99)) = jupyter {
            println!("jupyter 1+1: p50 {j50:8.1} us  p99 {j99:8.1} us");
            println!("ratio p50: 1/{:.1}", j50 / p50);
        }
        if let Some(((f50, f99), (i50, i99))) = zygote {
            println!(
                "zygote fork -> first 1+1 (pandas+numpy held, no sandbox): p50 {:.2} ms  p99 {:.2} ms",
                f50 / 1e3,
                f99 / 1e3
            );
            println!(
                "fresh python -c 'import pandas, numpy':                  p50 {:.1} ms  p99 {:.1} ms  (ratio 1/{:.0})",
                i50 / 1e3,
                i99 / 1e3,
                i50 / f50
            );
        }
    }
    ExitCode::SUCCESS
}
