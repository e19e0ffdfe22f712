//! `dsbox demo`: run a few real tasks end to end with a built-in scripted agent (no API key).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox demo` is not built yet")
}
