//! `dsbox report`: print a run's results and write Markdown and HTML reports.
//!
//! Reads `run.json` and `results.jsonl` (also while the run is still going), recomputes
//! the metrics, rewrites `metrics.json`/`summary.csv`/`tasks.csv` only for a run that no
//! process holds, and writes `report.md` and `report.html` (self-contained: inline SVG
//! plots, no scripts, no network).

use std::path::PathBuf;
use std::process::ExitCode;

use dsbox_agent::report;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The run directory (`dsbox eval --out`).
    #[arg(value_name = "RUN_DIR")]
    pub dir: PathBuf,
    /// Print the metrics as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let (manifest, metrics, md, html) = report::write_reports(&args.dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&metrics)?);
    } else {
        println!(
            "{} · {} · {} task(s) × k = {} · {} of {} trajectories finished",
            manifest.model.name,
            manifest.scaffold.as_str(),
            manifest.tasks.len(),
            manifest.k,
            metrics.overall.finished,
            metrics.overall.planned
        );
        print!("{}", report::table(&metrics));
    }
    eprintln!("report: {}\n        {}", html.display(), md.display());
    Ok(ExitCode::SUCCESS)
}
