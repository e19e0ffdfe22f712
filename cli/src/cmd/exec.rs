//! `dsbox exec`: run Python code once in a fresh sandbox kernel and print its outputs.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ExecArgs {}

pub fn run(_args: ExecArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox exec` is not built yet")
}
