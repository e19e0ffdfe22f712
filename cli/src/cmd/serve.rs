//! `dsbox serve`: hTTP service: DSGym-compatible manager API, RL environment API, sandbox API.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

pub fn run(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox serve` is not built yet")
}
