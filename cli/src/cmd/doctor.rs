//! `dsbox doctor`: report which protections this kernel offers, with a fix hint for each gap.

use std::path::PathBuf;
use std::process::ExitCode;

use dsbox_runtime::doctor;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Parent cgroup to report sandbox cgroup locations for.
    #[arg(long, value_name = "PATH", env = "DSBOX_CGROUP_PARENT")]
    cgroup_parent: Option<PathBuf>,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = doctor::report(
        dsbox_runtime::sandbox::cgroup_system(),
        args.cgroup_parent.as_deref(),
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("kernel {}  (euid {})", report.kernel, report.euid);
    println!();
    for check in &report.checks {
        let mark = if check.available {
            "ok     "
        } else {
            "MISSING"
        };
        println!("  {mark} {:<16} {}", check.name, check.detail);
        if !check.available
            && let Some(fix) = check.fix
        {
            println!("          {:<16} fix: {fix}", "");
        }
    }
    println!();
    println!("cgroups: dsbox uses {}", report.cgroup_mode);
    for h in &report.hierarchies {
        println!(
            "  {} {:<32} {}",
            h.version,
            h.mount.display(),
            if h.controllers.is_empty() {
                "(no controllers)".to_owned()
            } else {
                h.controllers.join(" ")
            }
        );
    }
    println!("sandbox cgroups go below:");
    for p in &report.sandbox_cgroup_parents {
        println!("  {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
