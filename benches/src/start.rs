//! `dsbox bench start`: time from request to exit of `/bin/true` in a full sandbox (every
//! namespace, cgroup limits, seccomp, landlock, capabilities dropped, host rootfs) against
//! a plain fork+exec+wait of `/bin/true`, interleaved in the same run. Also reports the
//! runtime's self-reported timestamps and where the start path spends its time.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::time::{Duration, Instant};

use dsbox_runtime::process::message::monotonic_ns;
use dsbox_runtime::{Sandbox, SandboxSpec, SpawnOptions, Stdio};
use serde::Serialize;

/// Errors of the start benchmark.
#[derive(Debug, thiserror::Error)]
pub enum StartBenchError {
    #[error(transparent)]
    Runtime(#[from] dsbox_runtime::Error),
    #[error(transparent)]
    Spec(#[from] dsbox_runtime::spec::SpecError),
    #[error("the baseline fork+exec of /bin/true failed: {0}")]
    Baseline(String),
    #[error("/bin/true exited with {code} inside the sandbox")]
    BadExit { code: i32 },
}

/// What to run.
#[derive(Clone, Debug)]
pub struct StartConfig {
    /// Measured runs of each kind.
    pub runs: usize,
    /// Unmeasured runs of each kind first.
    pub warmup: usize,
    /// The program (must exit 0).
    pub program: String,
}

impl Default for StartConfig {
    fn default() -> Self {
        Self {
            runs: 300,
            warmup: 20,
            program: "/bin/true".into(),
        }
    }
}

/// Distribution of one measurement, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub n: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Stats {
    /// Percentiles by nearest rank.
    pub fn from_ms(mut v: Vec<f64>) -> Stats {
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1);
        let pct = |p: f64| {
            v.get(((p * n as f64).ceil() as usize).clamp(1, n) - 1)
                .copied()
                .unwrap_or(0.0)
        };
        Stats {
            n: v.len(),
            p50_ms: pct(0.50),
            p90_ms: pct(0.90),
            p99_ms: pct(0.99),
            mean_ms: v.iter().sum::<f64>() / n as f64,
            min_ms: v.first().copied().unwrap_or(0.0),
            max_ms: v.last().copied().unwrap_or(0.0),
        }
    }
}

/// Facts about the machine the figures come from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub cgroup_mode: String,
    pub landlock_abi: u32,
}

impl Machine {
    /// Read from /proc.
    pub fn detect() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            cgroup_mode: dsbox_runtime::sandbox::cgroup_system().version().to_owned(),
            landlock_abi: dsbox_runtime::landlock::kernel_abi(),
        }
    }
}

/// Median time of one start-path step, measured from the request.
#[derive(Clone, Debug, Serialize)]
pub struct StepProfile {
    pub step: String,
    pub p50_ms_since_request: f64,
}

/// The benchmark's output.
#[derive(Clone, Debug, Serialize)]
pub struct StartResult {
    pub benchmark: &'static str,
    pub program: String,
    pub machine: Machine,
    /// Plain fork + execve + waitpid.
    pub baseline: Stats,
    /// Sandbox request → payload exit seen (wall clock, measured by the benchmark).
    pub sandbox: Stats,
    /// Sandbox request → exit + destroy (cgroup removal, state record).
    pub sandbox_with_cleanup: Stats,
    /// The runtime's own request → ready timestamps.
    pub self_reported_ready: Stats,
    /// The runtime's own request → exit-seen timestamps (compare with `sandbox`).
    pub self_reported_exit: Stats,
    /// An empty shell (`process: None`, what kernels join): spawn until ready, then
    /// destroy. `shell_rate_per_s` is the sequential create+destroy rate.
    pub shell_spawn: Stats,
    pub shell_spawn_destroy: Stats,
    pub shell_rate_per_s: f64,
    pub overhead_p50_ms: f64,
    pub overhead_p99_ms: f64,
    pub ratio_p50: f64,
    pub target_overhead_p50_ms: f64,
    pub target_met: bool,
    pub profile: Vec<StepProfile>,
}

impl StartResult {
    /// Human-readable summary.
    pub fn summary(&self) -> String {
        let m = &self.machine;
        let mut s = format!(
            "dsbox bench start: {} runs each, interleaved ({} cores, {}, kernel {}, cgroup {}, landlock ABI {})\n",
            self.sandbox.n, m.cores, m.cpu_model, m.kernel, m.cgroup_mode, m.landlock_abi
        );
        let row = |name: &str, st: &Stats| {
            format!(
                "  {name:<28} p50 {:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms\n",
                st.p50_ms, st.p90_ms, st.p99_ms
            )
        };
        s += &row("fork+exec (baseline)", &self.baseline);
        s += &row("sandbox, start to exit", &self.sandbox);
        s += &row("sandbox, incl. cleanup", &self.sandbox_with_cleanup);
        s += &row("self-reported ready", &self.self_reported_ready);
        s += &row("self-reported exit", &self.self_reported_exit);
        s += &row("shell spawn (ready)", &self.shell_spawn);
        s += &row("shell spawn + destroy", &self.shell_spawn_destroy);
        s += &format!(
            "  shells created and destroyed: {:.0}/s (sequential)\n",
            self.shell_rate_per_s
        );
        s += &format!(
            "  overhead p50 {:.3} ms, p99 {:.3} ms (target p50 <= {} ms: {})\n",
            self.overhead_p50_ms,
            self.overhead_p99_ms,
            self.target_overhead_p50_ms,
            if self.target_met { "met" } else { "NOT met" }
        );
        s += "  start path (median ms since request):\n";
        for p in &self.profile {
            s += &format!("    {:<20} {:>7.3}\n", p.step, p.p50_ms_since_request);
        }
        s
    }
}

fn baseline_once(path: &CString) -> Result<Duration, StartBenchError> {
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let t = Instant::now();
    // SAFETY: fork; the child only calls execve and _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: argv/envp are NUL-terminated arrays of valid C strings.
        unsafe {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    if pid < 0 {
        return Err(StartBenchError::Baseline("fork failed".into()));
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let elapsed = t.elapsed();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(StartBenchError::Baseline(format!("wait status {status}")));
    }
    Ok(elapsed)
}

struct SandboxRun {
    to_exit: Duration,
    with_cleanup: Duration,
    ready_ns: u64,
    exit_ns: u64,
    steps: Vec<(String, u64)>,
}

fn sandbox_once(spec: &SandboxSpec) -> Result<SandboxRun, StartBenchError> {
    let t = Instant::now();
    let mut sb = Sandbox::spawn(
        spec,
        SpawnOptions {
            stdin: Stdio::Null,
            ..SpawnOptions::default()
        },
    )?;
    let report = sb.wait()?;
    let to_exit = t.elapsed();
    sb.destroy()?;
    let with_cleanup = t.elapsed();
    if report.code() != 0 {
        return Err(StartBenchError::BadExit {
            code: report.code(),
        });
    }
    let tm = &report.timings;
    let req = tm.request_ns;
    let mut steps: Vec<(String, u64)> = vec![("forked".into(), tm.forked_ns - req)];
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for s in &tm.steps {
        let name = serde_json::to_value(s.step)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        // Steps that repeat (one per mount, with DSBOX_PROFILE_MOUNTS=1) get a suffix.
        let k = seen.entry(name.clone()).or_default();
        *k += 1;
        let name = if *k > 1 { format!("{name}#{k}") } else { name };
        steps.push((name, s.at_ns.saturating_sub(req)));
    }
    steps.push(("ready".into(), tm.ready_ns - req));
    Ok(SandboxRun {
        to_exit,
        with_cleanup,
        ready_ns: tm.ready_ns - req,
        exit_ns: tm.exited_ns.unwrap_or(tm.ready_ns) - req,
        steps,
    })
}

/// A sandbox whose payload is `spec`'s process, with no stdio, run to its end and
/// destroyed; the payload's exit code. The eval and synth baselines' "fresh python".
pub(crate) fn run_to_exit(spec: &SandboxSpec) -> Result<i32, String> {
    let opts = SpawnOptions {
        stdin: Stdio::Null,
        stdout: Stdio::Null,
        stderr: Stdio::Null,
        extra_fds: Vec::new(),
        die_with_runtime: true,
    };
    let mut sandbox = Sandbox::spawn(spec, opts).map_err(|e| e.to_string())?;
    let report = sandbox.wait().map_err(|e| e.to_string());
    let destroyed = sandbox.destroy().map_err(|e| e.to_string());
    let code = report?.code();
    destroyed?;
    Ok(code)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Run the benchmark.
pub fn run(cfg: &StartConfig) -> Result<StartResult, StartBenchError> {
    let spec = SandboxSpec::builder()
        .with_command([cfg.program.as_str()])
        .with_memory(512 << 20)
        .with_pids(256)
        .build()?;
    let path =
        CString::new(cfg.program.as_str()).map_err(|e| StartBenchError::Baseline(e.to_string()))?;
    for _ in 0..cfg.warmup {
        baseline_once(&path)?;
        sandbox_once(&spec)?;
    }
    let _ = monotonic_ns();
    let (mut base, mut sb, mut sbc, mut ready, mut exit) = (vec![], vec![], vec![], vec![], vec![]);
    let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..cfg.runs {
        // Alternate the order so neither side always runs on a warmer cache.
        let b;
        let s;
        if i % 2 == 0 {
            b = baseline_once(&path)?;
            s = sandbox_once(&spec)?;
        } else {
            s = sandbox_once(&spec)?;
            b = baseline_once(&path)?;
        }
        base.push(ms(b));
        sb.push(ms(s.to_exit));
        sbc.push(ms(s.with_cleanup));
        ready.push(s.ready_ns as f64 / 1e6);
        exit.push(s.exit_ns as f64 / 1e6);
        for (name, at) in s.steps {
            steps.entry(name).or_default().push(at as f64 / 1e6);
        }
    }
    // Shells: what the kernel crate creates for every kernel.
    let mut shell_spec = SandboxSpec::default();
    shell_spec.limits.memory = Some(512 << 20);
    shell_spec.limits.pids = Some(256);
    let (mut shell_ready, mut shell_total) = (vec![], vec![]);
    let shells_started = Instant::now();
    for _ in 0..cfg.runs {
        let t = Instant::now();
        let sb = Sandbox::spawn(&shell_spec, SpawnOptions::default())?;
        shell_ready.push(ms(t.elapsed()));
        sb.destroy()?;
        shell_total.push(ms(t.elapsed()));
    }
    let shell_rate_per_s = cfg.runs as f64 / shells_started.elapsed().as_secs_f64();
    let baseline = Stats::from_ms(base);
    let sandbox = Stats::from_ms(sb);
    let mut profile: Vec<StepProfile> = steps
        .into_iter()
        .map(|(step, v)| StepProfile {
            step,
            p50_ms_since_request: Stats::from_ms(v).p50_ms,
        })
        .collect();
    profile.sort_by(|a, b| a.p50_ms_since_request.total_cmp(&b.p50_ms_since_request));
    let overhead_p50_ms = sandbox.p50_ms - baseline.p50_ms;
    let target = 3.0;
    Ok(StartResult {
        benchmark: "start",
        program: cfg.program.clone(),
        machine: Machine::detect(),
        overhead_p50_ms,
        overhead_p99_ms: sandbox.p99_ms - baseline.p99_ms,
        ratio_p50: sandbox.p50_ms / baseline.p50_ms.max(1e-9),
        target_overhead_p50_ms: target,
        target_met: overhead_p50_ms <= target,
        baseline,
        sandbox,
        sandbox_with_cleanup: Stats::from_ms(sbc),
        shell_spawn: Stats::from_ms(shell_ready),
        shell_spawn_destroy: Stats::from_ms(shell_total),
        shell_rate_per_s,
        self_reported_ready: Stats::from_ms(ready),
        self_reported_exit: Stats::from_ms(exit),
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::Stats;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = Stats::from_ms((1..=100).map(f64::from).collect());
        assert_eq!((s.p50_ms, s.p90_ms, s.p99_ms), (50.0, 90.0, 99.0));
        assert_eq!((s.min_ms, s.max_ms), (1.0, 100.0));
    }
}
