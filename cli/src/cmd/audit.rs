//! `dsbox audit`: audits of benchmarks (e.g. which tasks a model solves without the data).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {}

pub fn run(_args: AuditArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox audit` is not built yet")
}
