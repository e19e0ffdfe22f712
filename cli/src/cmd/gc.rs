//! `dsbox gc`: remove cgroups, mounts and scratch left behind by sandboxes whose runtime died.
//!
//! Mounts and scratch tmpfs live in each sandbox's own mount namespace and disappear with
//! its processes; what can outlive a crashed runtime is processes, cgroups and state
//! records, which this command removes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Print what was removed as JSON.
    #[arg(long)]
    json: bool,
    /// Parent cgroup whose `dsbox/` children are checked (default: dsbox's own cgroup).
    #[arg(long, value_name = "PATH", env = "DSBOX_CGROUP_PARENT")]
    cgroup_parent: Option<PathBuf>,
}

pub fn run(args: GcArgs) -> anyhow::Result<ExitCode> {
    let report = dsbox_runtime::gc::collect(
        Path::new(dsbox_runtime::state::STATE_DIR),
        dsbox_runtime::sandbox::cgroup_system(),
        args.cgroup_parent.as_deref(),
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "removed {} state records, {} cgroups; killed {} processes",
            report.removed_records.len(),
            report.removed_cgroups.len(),
            report.killed_processes
        );
        for e in &report.errors {
            eprintln!("dsbox: warning: {e}");
        }
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
