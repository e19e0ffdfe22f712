//! `dsbox audit`: audits of benchmarks. `dsbox audit shortcut` asks a model every task
//! with NO data mounted (and says so in the prompt), k attempts per task, and reports per
//! suite how much accuracy survives without the data and which tasks were solved without
//! it (flagged at `--flag-threshold` of k, e.g. 3 of 5 as the paper).
//!
//! The run is an eval run (`--resume`, `dsbox report`) plus `audit.json` and `audit.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use dsbox_agent::sandbox::SandboxFactory;
use dsbox_agent::synth::audit::{self, AuditReport};
use dsbox_agent::synth::stage::{AuditStage, Stage, StageManifest};
use dsbox_agent::{EvalSetup, PlannedItem, RunDir, RunManifest, RunReport, ScaffoldKind};
use dsbox_tasks::{LoadedSuite, Prompts, SuiteRegistry};

use super::eval::{default_out, prompts, runtime, select};
use super::synth::{
    ModelArgs, Resumed, RunOpts, SandboxOpts, check_out, check_temperature, episode_settings,
    factory_for, manifest, model_and_url, positive_u32, roll_out, run_end,
};
use super::tasks::SuiteSourceArgs;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub source: SuiteSourceArgs,
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Which tasks does a model solve WITHOUT the data? k attempts per task with nothing
    /// mounted; tasks solved in --flag-threshold of them are flagged.
    Shortcut(Box<ShortcutArgs>),
}

#[derive(Debug, clap::Args)]
pub struct ShortcutArgs {
    /// Suites to audit, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "SUITE[,SUITE]")]
    pub suite: Vec<String>,
    /// Only these task ids (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "ID[,ID]")]
    pub ids: Vec<String>,
    /// Only the first N tasks of each suite.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Attempts per task (default 5).
    #[arg(long, value_parser = positive_u32)]
    pub k: Option<u32>,
    /// Attempts that must be correct for a task to be flagged (default: 60% of k rounded
    /// up, i.e. 3 of 5).
    #[arg(long, value_parser = positive_u32)]
    pub flag_threshold: Option<u32>,
    /// Sampling temperature (default: 0.8 for k > 1, else 0).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// No sandbox at all: code cannot run (by default an empty sandbox is available).
    #[arg(long)]
    pub no_exec: bool,
    /// An eval run of the same tasks with data (`dsbox eval --out`), to report how much of
    /// its accuracy survives without data.
    #[arg(long, value_name = "RUN_DIR")]
    pub compare: Option<PathBuf>,
    /// Prompt templates replacing the built-in ones.
    #[arg(long, value_name = "DIR")]
    pub prompts_dir: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sandbox: SandboxOpts,
    #[command(flatten)]
    pub run: RunOpts,
}

const AUDIT: &str = "dsbox audit shortcut";
/// Turns per attempt unless --max-turns: answering from memory needs few.
const DEFAULT_TURNS: u32 = 5;

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AuditCommand::Shortcut(s) => shortcut(&args.source, *s),
    }
}

/// The no-data version of each item (data removed, prompt re-rendered with the note).
fn no_data_items(
    items: &[PlannedItem],
    suites: &[LoadedSuite],
    prompts: &Prompts,
    no_exec: bool,
) -> anyhow::Result<Vec<PlannedItem>> {
    let defs: HashMap<&str, dsbox_tasks::SuiteDef> = suites
        .iter()
        .map(|s| (s.def.name.as_str(), audit::no_data_def(&s.def, no_exec)))
        .collect();
    items
        .iter()
        .map(|i| {
            let task = audit::no_data_task(&i.task);
            let def = defs
                .get(task.suite.as_str())
                .with_context(|| format!("suite {} is not loaded", task.suite))?;
            let prompt = prompts
                .render(&task, def)
                .with_context(|| format!("rendering the prompt of {}", task.id))?;
            Ok(PlannedItem {
                task: Arc::new(task),
                prompt: Arc::new(prompt),
                index: i.index,
            })
        })
        .collect()
}

fn compare_records(dir: &Path) -> anyhow::Result<Vec<dsbox_agent::ResultRecord>> {
    let (_, records) = dsbox_agent::rundir::read_run(dir)
        .with_context(|| format!("--compare {}", dir.display()))?;
    Ok(records)
}

fn shortcut(source: &SuiteSourceArgs, args: ShortcutArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.run.resume.clone() {
        return resume(source, args, &dir);
    }
    if args.suite.is_empty() {
        bail!("give the suites to audit with --suite (e.g. --suite qrdata,daeval)");
    }
    let (model_name, base_url) = model_and_url(&args.model)?;
    let k = args.k.unwrap_or(5);
    let threshold = args.flag_threshold.unwrap_or_else(|| (k * 3).div_ceil(5));
    if threshold > k {
        bail!(
            "--flag-threshold {threshold} is more than --k {k}: a task cannot be solved in more attempts than it gets"
        );
    }
    let temperature = Some(args.temperature.unwrap_or(if k > 1 { 0.8 } else { 0.0 }));
    check_temperature(temperature)?;
    let settings = episode_settings(&args.run, DEFAULT_TURNS)?;
    let reg = source.registry()?;
    let prompts = prompts(args.prompts_dir.clone())?;
    let selected = select(&reg, &args.suite, &args.ids, args.limit, &prompts)?;
    let items = no_data_items(&selected.items, &selected.suites, &prompts, args.no_exec)?;
    if let Some(c) = &args.compare {
        compare_records(c)?;
    }
    let out = args
        .run
        .out
        .clone()
        .unwrap_or_else(|| default_out(&format!("audit-shortcut-{model_name}")));
    check_out(&out, AUDIT)?;
    let concurrency = args.run.concurrency.unwrap_or(8);
    let model = super::synth::model_for(
        &args.model,
        &model_name,
        &base_url,
        temperature,
        concurrency,
    )?;
    let rt = runtime()?;
    rt.block_on(model.preflight())?;
    let sandbox = if args.no_exec {
        None
    } else {
        Some(factory_for(
            &rt,
            &args.sandbox,
            args.sandbox.rootfs.as_deref().unwrap_or("analysis"),
            concurrency,
        )?)
    };
    let factory: Arc<dyn SandboxFactory> =
        audit::factory(args.no_exec, sandbox).context("no sandbox factory")?;
    let manifest = manifest(
        &model_name,
        &base_url,
        temperature,
        &args.model,
        ScaffoldKind::React,
        settings.clone(),
        k,
        &items,
        source.data_root.clone(),
        factory.as_ref(),
        concurrency,
        vec![format!(
            "shortcut audit: no data mounted ({})",
            audit::PROMPT_VERSION
        )],
    );
    let stage = AuditStage {
        prompt_version: audit::PROMPT_VERSION.into(),
        flag_threshold: threshold,
        no_exec: args.no_exec,
        compare: args.compare.clone(),
    };
    let dir = RunDir::create(&out, &manifest)?;
    StageManifest::new(Stage::Audit(stage.clone())).write(&out)?;
    eprintln!(
        "{AUDIT}: {} task(s) × {k} attempts without data, model {model_name}; run directory {}",
        items.len(),
        out.display()
    );
    let setup = EvalSetup {
        model: Arc::new(model),
        judge: None,
        factory,
        scaffold: ScaffoldKind::React,
        settings,
        concurrency,
        retry_errors: false,
    };
    let report = roll_out(&rt, dir, &manifest, items, Vec::new(), setup)?;
    finish(source, &out, &manifest, &stage, &report)
}

fn resume(source: &SuiteSourceArgs, args: ShortcutArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    if args.run.out.is_some() || !args.suite.is_empty() || !args.ids.is_empty() {
        bail!(
            "--out, --suite and --ids cannot change a run: --resume continues the tasks it planned"
        );
    }
    let stage = StageManifest::read(dir, "audit")?.audit(dir)?;
    let opened = RunDir::open(dir)?;
    let manifest = opened.manifest.clone();
    let mut source = source.clone();
    if source.data_root.is_none() {
        source.data_root = manifest.data_root.clone();
    }
    let reg: SuiteRegistry = source.registry()?;
    let prompts = prompts(args.prompts_dir.clone())?;
    let mut suites = Vec::new();
    for name in &manifest.suites {
        suites.push(reg.load(name)?);
    }
    let mut items = Vec::new();
    for p in &manifest.tasks {
        let suite = suites
            .iter()
            .find(|s| s.def.name == p.suite)
            .with_context(|| format!("suite {} of the run is not loaded", p.suite))?;
        let task = suite.task(&p.id).with_context(|| {
            format!("task {} of the run is no longer in suite {}: was the data root changed? (--data-root)", p.id, p.suite)
        })?;
        items.push(PlannedItem {
            task: Arc::new(task.clone()),
            prompt: Arc::new(prompts.render(task, &suite.def)?),
            index: p.index,
        });
    }
    let items = no_data_items(&items, &suites, &prompts, stage.no_exec)?;
    let Resumed {
        rt,
        model,
        concurrency,
        factory: sandbox,
    } = Resumed::open(
        &args.model,
        &args.sandbox,
        &args.run,
        &manifest,
        !stage.no_exec,
    )?;
    let factory = audit::factory(stage.no_exec, sandbox).context("no sandbox factory")?;
    eprintln!(
        "{AUDIT}: resuming {}: {} of {} attempts finished",
        dir.display(),
        opened.records.len(),
        manifest.planned_trajectories()
    );
    let setup = Resumed::setup(
        model,
        factory,
        &manifest,
        concurrency,
        args.run.retry_errors,
    );
    let report = roll_out(&rt, opened.dir, &manifest, items, opened.records, setup)?;
    finish(&source, dir, &manifest, &stage, &report)
}

fn finish(
    source: &SuiteSourceArgs,
    dir: &Path,
    manifest: &RunManifest,
    stage: &AuditStage,
    report: &RunReport,
) -> anyhow::Result<ExitCode> {
    let compare = match &stage.compare {
        Some(c) => Some((c.as_path(), compare_records(c)?)),
        None => None,
    };
    let audit: AuditReport = audit::report(
        manifest,
        &report.records,
        stage.flag_threshold,
        stage.no_exec,
        compare.as_ref().map(|(p, r)| (*p, r.as_slice())),
    );
    audit::write(dir, &audit)?;
    if source.json {
        println!("{}", serde_json::to_string_pretty(&audit)?);
    } else {
        print!("{}", audit.table());
    }
    let stopped = run_end(report, dir, AUDIT);
    eprintln!(
        "{AUDIT}: report {} and {}; run directory {}",
        dir.join(audit::REPORT_JSON).display(),
        dir.join(audit::REPORT_MD).display(),
        dir.display()
    );
    Ok(stopped.unwrap_or(ExitCode::SUCCESS))
}
