//! `dsbox doctor`: report which protections this kernel offers, with a fix hint for each gap.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {}

pub fn run(_args: DoctorArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox doctor` is not built yet")
}
