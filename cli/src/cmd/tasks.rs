//! `dsbox tasks`: list, show and validate benchmark tasks.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct TasksArgs {}

pub fn run(_args: TasksArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox tasks` is not built yet")
}
