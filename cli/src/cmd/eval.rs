//! `dsbox eval`: evaluate a model on benchmark suites: rollouts in sandboxes, metrics, reports.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {}

pub fn run(_args: EvalArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox eval` is not built yet")
}
