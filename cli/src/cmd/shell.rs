//! `dsbox shell`: an interactive Python REPL on a sandbox kernel.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ShellArgs {}

pub fn run(_args: ShellArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox shell` is not built yet")
}
