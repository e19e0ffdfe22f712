//! `dsbox score`: score a predictions file against a suite's answers.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ScoreArgs {}

pub fn run(_args: ScoreArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox score` is not built yet")
}
