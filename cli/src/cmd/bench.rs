//! `dsbox bench`: measure dsbox against baselines in the same run (JSON with --json).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox bench` is not built yet")
}
