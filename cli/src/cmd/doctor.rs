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
    if report.landlock_abi > 0 {
        println!();
        println!("landlock ABI {}:", report.landlock_abi);
        for f in &report.landlock_features {
            let state = match (f.available, f.used_by_dsbox) {
                (true, true) => "used",
                (true, false) => "available, not used",
                (false, true) => "UNAVAILABLE (not enforced here)",
                (false, false) => "unavailable, not used",
            };
            println!("  ABI {}  {:<54} {state}", f.abi, f.name);
        }
    }
    println!();
    println!("tested kernels and cgroup layouts:");
    for t in report.tested_setups {
        println!(
            "  {}: cgroup {} ({}), landlock ABI {}",
            t.kernel, t.cgroup_mode, t.cgroup_layout, t.landlock_abi
        );
        println!("      how: {}", t.how);
    }
    match report.tested_here {
        Some(t) => println!(
            "this host (cgroup {}, landlock ABI {}) matches the tested setup on {}",
            report.cgroup_mode, report.landlock_abi, t.kernel
        ),
        None => println!(
            "this host (cgroup {}, landlock ABI {}) matches no tested setup: the same code paths run, but no CI job covers this combination",
            report.cgroup_mode, report.landlock_abi
        ),
    }
    Ok(ExitCode::SUCCESS)
}
