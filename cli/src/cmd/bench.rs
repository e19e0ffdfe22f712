//! `dsbox bench`: measure dsbox against baselines in the same run (JSON with --json).
//!
//! Each benchmark is a variant of [`BenchCommand`]; later issues add theirs (kernel,
//! serve, eval, synth) beside `start`.

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
    /// Synthetic-data pipeline throughput (queries, rollouts, filter, export) with an
    /// instant fake model vs a fresh python per cell.
    Synth(super::synth::BenchSynthArgs),
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
        BenchCommand::Synth(a) => super::synth::bench(a),
    }
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
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", result.summary());
    }
    Ok(ExitCode::SUCCESS)
}
