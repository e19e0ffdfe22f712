//! `dsbox rootfs`: build, list, verify and remove Python root filesystems.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct RootfsArgs {}

pub fn run(_args: RootfsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsbox rootfs` is not built yet")
}
