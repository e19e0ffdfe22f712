//! `dsbox bench kernel`: figures P1, P2, P3, P5 and P6 of targets.md for sandboxed,
//! pooled kernels, each beside its baseline measured in the same run, on one rootfs
//! (default: the `bench` profile, which adds jupyter_client + ipykernel to `analysis`).
//!
//! * **P1** zygote fork, no pool: request → kernel ready for its first cell (hello
//!   received), and → first `1+1` result; baseline: a fresh `python -c "import pandas,
//!   numpy"` in a sandbox of the same rootfs (and as a plain process on the host).
//! * **P2** the same taken from a warm pool (request → handle returned), with and without
//!   a data file attached; baseline: P1.
//! * **P3** `1+1` round trip through [`dsbox_kernel::KernelClient`] in a sandboxed kernel;
//!   baseline: a Jupyter kernel (ipykernel) driven by jupyter_client inside a sandbox of
//!   the same rootfs (the same `1+1`, waiting for its result and idle status).
//! * **P5** N sandboxes alive at once, each holding pandas + numpy: total PSS of every
//!   process of every sandbox plus the zygote (smaps_rollup), MemAvailable delta, every
//!   one answering `1+1`.
//! * **P6** sustained create (a sandbox whose kernel is ready) + destroy for N cycles,
//!   `1+1` in every 100th (or every one with `cell_every_cycle`), then a leak check:
//!   mounts, cgroups, the runtime's fds, processes, state records; baseline, just before
//!   and just after: the floor no sandbox can go under, the same interpreter with the
//!   same preload forking children that exit at once (in one sandbox of the same rootfs).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dsbox_kernel::{
    AcquireOptions, DataMount, KernelManager, ManagerConfig, SandboxKernel, Template,
    TemplateConfig,
};
use dsbox_rootfs::{Rootfs, RootfsLayout};
use dsbox_runtime::spec::ProcessSpec;
use dsbox_runtime::{Sandbox, SpawnOptions, Stdio};
use serde::Serialize;

use crate::start::{Machine, Stats};

/// Errors of the kernel benchmark.
#[derive(Debug, thiserror::Error)]
pub enum KernelBenchError {
    #[error(transparent)]
    Sandbox(#[from] dsbox_kernel::SandboxError),
    #[error(transparent)]
    Runtime(#[from] dsbox_runtime::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{what} gave {got:?} instead of `2`")]
    WrongAnswer { what: String, got: Option<String> },
    #[error("the baseline failed: {0}")]
    Baseline(String),
}

type Result<T, E = KernelBenchError> = std::result::Result<T, E>;

/// Which figures and how many repetitions.
#[derive(Debug, Clone)]
pub struct KernelBenchConfig {
    /// P1/P2 repetitions.
    pub runs: usize,
    /// Repetitions of the fresh-import baseline (each takes ~0.5 s).
    pub baseline_runs: usize,
    /// P3 round trips (each side).
    pub roundtrips: usize,
    /// P5 sandboxes alive at once.
    pub live: usize,
    /// P6 create+destroy cycles.
    pub cycles: usize,
    /// Sandboxes made at once in P5 and P6.
    pub concurrency: usize,
    /// P6: run `1+1` in every cycle (otherwise in every 100th, as a spot check: a cycle is
    /// a sandbox with a ready kernel, made and destroyed).
    pub cell_every_cycle: bool,
    /// Ready kernels in the P2 pool.
    pub pool_size: usize,
    /// Which of p1, p2, p3, p5, p6 to run.
    pub only: Vec<String>,
}

impl Default for KernelBenchConfig {
    fn default() -> Self {
        KernelBenchConfig {
            runs: 200,
            baseline_runs: 20,
            roundtrips: 2000,
            live: 1000,
            cycles: 10_000,
            concurrency: 8,
            cell_every_cycle: false,
            pool_size: 4,
            only: ["p1", "p2", "p3", "p5", "p6"].map(String::from).to_vec(),
        }
    }
}

/// A target and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub description: String,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepP50 {
    pub step: String,
    pub p50_ms_since_request: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct P1 {
    pub runs: usize,
    /// Request → hello received (the first cell is accepted from here on).
    pub ready: Stats,
    /// Request → acquire returned (ready + /data and /submission made read-only).
    pub acquire: Stats,
    /// Request → first `1+1` result back.
    pub first_result: Stats,
    /// Median time of each step since the request (runtime's and kernel's timestamps).
    pub steps: Vec<StepP50>,
    /// Fresh `python -c "import pandas, numpy"` in a sandbox of the same rootfs, spawn →
    /// exit.
    pub baseline_sandbox: Stats,
    /// The same as a plain process on the host (`Host` rootfs layouts only).
    pub baseline_plain: Option<Stats>,
    pub ratio_p50: f64,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize)]
pub struct P2 {
    pub runs: usize,
    pub pool_size: usize,
    /// Request → handle returned, taken from the warm pool.
    pub acquire: Stats,
    /// The same with one data file attached under /data.
    pub acquire_with_data: Stats,
    /// Request → first `1+1` result back.
    pub first_result: Stats,
    /// Baseline: P1's acquire p50.
    pub p1_acquire_p50_ms: f64,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize)]
pub struct P3 {
    pub roundtrips: usize,
    /// `1+1` round trips through KernelClient (client-measured).
    pub dsbox: Stats,
    /// The same, time inside the kernel (request parsed → done).
    pub dsbox_kernel_side: Stats,
    /// Jupyter kernel via jupyter_client in a sandbox of the same rootfs.
    pub jupyter: Option<Stats>,
    pub jupyter_start_ms: Option<f64>,
    pub jupyter_error: Option<String>,
    pub ratio_p50: Option<f64>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize)]
pub struct P5 {
    pub live: usize,
    pub create_seconds: f64,
    pub create_rate_per_s: f64,
    pub answered: usize,
    pub processes: usize,
    pub pss_total_bytes: u64,
    pub pss_zygote_bytes: u64,
    pub pss_sandboxes_bytes: u64,
    pub pss_per_sandbox_bytes: u64,
    pub mem_available_delta_bytes: i64,
    /// This process (the runtime) after creating them, VmRSS.
    pub runtime_rss_bytes: u64,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeakCounts {
    pub mounts: usize,
    pub cgroup_leaves: usize,
    pub runtime_fds: usize,
    pub child_processes: usize,
    pub state_records: usize,
    pub zygote_children: u64,
}

/// CPU time (user + system) per cycle, by who spent it.
#[derive(Debug, Clone, Serialize)]
pub struct CpuPerCycle {
    /// This process (the runtime: plans, tokio, destroy).
    pub runtime_ms: f64,
    /// The runtime's spawner process (receives plans, clones the shells' middle processes).
    pub spawner_ms: f64,
    /// The runtime's reaped children: the shells' middle processes and inits.
    pub shells_ms: f64,
    /// The zygote (receive, fork).
    pub zygote_ms: f64,
    /// Its reaped children: the kernels (join, serve, exit).
    pub kernels_ms: f64,
    /// Page faults (mostly copy-on-write) per cycle in the zygote and in its kernels.
    pub zygote_faults: f64,
    pub kernel_faults: f64,
    /// The same in this process and in its reaped children (the shells).
    pub runtime_faults: f64,
    pub spawner_faults: f64,
    pub shell_faults: f64,
}

/// minflt, cminflt, majflt, cmajflt, utime, stime, cutime, cstime of `pid` (fields 10-17
/// of /proc/<pid>/stat; times in clock ticks).
fn proc_stat(pid: i32) -> [u64; 8] {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(7)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    std::array::from_fn(|i| f.get(i).copied().unwrap_or(0))
}

/// P6's baseline: fork + exit + reap of the zygote's interpreter (same rootfs, set up by
/// the zygote's own `preloaded_interpreter`, `concurrency` children in flight), each
/// child exiting at once. What every kernel costs before any sandboxing: copying the
/// page tables of the preloaded interpreter at fork and tearing them down at exit.
/// Python's at-fork callbacks run in full here (the zygote trims `threading`'s and
/// `logging`'s), so a bare child writes ~200 pages more than it would as a zygote child:
/// a slightly high floor.
#[derive(Debug, Clone, Serialize)]
pub struct BareFork {
    /// "before" or "after" P6's cycles (this VM's speed drifts within minutes).
    pub when: &'static str,
    pub forks: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub rate_per_s: f64,
    /// CPU (user + system) per fork, in the forking parent and in its children.
    pub parent_cpu_ms: f64,
    pub children_cpu_ms: f64,
    pub parent_faults: f64,
    pub children_faults: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct P6 {
    pub cycles: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub rate_per_s: f64,
    /// How long P6 waited for the machine to go idle first (the kernel tears down the
    /// previous figure's namespaces and cgroups in the background), and whether it did.
    pub settle_ms: f64,
    pub settled: bool,
    /// One create (kernel ready) + destroy, per worker; with `1+1` in it when
    /// `cell_every_cycle`, else in every 100th.
    pub cycle: Stats,
    pub cell_every_cycle: bool,
    pub cpu_per_cycle: CpuPerCycle,
    /// The bare-fork floor measured just before and just after the cycles.
    pub baseline_bare_fork: Vec<BareFork>,
    /// Why a baseline run failed, if one did (P6 itself is still reported).
    pub baseline_error: Option<String>,
    /// P6's rate / the bare-fork rate (the mean of the runs before and after).
    pub share_of_bare_fork_rate: Option<f64>,
    pub before: LeakCounts,
    pub after: LeakCounts,
    pub leak_free: bool,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelBenchResult {
    pub benchmark: &'static str,
    pub machine: Machine,
    pub rootfs: String,
    pub rootfs_hash: String,
    pub preload: Vec<String>,
    pub zygote_start_ms: f64,
    pub p1: Option<P1>,
    pub p2: Option<P2>,
    pub p3: Option<P3>,
    pub p5: Option<P5>,
    pub p6: Option<P6>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ns_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn check(cell: &dsbox_kernel::CellResult, what: &str) -> Result<()> {
    if cell.result_text() == Some("2") {
        Ok(())
    } else {
        Err(KernelBenchError::WrongAnswer {
            what: what.to_owned(),
            got: cell
                .result_text()
                .map(str::to_owned)
                .or_else(|| cell.error().map(|e| format!("{}: {}", e.0, e.1))),
        })
    }
}

/// Raise RLIMIT_NOFILE to its hard limit (P5 holds thousands of fds).
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a stack struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Run the benchmark on `rootfs`.
pub fn run(rootfs: &Rootfs, cfg: &KernelBenchConfig) -> Result<KernelBenchResult> {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(rootfs, cfg))
}

fn wants(cfg: &KernelBenchConfig, fig: &str) -> bool {
    cfg.only.iter().any(|o| o.eq_ignore_ascii_case(fig))
}

async fn run_async(rootfs: &Rootfs, cfg: &KernelBenchConfig) -> Result<KernelBenchResult> {
    let manager = KernelManager::new(ManagerConfig {
        max_sandboxes: cfg.live.max(cfg.concurrency) + cfg.pool_size + 64,
        max_memory: None,
        acquire_timeout: Duration::from_secs(120),
        ..ManagerConfig::default()
    });
    let mut base = TemplateConfig::new(rootfs);
    base.pool_size = 0;
    let t0 = Instant::now();
    let cold = manager.template(base.clone())?;
    cold.wait_ready().await?;
    let zygote_start_ms = ms(t0.elapsed());
    // Warm up: the first kernels touch pages and caches the later ones share.
    for _ in 0..5 {
        let mut sb = cold.acquire(AcquireOptions::default()).await?;
        check(
            &sb.execute("1+1", Duration::from_secs(30)).await?,
            "warm-up",
        )?;
        sb.close().await?;
    }

    let p1 = if wants(cfg, "p1") || wants(cfg, "p2") {
        Some(p1(&cold, &base, rootfs, cfg).await?)
    } else {
        None
    };
    let p2 = if wants(cfg, "p2") {
        let mut c = base.clone();
        c.pool_size = cfg.pool_size;
        let pooled = manager.template(c)?;
        let p1_acquire = p1.as_ref().map_or(0.0, |p| p.acquire.p50_ms);
        let r = p2(&pooled, cfg, p1_acquire).await?;
        pooled.drain_pool();
        Some(r)
    } else {
        None
    };
    let p1 = if wants(cfg, "p1") { p1 } else { None };
    let p3 = if wants(cfg, "p3") {
        Some(p3(&cold, &base, cfg).await?)
    } else {
        None
    };
    let p5 = if wants(cfg, "p5") {
        Some(p5(&cold, cfg).await?)
    } else {
        None
    };
    let p6 = if wants(cfg, "p6") {
        Some(p6(&cold, &base, cfg).await?)
    } else {
        None
    };
    Ok(KernelBenchResult {
        benchmark: "kernel",
        machine: Machine::detect(),
        rootfs: rootfs.name.clone(),
        rootfs_hash: rootfs.content_hash.clone(),
        preload: base.preload.clone(),
        zygote_start_ms,
        p1,
        p2,
        p3,
        p5,
        p6,
    })
}

/// Spawn → exit of `python -c "import pandas, numpy"` in a sandbox like the kernels'.
fn fresh_import_in_sandbox(config: &TemplateConfig, code: &str) -> Result<Duration> {
    let mut spec = config.shell_spec();
    spec.process = Some(ProcessSpec::new([
        config.rootfs.python.display().to_string(),
        "-c".to_owned(),
        code.to_owned(),
    ]));
    let t = Instant::now();
    let mut sb = Sandbox::spawn(
        &spec,
        SpawnOptions {
            stdin: Stdio::Null,
            stdout: Stdio::Null,
            ..SpawnOptions::default()
        },
    )?;
    let report = sb.wait()?;
    let took = t.elapsed();
    sb.destroy()?;
    if report.code() != 0 {
        return Err(KernelBenchError::Baseline(format!(
            "`python -c {code:?}` exited with {} in the sandbox",
            report.code()
        )));
    }
    Ok(took)
}

fn fresh_import_plain(python: &Path, code: &str) -> Result<Duration> {
    let t = Instant::now();
    let status = std::process::Command::new(python)
        .args(["-c", code])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()?;
    let took = t.elapsed();
    if !status.success() {
        return Err(KernelBenchError::Baseline(format!(
            "{} -c {code:?}: {status}",
            python.display()
        )));
    }
    Ok(took)
}

fn preload_code(preload: &[String]) -> String {
    if preload.is_empty() {
        "pass".to_owned()
    } else {
        format!("import {}", preload.join(", "))
    }
}

async fn p1(
    t: &Template,
    config: &TemplateConfig,
    rootfs: &Rootfs,
    cfg: &KernelBenchConfig,
) -> Result<P1> {
    let (mut ready, mut acquire, mut first) = (vec![], vec![], vec![]);
    let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for _ in 0..cfg.runs {
        let t0 = Instant::now();
        let mut sb = t.acquire(AcquireOptions::default()).await?;
        let acquired = t0.elapsed();
        let cell = sb.execute("1+1", Duration::from_secs(30)).await?;
        let first_result = t0.elapsed();
        check(&cell, "P1's first cell")?;
        let a = sb.acquire_timings().clone();
        ready.push(ns_ms(a.kernel.ready_ns - a.kernel.request_ns));
        acquire.push(ms(acquired));
        first.push(ms(first_result));
        for (name, at) in a.kernel.steps_ms() {
            if !steps.contains_key(name) {
                order.push(name.to_owned());
            }
            steps.entry(name.to_owned()).or_default().push(at);
        }
        for (name, at) in &a.kernel.join_steps {
            let key = format!("join:{name}");
            if !steps.contains_key(&key) {
                order.push(key.clone());
            }
            steps
                .entry(key)
                .or_default()
                .push(ns_ms(at.saturating_sub(a.kernel.request_ns)));
        }
        sb.close().await?;
    }
    let code = preload_code(&config.preload);
    let mut base_sb = Vec::new();
    let mut base_plain = Vec::new();
    let plain_python = match &rootfs.layout {
        RootfsLayout::Host { env_dir } => Some(env_dir.join("bin/python")),
        RootfsLayout::Dir { .. } => None,
    };
    for _ in 0..cfg.baseline_runs {
        let c = config.clone();
        let code2 = code.clone();
        base_sb.push(ms(tokio::task::spawn_blocking(move || {
            fresh_import_in_sandbox(&c, &code2)
        })
        .await
        .map_err(|e| KernelBenchError::Baseline(e.to_string()))??));
        if let Some(py) = &plain_python {
            base_plain.push(ms(fresh_import_plain(py, &code)?));
        }
    }
    let ready = Stats::from_ms(ready);
    let baseline_sandbox = Stats::from_ms(base_sb);
    let ratio = ready.p50_ms / baseline_sandbox.p50_ms.max(1e-9);
    let mut step_list: Vec<StepP50> = order
        .into_iter()
        .map(|s| StepP50 {
            p50_ms_since_request: Stats::from_ms(steps.remove(&s).unwrap_or_default()).p50_ms,
            step: s,
        })
        .collect();
    step_list.sort_by(|a, b| a.p50_ms_since_request.total_cmp(&b.p50_ms_since_request));
    Ok(P1 {
        runs: cfg.runs,
        targets: vec![
            Target {
                description: format!("ready p50 {:.2} ms <= 10 ms", ready.p50_ms),
                met: ready.p50_ms <= 10.0,
            },
            Target {
                description: format!(
                    "ratio to the fresh import in a sandbox 1/{:.0} <= 1/40",
                    1.0 / ratio.max(1e-9)
                ),
                met: ratio <= 1.0 / 40.0,
            },
        ],
        ready,
        acquire: Stats::from_ms(acquire),
        first_result: Stats::from_ms(first),
        steps: step_list,
        baseline_sandbox,
        baseline_plain: (!base_plain.is_empty()).then(|| Stats::from_ms(base_plain)),
        ratio_p50: ratio,
    })
}

async fn p2(t: &Template, cfg: &KernelBenchConfig, p1_acquire_p50: f64) -> Result<P2> {
    let data_dir = tempfile_dir()?;
    let data_file = data_dir.join("train.csv");
    std::fs::write(&data_file, "a,b\n1,2\n")?;
    let (mut plain, mut with_data, mut first) = (vec![], vec![], vec![]);
    for i in 0..cfg.runs * 2 {
        if !t.wait_pool(cfg.pool_size, Duration::from_secs(60)).await {
            return Err(KernelBenchError::Baseline(format!(
                "the pool did not refill to {} within 60 s: {:?}",
                cfg.pool_size,
                t.stats()
            )));
        }
        let opts = if i % 2 == 0 {
            AcquireOptions::default()
        } else {
            AcquireOptions {
                data: vec![DataMount::new(&data_file, "/data/train.csv")],
                ..AcquireOptions::default()
            }
        };
        let t0 = Instant::now();
        let mut sb = t.acquire(opts).await?;
        let acquired = t0.elapsed();
        let cell = sb.execute("1+1", Duration::from_secs(30)).await?;
        let first_result = t0.elapsed();
        check(&cell, "P2's first cell")?;
        if !sb.acquire_timings().pool_hit {
            return Err(KernelBenchError::Baseline(
                "a P2 acquire missed the pool".into(),
            ));
        }
        if i % 2 == 0 {
            plain.push(ms(acquired));
            first.push(ms(first_result));
        } else {
            with_data.push(ms(acquired));
        }
        sb.close().await?;
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    let acquire = Stats::from_ms(plain);
    Ok(P2 {
        runs: cfg.runs,
        pool_size: cfg.pool_size,
        targets: vec![Target {
            description: format!("acquire p50 {:.3} ms <= 1 ms", acquire.p50_ms),
            met: acquire.p50_ms <= 1.0,
        }],
        acquire,
        acquire_with_data: Stats::from_ms(with_data),
        first_result: Stats::from_ms(first),
        p1_acquire_p50_ms: p1_acquire_p50,
    })
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("dsbox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Drives ipykernel through jupyter_client inside the sandbox; prints JSON.
const JUPYTER_SCRIPT: &str = r#"
import json, sys, time
from jupyter_client.manager import start_new_kernel
n, warm = int(sys.argv[1]), int(sys.argv[2])
t0 = time.perf_counter()
km, kc = start_new_kernel(kernel_name="python3")
start_ms = (time.perf_counter() - t0) * 1e3
def roundtrip():
    t = time.perf_counter()
    mid = kc.execute("1+1", store_history=False)
    got = None
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != mid:
            continue
        if msg["msg_type"] == "execute_result":
            got = msg["content"]["data"].get("text/plain")
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=60)
    took = (time.perf_counter() - t) * 1e3
    if got != "2" or reply["content"]["status"] != "ok":
        raise SystemExit("unexpected reply: %r %r" % (got, reply["content"]))
    return took
for _ in range(warm):
    roundtrip()
res = [roundtrip() for _ in range(n)]
print(json.dumps({"start_ms": start_ms, "roundtrip_ms": res}))
sys.stdout.flush()
kc.stop_channels()
km.shutdown_kernel(now=True)
"#;

/// Run `script` with the rootfs's python in a sandbox like the kernels', `input` on its
/// stdin, and return the last JSON line it prints; `hint` says what a missing result may
/// mean.
fn script_in_sandbox(
    config: &TemplateConfig,
    script: &str,
    args: &[String],
    input: Vec<u8>,
    timeout: Duration,
    what: &str,
    hint: &str,
) -> Result<serde_json::Value> {
    let mut spec = config.shell_spec();
    let mut argv = vec![
        config.rootfs.python.display().to_string(),
        "-c".to_owned(),
        script.to_owned(),
    ];
    argv.extend(args.iter().cloned());
    spec.process = Some(ProcessSpec::new(argv));
    spec.limits.timeout = Some(timeout);
    let (mut r, w) = std::io::pipe()?;
    let (er, ew) = std::io::pipe()?;
    let (stdin, writer) = if input.is_empty() {
        (Stdio::Null, None)
    } else {
        // A thread: the input may be larger than a pipe holds.
        let (ir, mut iw) = std::io::pipe()?;
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = iw.write_all(&input);
        });
        (Stdio::Fd(ir.into()), Some(writer))
    };
    let mut sb = Sandbox::spawn(
        &spec,
        SpawnOptions {
            stdin,
            stdout: Stdio::Fd(w.into()),
            stderr: Stdio::Fd(ew.into()),
            ..SpawnOptions::default()
        },
    )?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = r.read_to_string(&mut out);
        out
    });
    let ereader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = er.take(1 << 20).read_to_string(&mut out);
        out
    });
    let report = sb.wait()?;
    sb.destroy()?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let out = reader.join().unwrap_or_default();
    let err = ereader.join().unwrap_or_default();
    out.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            KernelBenchError::Baseline(format!(
                "{what} exited with {} without a result{hint}; its stderr: {}",
                report.code(),
                err.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            ))
        })
}

fn jupyter_baseline(config: &TemplateConfig, n: usize) -> Result<(f64, Vec<f64>)> {
    let parsed = script_in_sandbox(
        config,
        JUPYTER_SCRIPT,
        &[n.to_string(), "50".to_owned()],
        Vec::new(),
        Duration::from_secs(600),
        "the Jupyter baseline",
        " (does the rootfs hold jupyter_client and ipykernel? use the `bench` profile)",
    )?;
    let start = parsed["start_ms"].as_f64().unwrap_or(0.0);
    let rts = parsed["roundtrip_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    Ok((start, rts))
}

/// P6's floor: the zygote's interpreter, set up by the zygote's own code
/// (`preloaded_interpreter`: thread pins, the kernel's modules and the preload, frozen
/// GC; the two programs arrive as JSON on stdin, as the zygote receives them on its
/// socket), forking children that exit at once, `width` in flight; prints CPU and faults
/// of the parent and of the children.
const BARE_FORK_SCRIPT: &str = r#"
import json, sys, types
for name, src in json.load(sys.stdin).items():
    m = types.ModuleType(name)
    m.__file__ = "<%s>" % name
    sys.modules[name] = m
    exec(compile(src, m.__file__, "exec"), m.__dict__)
n, width = int(sys.argv[1]), int(sys.argv[2])
_, failed = sys.modules["dsbox_zygote"].preloaded_interpreter(sys.argv[3:])
if failed:
    sys.exit("preload failed: %r" % (failed,))
import os, resource, time
def usage():
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime,
            me.ru_minflt, kids.ru_minflt)
u0 = usage()
t0 = time.perf_counter()
live = 0
for _ in range(n):
    if live >= width:
        os.wait()
        live -= 1
    if os.fork() == 0:
        os._exit(0)
    live += 1
while live:
    os.wait()
    live -= 1
seconds = time.perf_counter() - t0
u1 = usage()
print(json.dumps({"seconds": seconds, "parent_cpu_s": u1[0] - u0[0],
                  "children_cpu_s": u1[1] - u0[1], "parent_faults": u1[2] - u0[2],
                  "children_faults": u1[3] - u0[3]}))
"#;

fn bare_fork_baseline(
    config: &TemplateConfig,
    forks: usize,
    width: usize,
    when: &'static str,
) -> Result<BareFork> {
    let mut args = vec![forks.to_string(), width.to_string()];
    args.extend(config.preload.iter().cloned());
    let programs = serde_json::json!({
        "dsbox_kernel": dsbox_kernel::KERNEL_PY,
        "dsbox_zygote": dsbox_kernel::ZYGOTE_PY,
    });
    let v = script_in_sandbox(
        config,
        BARE_FORK_SCRIPT,
        &args,
        programs.to_string().into_bytes(),
        Duration::from_secs(600),
        "the bare-fork baseline",
        "",
    )?;
    bare_fork_from(&v, forks, width, when)
}

/// A [`BareFork`] from what the floor's script printed.
fn bare_fork_from(
    v: &serde_json::Value,
    forks: usize,
    width: usize,
    when: &'static str,
) -> Result<BareFork> {
    // A field missing or a zero duration would make a rate out of nothing: refuse it.
    let field = |k: &str| {
        v[k].as_f64().ok_or_else(|| {
            KernelBenchError::Baseline(format!("the bare-fork baseline printed no `{k}`: {v}"))
        })
    };
    let n = forks.max(1) as f64;
    let seconds = field("seconds")?;
    if seconds <= 0.0 {
        return Err(KernelBenchError::Baseline(format!(
            "the bare-fork baseline took {seconds} s for {forks} forks: {v}"
        )));
    }
    Ok(BareFork {
        when,
        forks,
        concurrency: width,
        seconds,
        rate_per_s: forks as f64 / seconds,
        parent_cpu_ms: field("parent_cpu_s")? * 1e3 / n,
        children_cpu_ms: field("children_cpu_s")? * 1e3 / n,
        parent_faults: field("parent_faults")? / n,
        children_faults: field("children_faults")? / n,
    })
}

async fn p3(t: &Template, config: &TemplateConfig, cfg: &KernelBenchConfig) -> Result<P3> {
    let mut sb = t.acquire(AcquireOptions::default()).await?;
    for _ in 0..200 {
        check(
            &sb.execute("1+1", Duration::from_secs(30)).await?,
            "P3 warm-up",
        )?;
    }
    let (mut client, mut kernel) = (vec![], vec![]);
    for _ in 0..cfg.roundtrips {
        let t0 = Instant::now();
        let cell = sb.execute("1+1", Duration::from_secs(30)).await?;
        client.push(ms(t0.elapsed()));
        check(&cell, "P3")?;
        if let Some(k) = cell.timings.kernel_run {
            kernel.push(ms(k));
        }
    }
    sb.close().await?;
    let dsbox = Stats::from_ms(client);
    let c = config.clone();
    let n = cfg.roundtrips;
    let jupyter = tokio::task::spawn_blocking(move || jupyter_baseline(&c, n))
        .await
        .map_err(|e| KernelBenchError::Baseline(e.to_string()))?;
    let (jupyter, start, error) = match jupyter {
        Ok((start, rts)) => (Some(Stats::from_ms(rts)), Some(start), None),
        Err(e) => (None, None, Some(e.to_string())),
    };
    let ratio = jupyter.as_ref().map(|j| dsbox.p50_ms / j.p50_ms.max(1e-9));
    let mut targets = vec![Target {
        description: format!("p50 {:.3} ms <= 0.3 ms", dsbox.p50_ms),
        met: dsbox.p50_ms <= 0.3,
    }];
    if let Some(r) = ratio {
        targets.push(Target {
            description: format!("ratio to Jupyter 1/{:.0} <= 1/15", 1.0 / r.max(1e-9)),
            met: r <= 1.0 / 15.0,
        });
    }
    Ok(P3 {
        roundtrips: cfg.roundtrips,
        dsbox,
        dsbox_kernel_side: Stats::from_ms(kernel),
        jupyter,
        jupyter_start_ms: start,
        jupyter_error: error,
        ratio_p50: ratio,
        targets,
    })
}

fn pss_bytes(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Acquire `n` sandboxes, `concurrency` at a time.
async fn acquire_many(t: &Template, n: usize, concurrency: usize) -> Result<Vec<SandboxKernel>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let t = t.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            t.acquire(AcquireOptions::default()).await
        }));
    }
    let mut out = Vec::with_capacity(n);
    for task in tasks {
        out.push(
            task.await
                .map_err(|e| KernelBenchError::Baseline(e.to_string()))??,
        );
    }
    Ok(out)
}

async fn p5(t: &Template, cfg: &KernelBenchConfig) -> Result<P5> {
    let avail_before = meminfo("MemAvailable:");
    let started = Instant::now();
    let mut live = acquire_many(t, cfg.live, cfg.concurrency).await?;
    let create_seconds = started.elapsed().as_secs_f64();
    // Each holds pandas + numpy (preloaded) and has run a cell that uses them.
    let mut answered = 0;
    for sb in live.iter_mut() {
        let cell = sb
            .execute("import pandas, numpy\n1+1", Duration::from_secs(60))
            .await?;
        if cell.result_text() == Some("2") {
            answered += 1;
        }
    }
    let mut pss_sandboxes = 0u64;
    let mut processes = 0usize;
    for sb in &live {
        let Some(leaf) = sb.cgroup_paths().into_iter().next() else {
            continue;
        };
        for pid in dsbox_runtime::cgroups::read_procs(&leaf) {
            pss_sandboxes += pss_bytes(pid);
            processes += 1;
        }
    }
    let pss_zygote = t.zygote_pid().map_or(0, pss_bytes);
    let avail_after = meminfo("MemAvailable:");
    let runtime_rss = own_rss();
    let total = pss_sandboxes + pss_zygote;
    for sb in live.drain(..) {
        sb.close().await?;
    }
    let per = total / cfg.live.max(1) as u64;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Ok(P5 {
        live: cfg.live,
        create_seconds,
        create_rate_per_s: cfg.live as f64 / create_seconds.max(1e-9),
        answered,
        processes,
        pss_total_bytes: total,
        pss_zygote_bytes: pss_zygote,
        pss_sandboxes_bytes: pss_sandboxes,
        pss_per_sandbox_bytes: per,
        mem_available_delta_bytes: avail_before as i64 - avail_after as i64,
        runtime_rss_bytes: runtime_rss,
        targets: vec![
            Target {
                description: format!(
                    "{answered} of {} alive answered `1+1` (target: 1000)",
                    cfg.live
                ),
                met: answered == cfg.live && cfg.live >= 1000,
            },
            Target {
                description: format!(
                    "total PSS {:.2} GiB <= 6 GiB for 1000 ({:.2} MiB per sandbox)",
                    gib(total),
                    per as f64 / (1u64 << 20) as f64
                ),
                met: per * 1000 <= 6 << 30,
            },
        ],
    })
}

/// What a leak would show: mounts of this namespace, our cgroup leaves, our fds, our
/// child processes, our state records, the zygote's unreaped children.
async fn leak_counts(t: &Template) -> LeakCounts {
    let me = std::process::id() as i32;
    let prefix = format!("{me:x}-");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().count())
        .unwrap_or(0);
    let cgroup_leaves = dsbox_runtime::sandbox::cgroup_system()
        .sandbox_parents(None)
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .count();
    let runtime_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let child_processes = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|p| p.parse::<i32>().ok())
                        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
                        .and_then(|s| {
                            s.rfind(')').and_then(|i| {
                                s[i + 2..].split_whitespace().nth(1)?.parse::<i32>().ok()
                            })
                        })
                        == Some(me)
                })
                .count()
        })
        .unwrap_or(0);
    let state_records =
        dsbox_runtime::state::StateRecord::list(Path::new(dsbox_runtime::state::STATE_DIR))
            .into_iter()
            .filter(|(_, r)| r.as_ref().is_some_and(|r| r.runtime_pid == me))
            .count();
    let zygote_children = t.zygote_children().await.unwrap_or(u64::MAX);
    LeakCounts {
        mounts,
        cgroup_leaves,
        runtime_fds,
        child_processes,
        state_records,
        zygote_children,
    }
}

/// Busy and total jiffies of all CPUs (the first line of /proc/stat).
fn cpu_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Wait (up to `limit`) until the machine is at least 85% idle over 300 ms: a sustained
/// rate measured while the kernel still tears down a previous figure's thousand
/// sandboxes (network namespaces and cgroups go away in kernel workers) would charge that
/// work to this one. Returns the wait and whether the machine went idle.
async fn settle(limit: Duration) -> (Duration, bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        let Some((busy0, total0)) = cpu_jiffies() else {
            return (start.elapsed(), false);
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Some((busy1, total1)) = cpu_jiffies() else {
            return (start.elapsed(), false);
        };
        let (busy, total) = (busy1.saturating_sub(busy0), total1.saturating_sub(total0));
        if total > 0 && busy * 100 <= total * 15 {
            return (start.elapsed(), true);
        }
    }
    (start.elapsed(), false)
}

/// Bare forks per baseline run: enough for a steady rate, a few seconds at most.
const BARE_FORKS: usize = 2000;

async fn bare_fork_run(
    config: &TemplateConfig,
    cfg: &KernelBenchConfig,
    when: &'static str,
) -> Result<BareFork> {
    let (c, width) = (config.clone(), cfg.concurrency.max(1));
    let forks = cfg.cycles.clamp(100, BARE_FORKS);
    tokio::task::spawn_blocking(move || bare_fork_baseline(&c, forks, width, when))
        .await
        .map_err(|e| KernelBenchError::Baseline(e.to_string()))?
}

async fn p6(t: &Template, config: &TemplateConfig, cfg: &KernelBenchConfig) -> Result<P6> {
    let mut baseline_bare_fork = Vec::new();
    let mut baseline_error = None;
    match bare_fork_run(config, cfg, "before").await {
        Ok(b) => baseline_bare_fork.push(b),
        Err(e) => baseline_error = Some(e.to_string()),
    }
    let (settle_time, settled) = settle(Duration::from_secs(30)).await;
    let before = leak_counts(t).await;
    let workers = cfg.concurrency.max(1);
    let per_worker = cfg.cycles / workers;
    let cycles = per_worker * workers;
    let zygote = t.zygote_pid().unwrap_or(0);
    let me = std::process::id() as i32;
    // Started with the first sandbox (the zygote's), so it runs by now.
    let spawner = dsbox_runtime::process::spawner::pid().unwrap_or(0);
    let (cpu_me, cpu_zygote, cpu_spawner) = (proc_stat(me), proc_stat(zygote), proc_stat(spawner));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let every_cycle = cfg.cell_every_cycle;
    for _ in 0..workers {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(per_worker);
            for i in 0..per_worker {
                let t0 = Instant::now();
                let mut sb = t.acquire(AcquireOptions::default()).await?;
                if every_cycle || i % 100 == 0 {
                    check(&sb.execute("1+1", Duration::from_secs(30)).await?, "P6")?;
                }
                sb.close().await?;
                times.push(ms(t0.elapsed()));
            }
            Ok::<_, KernelBenchError>(times)
        }));
    }
    let mut times = Vec::with_capacity(cycles);
    for task in tasks {
        times.extend(
            task.await
                .map_err(|e| KernelBenchError::Baseline(e.to_string()))??,
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let (cpu_me2, cpu_zygote2, cpu_spawner2) =
        (proc_stat(me), proc_stat(zygote), proc_stat(spawner));
    // SAFETY: sysconf has no preconditions.
    let tick_ms = 1e3 / (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64);
    let n = cycles.max(1) as f64;
    let per = |a: &[u64; 8], b: &[u64; 8], i: usize, j: usize| {
        (b[i] + b[j]).saturating_sub(a[i] + a[j]) as f64 * tick_ms / n
    };
    let cpu_per_cycle = CpuPerCycle {
        runtime_ms: per(&cpu_me, &cpu_me2, 4, 5),
        spawner_ms: per(&cpu_spawner, &cpu_spawner2, 4, 5),
        shells_ms: per(&cpu_me, &cpu_me2, 6, 7),
        zygote_ms: per(&cpu_zygote, &cpu_zygote2, 4, 5),
        kernels_ms: per(&cpu_zygote, &cpu_zygote2, 6, 7),
        zygote_faults: cpu_zygote2[0].saturating_sub(cpu_zygote[0]) as f64 / n,
        kernel_faults: cpu_zygote2[1].saturating_sub(cpu_zygote[1]) as f64 / n,
        runtime_faults: cpu_me2[0].saturating_sub(cpu_me[0]) as f64 / n,
        spawner_faults: cpu_spawner2[0].saturating_sub(cpu_spawner[0]) as f64 / n,
        shell_faults: cpu_me2[1].saturating_sub(cpu_me[1]) as f64 / n,
    };
    // Reaping by the zygote is asynchronous: give it a moment.
    let mut after = leak_counts(t).await;
    for _ in 0..50 {
        if after == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = leak_counts(t).await;
    }
    let leak_free = after == before;
    let rate = cycles as f64 / seconds.max(1e-9);
    if baseline_error.is_none() {
        match bare_fork_run(config, cfg, "after").await {
            Ok(b) => baseline_bare_fork.push(b),
            Err(e) => baseline_error = Some(e.to_string()),
        }
    }
    let share_of_bare_fork_rate = (!baseline_bare_fork.is_empty()).then(|| {
        let mean = baseline_bare_fork.iter().map(|b| b.rate_per_s).sum::<f64>()
            / baseline_bare_fork.len() as f64;
        rate / mean.max(1e-9)
    });
    Ok(P6 {
        cycles,
        concurrency: workers,
        seconds,
        rate_per_s: rate,
        settle_ms: ms(settle_time),
        settled,
        cycle: Stats::from_ms(times),
        cell_every_cycle: cfg.cell_every_cycle,
        cpu_per_cycle,
        baseline_bare_fork,
        baseline_error,
        share_of_bare_fork_rate,
        targets: vec![
            Target {
                description: format!("{rate:.0} create+destroy per second >= 150"),
                met: rate >= 150.0,
            },
            Target {
                description: format!("no leaks after {cycles} cycles (target: 10000)"),
                met: leak_free && cycles >= 10_000,
            },
        ],
        before,
        after,
        leak_free,
    })
}

impl KernelBenchResult {
    /// Human-readable summary.
    pub fn summary(&self) -> String {
        let m = &self.machine;
        let mut s = format!(
            "dsbox bench kernel: rootfs {} ({}), preload {} ({} cores, {}, kernel {}, cgroup {}, landlock ABI {}); zygote started in {:.0} ms\n",
            self.rootfs,
            &self.rootfs_hash[..self.rootfs_hash.len().min(19)],
            self.preload.join(","),
            m.cores,
            m.cpu_model,
            m.kernel,
            m.cgroup_mode,
            m.landlock_abi,
            self.zygote_start_ms
        );
        let row = |name: &str, st: &Stats| {
            format!(
                "  {name:<44} p50 {:>9.3} ms  p99 {:>9.3} ms  (n={})\n",
                st.p50_ms, st.p99_ms, st.n
            )
        };
        let targets = |ts: &[Target]| {
            ts.iter()
                .map(|t| {
                    format!(
                        "  target: {} — {}\n",
                        t.description,
                        if t.met { "met" } else { "NOT met" }
                    )
                })
                .collect::<String>()
        };
        if let Some(p) = &self.p1 {
            s += "P1 new sandbox + kernel holding the preload (zygote fork, no pool)\n";
            s += &row("request -> ready for the first cell", &p.ready);
            s += &row("request -> acquire returned", &p.acquire);
            s += &row("request -> first `1+1` result", &p.first_result);
            s += &row(
                "baseline: fresh import, sandbox (spawn->exit)",
                &p.baseline_sandbox,
            );
            if let Some(b) = &p.baseline_plain {
                s += &row("baseline: fresh import, plain process", b);
            }
            s += "  steps (p50 ms since the request):";
            for st in &p.steps {
                s += &format!(" {} {:.2};", st.step, st.p50_ms_since_request);
            }
            s += "\n";
            s += &targets(&p.targets);
        }
        if let Some(p) = &self.p2 {
            s += &format!("P2 from a warm pool of {}\n", p.pool_size);
            s += &row("request -> acquire returned", &p.acquire);
            s += &row("same, one data file attached", &p.acquire_with_data);
            s += &row("request -> first `1+1` result", &p.first_result);
            s += &format!("  baseline: P1 acquire p50 {:.3} ms\n", p.p1_acquire_p50_ms);
            s += &targets(&p.targets);
        }
        if let Some(p) = &self.p3 {
            s += "P3 `1+1` round trip\n";
            s += &row("dsbox KernelClient, sandboxed kernel", &p.dsbox);
            s += &row("  of which inside the kernel", &p.dsbox_kernel_side);
            match (&p.jupyter, &p.jupyter_error) {
                (Some(j), _) => {
                    s += &row("baseline: Jupyter (jupyter_client, sandbox)", j);
                    s += &format!(
                        "  Jupyter kernel start {:.0} ms\n",
                        p.jupyter_start_ms.unwrap_or(0.0)
                    );
                }
                (None, Some(e)) => s += &format!("  baseline: Jupyter failed: {e}\n"),
                _ => {}
            }
            s += &targets(&p.targets);
        }
        if let Some(p) = &self.p5 {
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            s += &format!(
                "P5 {} sandboxes alive: made in {:.1} s ({:.0}/s), {} answered `1+1`, {} processes\n  PSS total {:.1} MiB (zygote {:.1}, sandboxes {:.1}; {:.2} MiB per sandbox), MemAvailable down {:.1} MiB, runtime RSS {:.1} MiB\n",
                p.live,
                p.create_seconds,
                p.create_rate_per_s,
                p.answered,
                p.processes,
                mib(p.pss_total_bytes),
                mib(p.pss_zygote_bytes),
                mib(p.pss_sandboxes_bytes),
                mib(p.pss_per_sandbox_bytes),
                p.mem_available_delta_bytes as f64 / (1u64 << 20) as f64,
                mib(p.runtime_rss_bytes)
            );
            s += &targets(&p.targets);
        }
        if let Some(p) = &self.p6 {
            s += &format!(
                "P6 {} create+destroy cycles ({}), {} at a time: {:.1} s, {:.0}/s (after {:.1} s waiting for an idle machine{})\n",
                p.cycles,
                if p.cell_every_cycle {
                    "`1+1` in each"
                } else {
                    "`1+1` in every 100th"
                },
                p.concurrency,
                p.seconds,
                p.rate_per_s,
                p.settle_ms / 1e3,
                if p.settled { "" } else { ", which it was not" }
            );
            s += &row("one cycle", &p.cycle);
            let c = &p.cpu_per_cycle;
            s += &format!(
                "  CPU per cycle: runtime {:.2} ms, spawner {:.2} ms, shells (middle + init) {:.2} ms, zygote {:.2} ms, kernels {:.2} ms; page faults per cycle: runtime {:.0}, spawner {:.0}, shells {:.0}, zygote {:.0}, kernels {:.0}\n",
                c.runtime_ms,
                c.spawner_ms,
                c.shells_ms,
                c.zygote_ms,
                c.kernels_ms,
                c.runtime_faults,
                c.spawner_faults,
                c.shell_faults,
                c.zygote_faults,
                c.kernel_faults
            );
            for b in &p.baseline_bare_fork {
                s += &format!(
                    "  baseline {}: bare fork+exit of the preloaded interpreter, {} at a time: {:.0}/s; CPU per fork: parent {:.2} ms, child {:.2} ms; faults: parent {:.0}, child {:.0}\n",
                    b.when,
                    b.concurrency,
                    b.rate_per_s,
                    b.parent_cpu_ms,
                    b.children_cpu_ms,
                    b.parent_faults,
                    b.children_faults
                );
            }
            if let Some(share) = p.share_of_bare_fork_rate {
                s += &format!("  P6 rate / bare-fork rate: {:.0}%\n", share * 100.0);
            }
            if let Some(e) = &p.baseline_error {
                s += &format!("  bare-fork baseline failed: {e}\n");
            }
            s += &format!(
                "  leak check before {:?}\n             after  {:?}\n",
                p.before, p.after
            );
            s += &targets(&p.targets);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_fork_result_is_per_fork_and_a_missing_field_or_zero_duration_is_an_error() {
        let printed = serde_json::json!({
            "seconds": 2.0, "parent_cpu_s": 3.0, "children_cpu_s": 5.0,
            "parent_faults": 100_000.0, "children_faults": 600_000.0,
        });
        let b = bare_fork_from(&printed, 1000, 8, "before").unwrap();
        assert_eq!((b.when, b.forks, b.concurrency), ("before", 1000, 8));
        assert_eq!(b.rate_per_s, 500.0);
        assert_eq!((b.parent_cpu_ms, b.children_cpu_ms), (3.0, 5.0));
        assert_eq!((b.parent_faults, b.children_faults), (100.0, 600.0));

        let mut missing = printed.clone();
        missing.as_object_mut().unwrap().remove("children_cpu_s");
        let e = bare_fork_from(&missing, 1000, 8, "after")
            .unwrap_err()
            .to_string();
        assert!(e.contains("printed no `children_cpu_s`"), "{e}");

        let mut instant = printed;
        instant["seconds"] = 0.0.into();
        let e = bare_fork_from(&instant, 1000, 8, "after")
            .unwrap_err()
            .to_string();
        assert!(e.contains("took 0 s for 1000 forks"), "{e}");
    }
}
