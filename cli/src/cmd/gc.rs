//! `dsbox gc`: remove cgroups, mounts and scratch left behind by sandboxes whose runtime died.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct GcArgs {}

pub fn run(_args: GcArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox gc` is not built yet")
}
