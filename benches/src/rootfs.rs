//! `dsbox bench rootfs`: the rootfs figures of issue 3, measured in one run.
//!
//! 1. Build time of a profile into a fresh temporary store, twice: first with an empty
//!    (cold) package cache, then with the cache the first build filled (warm). Both caches
//!    are temporary directories; the user's own cache is never read or written.
//! 2. Size of the built environment (bytes, files, packages) from its manifest.
//! 3. `python -c "import MODULE"` with the built environment, outside (a plain child
//!    process) and inside a sandbox (host root, the environment bound read-only at
//!    /opt/dsbox/env), interleaved, with the same environment variables on both sides. The
//!    python process times the import statement itself (`time.process_time()` for CPU,
//!    user+sys; `time.perf_counter()` for wall) and reports its whole CPU time at exit; the
//!    benchmark times spawn to exit. Import CPU time is the fair comparison on a shared
//!    machine, and issue 3 asks for inside within 10% of outside.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dsbox_rootfs::{BuildOptions, Progress, RootfsLayout, Store};
use dsbox_runtime::spec::{Mount, ProcessSpec, Root};
use dsbox_runtime::{Sandbox, SandboxSpec, SpawnOptions, Stdio};
use serde::Serialize;

use crate::start::{Machine, Stats};

/// Errors of the rootfs benchmark.
#[derive(Debug, thiserror::Error)]
pub enum RootfsBenchError {
    #[error(transparent)]
    Rootfs(#[from] dsbox_rootfs::RootfsError),
    #[error(transparent)]
    Runtime(#[from] dsbox_runtime::Error),
    #[error(transparent)]
    Spec(#[from] dsbox_runtime::spec::SpecError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "`import {module}` failed {side} the sandbox (exit {code}): {stderr}; pick a module the profile holds with --import"
    )]
    ImportFailed {
        module: String,
        side: &'static str,
        code: i32,
        stderr: String,
    },
    #[error("the {side} run did not print its three timings: {stdout:?}")]
    NoCpuTime { side: &'static str, stdout: String },
    #[error(
        "the built rootfs `{name}` is a directory tree, not host layout; this bench times host-layout profiles"
    )]
    NotHostLayout { name: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsBenchError + '_ {
    move |source| RootfsBenchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct RootfsBenchConfig {
    /// The profile to build.
    pub profile: String,
    /// Measured import runs on each side.
    pub runs: usize,
    /// The module imported (must be in the profile).
    pub module: String,
    /// The user's profile directory (None: built-in profiles only).
    pub profiles_dir: Option<PathBuf>,
}

/// One build into a fresh store.
#[derive(Clone, Debug, Serialize)]
pub struct BuildTiming {
    /// Wall time of `dsbox_rootfs::build`, measured by the benchmark.
    pub seconds: f64,
    /// What the builder recorded in the manifest.
    pub manifest_build_seconds: f64,
    pub content_hash: String,
}

/// Size of the built environment, from its manifest.
#[derive(Clone, Debug, Serialize)]
pub struct SizeFigures {
    pub bytes: u64,
    pub files: u64,
    pub packages: usize,
}

/// One side of the import comparison.
#[derive(Clone, Debug, Serialize)]
pub struct ImportSide {
    /// The `import` statement alone, CPU (user+sys of the process, `time.process_time()`
    /// before and after it).
    pub import_cpu: Stats,
    /// The `import` statement alone, wall clock (`time.perf_counter()` around it).
    pub import_wall: Stats,
    /// The whole python process, CPU (`time.process_time()` at exit: interpreter start,
    /// the import, and inside the sandbox the setup the payload does before its execve).
    pub process_cpu: Stats,
    /// Spawn to exit seen, measured by the benchmark (for the sandbox: `Sandbox::spawn` to
    /// `wait` returning; destroy not counted).
    pub process_wall: Stats,
}

/// The benchmark's output.
#[derive(Clone, Debug, Serialize)]
pub struct RootfsResult {
    pub benchmark: &'static str,
    pub profile: String,
    pub installer: String,
    pub python_version: String,
    pub machine: Machine,
    /// Empty package cache.
    pub build_cold_cache: BuildTiming,
    /// The cache the cold build filled.
    pub build_warm_cache: BuildTiming,
    pub size: SizeFigures,
    /// `import MODULE`.
    pub module: String,
    pub import_outside: ImportSide,
    pub import_inside: ImportSide,
    /// inside / outside of the medians of `import_cpu` (the figure issue 3 asks for).
    pub import_cpu_ratio_p50: f64,
    /// inside / outside of the medians of `import_wall` (noisier on a shared machine).
    pub import_wall_ratio_p50: f64,
    /// inside / outside of the medians of `process_cpu`.
    pub process_cpu_ratio_p50: f64,
    /// inside / outside of the medians of `process_wall` (includes the sandbox's start).
    pub process_wall_ratio_p50: f64,
    /// `import_cpu_ratio_p50 <= 1.10` (issue 3: `import` inside within 10% of outside).
    pub within_10_percent: bool,
}

impl RootfsResult {
    /// Human-readable summary.
    pub fn summary(&self) -> String {
        let m = &self.machine;
        let mut s = format!(
            "dsbox bench rootfs: profile {} ({}, Python {}; {} cores, {}, kernel {})\n",
            self.profile, self.installer, self.python_version, m.cores, m.cpu_model, m.kernel
        );
        s += &format!(
            "  build, cold package cache   {:>8.1} s\n  build, warm package cache   {:>8.1} s\n",
            self.build_cold_cache.seconds, self.build_warm_cache.seconds
        );
        s += &format!(
            "  size                        {:>8.1} MB, {} files, {} packages\n",
            self.size.bytes as f64 / 1e6,
            self.size.files,
            self.size.packages
        );
        s += &format!(
            "  `import {}`, {} runs each, interleaved:   outside p50 / p99      inside p50 / p99    ratio p50\n",
            self.module, self.import_inside.import_cpu.n
        );
        let row = |name: &str, o: &Stats, i: &Stats, r: f64| {
            format!(
                "    {name:<28} {:>8.1} / {:>8.1} ms  {:>8.1} / {:>8.1} ms  {r:>7.3}\n",
                o.p50_ms, o.p99_ms, i.p50_ms, i.p99_ms
            )
        };
        let (o, i) = (&self.import_outside, &self.import_inside);
        s += &row(
            "import, CPU",
            &o.import_cpu,
            &i.import_cpu,
            self.import_cpu_ratio_p50,
        );
        s += &row(
            "import, wall",
            &o.import_wall,
            &i.import_wall,
            self.import_wall_ratio_p50,
        );
        s += &row(
            "whole process, CPU",
            &o.process_cpu,
            &i.process_cpu,
            self.process_cpu_ratio_p50,
        );
        s += &row(
            "whole process, wall",
            &o.process_wall,
            &i.process_wall,
            self.process_wall_ratio_p50,
        );
        s += &format!(
            "  import CPU inside within 10% of outside: {}\n",
            if self.within_10_percent { "yes" } else { "NO" }
        );
        s
    }
}

/// The python snippet: time the import, then print import CPU, import wall and the
/// process's CPU so far, in seconds. `time` is built into the interpreter (no file read).
fn snippet(module: &str) -> String {
    format!(
        "import time\nc0 = time.process_time(); w0 = time.perf_counter()\nimport {module}\nw1 = time.perf_counter(); c1 = time.process_time()\nprint(c1 - c0, w1 - w0, c1)"
    )
}

/// What one run measured, in milliseconds.
struct Sample {
    import_cpu: f64,
    import_wall: f64,
    process_cpu: f64,
    process_wall: f64,
}

fn parse_sample(
    stdout: &str,
    process_wall: f64,
    side: &'static str,
) -> Result<Sample, RootfsBenchError> {
    let v: Vec<f64> = stdout
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|x| x.parse::<f64>().ok())
        .collect();
    match v[..] {
        [import_cpu, import_wall, process_cpu] => Ok(Sample {
            import_cpu: import_cpu * 1000.0,
            import_wall: import_wall * 1000.0,
            process_cpu: process_cpu * 1000.0,
            process_wall,
        }),
        _ => Err(RootfsBenchError::NoCpuTime {
            side,
            stdout: stdout.to_owned(),
        }),
    }
}

fn build_once(
    store: &Store,
    cfg: &RootfsBenchConfig,
    cache: &Path,
) -> Result<(BuildTiming, dsbox_rootfs::Built), RootfsBenchError> {
    let mut opts = BuildOptions::new(&cfg.profile);
    opts.profiles_dir = cfg.profiles_dir.clone();
    opts.cache_dir = Some(cache.to_path_buf());
    // The previous build wrote (and deleted) over a GB: flush it first so its writeback
    // is not charged to this build.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let t = Instant::now();
    let built = dsbox_rootfs::build(store, &opts, &Progress::hidden())?;
    let seconds = t.elapsed().as_secs_f64();
    Ok((
        BuildTiming {
            seconds,
            manifest_build_seconds: built.seconds,
            content_hash: built.entry.header.content_hash.clone(),
        },
        built,
    ))
}

/// Set on both sides: one BLAS/OpenMP thread (as the agent's sandboxes run), so a
/// library's thread pool does not make the CPU times differ.
const THREAD_ENV: [(&str, &str); 3] = [
    ("OPENBLAS_NUM_THREADS", "1"),
    ("OMP_NUM_THREADS", "1"),
    ("MKL_NUM_THREADS", "1"),
];

/// Outside: the sandbox's environment rebuilt on the host (its defaults PATH, HOME, LANG
/// with host paths, plus [`THREAD_ENV`]), nothing inherited from the benchmark's own.
fn outside_once(
    python: &Path,
    code: &str,
    module: &str,
    home: &Path,
) -> Result<Sample, RootfsBenchError> {
    let bin = python.parent().unwrap_or(Path::new("/"));
    let t = Instant::now();
    let out = std::process::Command::new(python)
        .args(["-c", code])
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
        )
        .env("HOME", home)
        .env("LANG", "C.UTF-8")
        .envs(THREAD_ENV)
        .current_dir(home)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io(python))?;
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        return Err(RootfsBenchError::ImportFailed {
            module: module.to_owned(),
            side: "outside",
            code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    parse_sample(&String::from_utf8_lossy(&out.stdout), wall, "outside")
}

fn inside_once(
    spec: &SandboxSpec,
    scratch: &Path,
    module: &str,
) -> Result<Sample, RootfsBenchError> {
    // The payload's stdout and stderr go to files; read after the exit.
    let out_path = scratch.join("stdout");
    let err_path = scratch.join("stderr");
    let out = std::fs::File::create(&out_path).map_err(io(&out_path))?;
    let err = std::fs::File::create(&err_path).map_err(io(&err_path))?;
    let t = Instant::now();
    let mut sb = Sandbox::spawn(
        spec,
        SpawnOptions {
            stdin: Stdio::Null,
            stdout: Stdio::Fd(OwnedFd::from(out)),
            stderr: Stdio::Fd(OwnedFd::from(err)),
            ..SpawnOptions::default()
        },
    )?;
    let report = sb.wait();
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    sb.destroy()?;
    let report = report?;
    let stdout = std::fs::read_to_string(&out_path).map_err(io(&out_path))?;
    if report.code() != 0 {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(RootfsBenchError::ImportFailed {
            module: module.to_owned(),
            side: "inside",
            code: report.code(),
            stderr: stderr.trim().to_owned(),
        });
    }
    parse_sample(&stdout, wall, "inside")
}

/// Runs the benchmark. Everything it builds lives in temporary directories removed on
/// return.
pub fn run(cfg: &RootfsBenchConfig) -> Result<RootfsResult, RootfsBenchError> {
    let tmp = tempfile::Builder::new()
        .prefix("dsbox-bench-rootfs-")
        .tempdir()
        .map_err(io(&std::env::temp_dir()))?;
    let cache = tmp.path().join("package-cache");
    std::fs::create_dir_all(&cache).map_err(io(&cache))?;

    // Cold: empty cache, fresh store.
    let cold_store = Store::new(tmp.path().join("store-cold"));
    let (build_cold_cache, cold) = build_once(&cold_store, cfg, &cache)?;
    // Only the cache is kept between the two builds: the second store starts empty too.
    std::fs::remove_dir_all(cold_store.root()).map_err(io(cold_store.root()))?;
    drop(cold);

    // Warm: the cache the cold build filled, another fresh store.
    let store = Store::new(tmp.path().join("store-warm"));
    let (build_warm_cache, warm) = build_once(&store, cfg, &cache)?;
    let header = warm.entry.header.clone();
    let rootfs = dsbox_rootfs::open(&store, &header.name)?;
    let RootfsLayout::Host { env_dir } = &rootfs.layout else {
        return Err(RootfsBenchError::NotHostLayout { name: rootfs.name });
    };

    let code = snippet(&cfg.module);
    let host_python = env_dir.join("bin/python");
    let spec = SandboxSpec {
        process: Some(ProcessSpec {
            args: vec![
                rootfs.python.display().to_string(),
                "-c".into(),
                code.clone(),
            ],
            env: THREAD_ENV
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ProcessSpec::default()
        }),
        root: Root::Host,
        mounts: vec![Mount::Bind {
            source: env_dir.clone(),
            destination: dsbox_rootfs::ENV_PATH.into(),
            readonly: true,
        }],
        ..SandboxSpec::default()
    };
    spec.validate()?;
    let scratch = tmp.path().join("io");
    std::fs::create_dir_all(&scratch).map_err(io(&scratch))?;
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).map_err(io(&home))?;

    // One unmeasured run of each: the first import reads the files from disk.
    outside_once(&host_python, &code, &cfg.module, &home)?;
    inside_once(&spec, &scratch, &cfg.module)?;
    let runs = cfg.runs.max(1);
    let (mut outside, mut inside) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Alternate which side goes first, so neither always follows the other.
        if i % 2 == 0 {
            outside.push(outside_once(&host_python, &code, &cfg.module, &home)?);
            inside.push(inside_once(&spec, &scratch, &cfg.module)?);
        } else {
            inside.push(inside_once(&spec, &scratch, &cfg.module)?);
            outside.push(outside_once(&host_python, &code, &cfg.module, &home)?);
        }
    }
    let side = |v: &[Sample]| ImportSide {
        import_cpu: Stats::from_ms(v.iter().map(|s| s.import_cpu).collect()),
        import_wall: Stats::from_ms(v.iter().map(|s| s.import_wall).collect()),
        process_cpu: Stats::from_ms(v.iter().map(|s| s.process_cpu).collect()),
        process_wall: Stats::from_ms(v.iter().map(|s| s.process_wall).collect()),
    };
    let (import_outside, import_inside) = (side(&outside), side(&inside));
    let ratio = |i: &Stats, o: &Stats| {
        if o.p50_ms > 0.0 {
            i.p50_ms / o.p50_ms
        } else {
            f64::NAN
        }
    };
    let (o, i) = (&import_outside, &import_inside);
    let import_cpu_ratio_p50 = ratio(&i.import_cpu, &o.import_cpu);
    let import_wall_ratio_p50 = ratio(&i.import_wall, &o.import_wall);
    let process_cpu_ratio_p50 = ratio(&i.process_cpu, &o.process_cpu);
    let process_wall_ratio_p50 = ratio(&i.process_wall, &o.process_wall);
    Ok(RootfsResult {
        benchmark: "rootfs",
        profile: cfg.profile.clone(),
        installer: header.installer.clone(),
        python_version: header.python_version.clone(),
        machine: Machine::detect(),
        build_cold_cache,
        build_warm_cache,
        size: SizeFigures {
            bytes: header.size_bytes,
            files: header.file_count,
            packages: header.packages.len(),
        },
        module: cfg.module.clone(),
        import_outside,
        import_inside,
        import_cpu_ratio_p50,
        import_wall_ratio_p50,
        process_cpu_ratio_p50,
        process_wall_ratio_p50,
        within_10_percent: import_cpu_ratio_p50 <= 1.10,
    })
}
