//! `dsbox report`: print a run's results and write Markdown and HTML reports.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {}

pub fn run(_args: ReportArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox report` is not built yet")
}
