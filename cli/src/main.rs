//! The `dsbox` command. Each subcommand lives in its own module under `cmd/`, which owns
//! its clap arguments, turns them into a validated configuration and calls the libraries.
//!
//! Exit codes: `run`/`exec` pass the sandboxed command's code through (128+signal when it
//! was killed); dsbox's own failures exit 125 there (126: cannot execute, 127: not found).
//! Every other command exits 0 on success, 1 on error, 2 on a usage error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// dsbox — fast, native sandboxes for evaluating and training data-science agents.
#[derive(Debug, Parser)]
#[command(name = "dsbox", version, about, max_term_width = 100)]
struct Cli {
    /// Log filter (tracing's env-filter syntax), e.g. `debug` or `dsbox_runtime=trace`.
    #[arg(long, global = true, env = "DSBOX_LOG", default_value = "warn")]
    log: String,

    /// Log format: `text`, or `json` (one object per line, for log collectors).
    #[arg(long, global = true, env = "DSBOX_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command in a sandbox.
    Run(Box<cmd::run::RunArgs>),
    /// Report which protections this kernel offers, with a fix hint for each gap.
    Doctor(cmd::doctor::DoctorArgs),
    /// Remove cgroups, mounts and scratch left behind by sandboxes whose runtime died.
    Gc(cmd::gc::GcArgs),
    /// Build, list, verify and remove Python root filesystems.
    Rootfs(cmd::rootfs::RootfsArgs),
    /// Run Python code once in a fresh sandbox kernel and print its outputs.
    Exec(cmd::exec::ExecArgs),
    /// An interactive Python REPL on a sandbox kernel.
    Shell(cmd::shell::ShellArgs),
    /// Measure dsbox against baselines in the same run (JSON with --json).
    Bench(cmd::bench::BenchArgs),
    /// List, show and validate benchmark tasks.
    Tasks(cmd::tasks::TasksArgs),
    /// Score a predictions file against a suite's answers.
    Score(cmd::score::ScoreArgs),
    /// Evaluate a model on benchmark suites: rollouts in sandboxes, metrics, reports.
    Eval(Box<cmd::eval::EvalArgs>),
    /// Print a run's results and write Markdown and HTML reports.
    Report(cmd::report::ReportArgs),
    /// Run a few real tasks end to end with a built-in scripted agent (no API key).
    Demo(cmd::demo::DemoArgs),
    /// HTTP service: DSGym-compatible manager API, RL environment API, sandbox API.
    Serve(Box<cmd::serve::ServeArgs>),
    /// Generate, verify, filter and export synthetic training data.
    Synth(cmd::synth::SynthArgs),
    /// Audits of benchmarks (e.g. which tasks a model solves without the data).
    Audit(cmd::audit::AuditArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(&cli.log, cli.log_format == "json");
    if prints_a_report(&cli.command) {
        restore_default_sigpipe();
    }
    let failure_code = match cli.command {
        Command::Run(_) | Command::Exec(_) => 125,
        _ => 1,
    };
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("dsbox: error: {err:#}");
            ExitCode::from(failure_code)
        }
    }
}

/// Commands that only print a report to stdout. For them a closed pipe (`dsbox doctor |
/// head`) should end the process quietly, as for any Unix filter, instead of making
/// `println!` panic. Long-running commands (serve, eval, run, ...) keep Rust's default of
/// ignoring SIGPIPE, so a vanished peer is an error they handle, never a silent death.
fn prints_a_report(command: &Command) -> bool {
    matches!(
        command,
        Command::Doctor(_)
            | Command::Gc(_)
            | Command::Rootfs(_)
            | Command::Tasks(_)
            | Command::Score(_)
            | Command::Report(_)
    )
}

fn restore_default_sigpipe() {
    // SAFETY: called once at start-up before any thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE and no handler code is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => cmd::run::run(*args),
        Command::Doctor(args) => cmd::doctor::run(args),
        Command::Gc(args) => cmd::gc::run(args),
        Command::Rootfs(args) => cmd::rootfs::run(args),
        Command::Exec(args) => cmd::exec::run(args),
        Command::Shell(args) => cmd::shell::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Tasks(args) => cmd::tasks::run(args),
        Command::Score(args) => cmd::score::run(args),
        Command::Eval(args) => cmd::eval::run(*args),
        Command::Report(args) => cmd::report::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Serve(args) => cmd::serve::run(*args),
        Command::Synth(args) => cmd::synth::run(args),
        Command::Audit(args) => cmd::audit::run(args),
    }
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}
