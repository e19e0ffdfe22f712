//! `dsbox bench`: measure dsbox against baselines in the same run (JSON with --json).
//!
//! Each benchmark is a variant of [`BenchCommand`]; later issues add theirs (kernel,
//! serve, eval, synth, rootfs) beside `start`.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Start-to-exit of `/bin/true` in a full sandbox vs a plain fork+exec, interleaved.
    Start(StartArgs),
    /// P7: evaluation throughput with an instant scripted model vs a fresh python per cell.
    Eval(super::eval::BenchEvalArgs),
    /// P1, P2, P3, P5, P6: sandboxed kernels (zygote fork, warm pool, `1+1` round trip,
    /// 1,000 live, create+destroy rate with a leak check), each beside its baseline.
    Kernel(KernelArgs),
    /// Synthetic-data pipeline throughput (queries, rollouts, filter, export) with an
    /// instant fake model vs a fresh python per cell.
    Synth(super::synth::BenchSynthArgs),
    /// P4 beside P3 (`1+1` over HTTP vs the kernel client), and the HTTP service under
    /// load: N concurrent clients x M executes, errors, p50/p99, the server's peak RSS.
    Serve(ServeArgs),
    /// Issue 3's rootfs figures: build time with a cold and a warm package cache (into a
    /// temporary store), size, and `import pandas` inside a sandbox vs outside.
    Rootfs(RootfsArgs),
}

#[derive(Debug, clap::Args)]
pub struct RootfsArgs {
    /// The profile to build (into a temporary store, removed afterwards).
    #[arg(long, default_value = "analysis")]
    profile: String,
    /// `import MODULE` runs on each side (inside and outside the sandbox).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The module imported (must be in the profile; e.g. `json` for `minimal`).
    #[arg(long = "import", value_name = "MODULE", default_value = "pandas")]
    module: String,
    /// Print the full result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The rootfs (name or profile).
    #[arg(long, value_name = "NAME", default_value = dsbox_rootfs::DEFAULT_PROFILE)]
    rootfs: String,
    /// Fail instead of building a rootfs that is not in the store yet.
    #[arg(long)]
    no_build: bool,
    /// The rootfs store [default: $DSBOX_STORE or ~/.local/share/dsbox/rootfs].
    #[arg(long, value_name = "DIR")]
    store: Option<std::path::PathBuf>,
    /// Concurrent clients of the load test.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Executes per client.
    #[arg(long, default_value_t = 50)]
    executes: usize,
    /// Sequential `1+1` round trips of P3 and of P4.
    #[arg(long, default_value_t = 2000)]
    roundtrips: usize,
    /// Ready kernels in the server's pool.
    #[arg(long, default_value_t = 16)]
    pool: usize,
    /// Print the full result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct KernelArgs {
    /// The rootfs (name or profile; the `bench` profile holds the Jupyter baseline's
    /// jupyter_client + ipykernel).
    #[arg(long, value_name = "NAME", default_value = "bench")]
    rootfs: String,
    /// Fail instead of building a rootfs that is not in the store yet.
    #[arg(long)]
    no_build: bool,
    /// The rootfs store [default: $DSBOX_STORE or ~/.local/share/dsbox/rootfs].
    #[arg(long, value_name = "DIR")]
    store: Option<std::path::PathBuf>,
    /// Which figures, comma-separated.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "p1,p2,p3,p5,p6"
    )]
    only: Vec<String>,
    /// P1/P2 repetitions.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Repetitions of the fresh-import baseline (~0.5 s each).
    #[arg(long, default_value_t = 20)]
    baseline_runs: usize,
    /// P3 round trips on each side.
    #[arg(long, default_value_t = 2000)]
    roundtrips: usize,
    /// P5: sandboxes alive at once (the target is about 1,000).
    #[arg(long, default_value_t = 1000)]
    live: usize,
    /// P6: create+destroy cycles (the target is about 10,000).
    #[arg(long, default_value_t = 10_000)]
    cycles: usize,
    /// Sandboxes made at once in P5 and P6.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// P6: run `1+1` in every cycle (default: in every 100th, as a spot check).
    #[arg(long)]
    cell_every_cycle: bool,
    /// Ready kernels in P2's pool.
    #[arg(long, default_value_t = 4)]
    pool: usize,
    /// Print the full result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Runs of each (sandbox and baseline).
    #[arg(long, default_value_t = 300)]
    runs: usize,
    /// Print the full result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BenchCommand::Start(a) => start(a),
        BenchCommand::Eval(a) => super::eval::bench(a),
        BenchCommand::Kernel(a) => kernel(a),
        BenchCommand::Serve(a) => serve(a),
        BenchCommand::Synth(a) => super::synth::bench(a),
        BenchCommand::Rootfs(a) => rootfs(a),
    }
}

fn rootfs(args: RootfsArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.runs >= 1,
        "--runs must be at least 1 (got {})",
        args.runs
    );
    // A module name only: it is pasted into `python -c "import MODULE"`.
    anyhow::ensure!(
        !args.module.is_empty()
            && args
                .module
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')),
        "--import {:?}: expected a Python module name such as pandas or json",
        args.module
    );
    let result = dsbox_bench::rootfs::run(&dsbox_bench::rootfs::RootfsBenchConfig {
        profile: args.profile,
        runs: args.runs,
        module: args.module,
        profiles_dir: dsbox_rootfs::ProfileSet::default_user_dir(),
    })?;
    print_result(&result, result.summary(), args.json)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(args.executes >= 1, "--executes must be at least 1");
    anyhow::ensure!(args.roundtrips >= 10, "--roundtrips must be at least 10");
    let rootfs = super::rootfs::ensure_rootfs(&args.rootfs, args.store.as_deref(), args.no_build)?;
    let mut rootfs_args = vec![
        "--template".to_owned(),
        args.rootfs.clone(),
        "--no-build".to_owned(),
    ];
    if let Some(store) = &args.store {
        rootfs_args.push("--store".into());
        rootfs_args.push(store.display().to_string());
    }
    let cfg = dsbox_bench::serve::ServeBenchConfig {
        exe: std::env::current_exe()?,
        rootfs_args,
        clients: args.clients,
        executes: args.executes,
        roundtrips: args.roundtrips,
        pool_size: args.pool,
    };
    let result = dsbox_bench::serve::run(dsbox_kernel::TemplateConfig::new(&rootfs), &cfg)?;
    print_result(&result, result.summary(), args.json)
}

fn kernel(args: KernelArgs) -> anyhow::Result<ExitCode> {
    for fig in &args.only {
        anyhow::ensure!(
            ["p1", "p2", "p3", "p5", "p6"].contains(&fig.to_ascii_lowercase().as_str()),
            "--only {fig}: expected a comma-separated list of p1, p2, p3, p5, p6 (P4 is the HTTP service's: `dsbox bench serve`)"
        );
    }
    anyhow::ensure!(
        args.runs >= 10,
        "--runs must be at least 10 (got {})",
        args.runs
    );
    anyhow::ensure!(
        args.baseline_runs >= 3,
        "--baseline-runs must be at least 3 (got {})",
        args.baseline_runs
    );
    anyhow::ensure!(args.pool >= 1, "--pool must be at least 1");
    let rootfs = super::rootfs::ensure_rootfs(&args.rootfs, args.store.as_deref(), args.no_build)?;
    let cfg = dsbox_bench::kernel::KernelBenchConfig {
        runs: args.runs,
        baseline_runs: args.baseline_runs,
        roundtrips: args.roundtrips.max(10),
        live: args.live.max(1),
        cycles: args.cycles.max(1),
        concurrency: args.concurrency.max(1),
        cell_every_cycle: args.cell_every_cycle,
        pool_size: args.pool,
        only: args.only.iter().map(|s| s.to_ascii_lowercase()).collect(),
    };
    let result = dsbox_bench::kernel::run(&rootfs, &cfg)?;
    print_result(&result, result.summary(), args.json)
}

fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.runs >= 10,
        "--runs must be at least 10 (got {})",
        args.runs
    );
    let result = dsbox_bench::start::run(&dsbox_bench::start::StartConfig {
        runs: args.runs,
        ..Default::default()
    })?;
    print_result(&result, result.summary(), args.json)
}

/// Print a bench result: its JSON with `--json`, else its text summary.
pub(crate) fn print_result(
    result: &impl serde::Serialize,
    summary: String,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(result)?);
    } else {
        print!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}
