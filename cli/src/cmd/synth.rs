//! `dsbox synth`: generate, verify, filter and export synthetic training data.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SynthArgs {}

pub fn run(_args: SynthArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox synth` is not built yet")
}
