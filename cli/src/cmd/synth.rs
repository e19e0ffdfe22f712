//! `dsbox synth`: generate, verify, filter and export synthetic training data.
//!
//! ```text
//! dsbox synth queries --seeds qrdata:0,1,2 --n 5 --model M --base-url URL      → RUN/queries.jsonl
//! dsbox synth trajectories --tasks RUN/queries.jsonl --k 8 --model M --base-url URL → RUN2
//! dsbox synth filter RUN2                                                        → RUN2/filter/
//! dsbox synth export RUN2 --format openai-chat --out train.jsonl                 → train.jsonl + card
//! ```
//!
//! `queries` and `trajectories` are eval runs (the same run directory, resume with
//! `--resume RUN`, `dsbox report RUN`). As with `dsbox eval`, everything that can be
//! checked is checked before the run directory is created (flags, seeds or tasks file,
//! output directory, the model server, the rootfs), so bad input leaves nothing behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use dsbox_agent::model::{OpenAiConfig, OpenAiModel};
use dsbox_agent::progress::observer_for_stderr;
use dsbox_agent::report;
use dsbox_agent::rundir::{ModelInfo, PlannedTask, RunManifest, Selection};
use dsbox_agent::sandbox::SandboxFactory;
use dsbox_agent::synth::export::{ExportFormat, ExportOptions};
use dsbox_agent::synth::filter::{FilterObserver, FilterParams, FilterSetup, JudgeParams};
use dsbox_agent::synth::stage::{QueriesStage, Stage, StageManifest, TrajectoriesStage};
use dsbox_agent::synth::verify::VerifySettings;
use dsbox_agent::synth::{self, SynthError, queries, trajectories};
use dsbox_agent::{
    EpisodeSettings, EvalSetup, Model, PlannedItem, ResultRecord, RunDir, RunEnd, RunObserver,
    RunReport, ScaffoldKind,
};
use dsbox_tasks::{SuiteRegistry, Task};
use tokio::sync::watch;

use super::eval::{
    BackendOpts, RootfsOpts, SandboxArgs, default_out, drive, prompts, runtime, sandbox_factory,
};
use super::tasks::SuiteSourceArgs;

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    #[command(flatten)]
    pub source: SuiteSourceArgs,
    #[command(subcommand)]
    pub command: SynthCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SynthCommand {
    /// Generate queries: an agent explores each seed task's data in a sandbox and proposes
    /// new questions with the answers it computed (written as a user suite).
    Queries(Box<QueriesArgs>),
    /// Roll out each synthetic query k times (dsbox eval's machinery: resume, reports).
    Trajectories(Box<TrajectoriesArgs>),
    /// Keep the trajectories worth training on: turn range, answer agreement, execution
    /// verification, LLM-judge rubric, near-duplicate queries; every decision with its reason.
    Filter(Box<FilterArgs>),
    /// Write the kept trajectories as SFT JSONL (openai-chat or sharegpt) with a dataset card.
    Export(ExportArgs),
}

/// The model server.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// The model's name on the server.
    #[arg(long)]
    pub model: Option<String>,
    /// The OpenAI-compatible server, e.g. http://localhost:8000/v1.
    #[arg(long, env = "OPENAI_BASE_URL", value_name = "URL")]
    pub base_url: Option<String>,
    /// The environment variable holding the API key.
    #[arg(long, default_value = "OPENAI_API_KEY", value_name = "NAME")]
    pub api_key_env: String,
    /// Nucleus sampling (default: the server's).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Completion tokens per reply.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: u32,
    /// Limit per model request.
    #[arg(long, default_value = "600s", value_name = "DURATION")]
    pub request_timeout: String,
    /// Retries of a model request on 429, 5xx and connection errors.
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
}

/// Where code runs.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxOpts {
    /// Root filesystem of the sandboxes (default: the run's own when continuing or checking
    /// a run, else `analysis`).
    #[arg(long)]
    pub rootfs: Option<String>,
    /// Rootfs store (default: $DSBOX_STORE, else ~/.local/share/dsbox/rootfs).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Fail instead of building a missing rootfs.
    #[arg(long)]
    pub no_build: bool,
    /// Memory limit per sandbox.
    #[arg(long, default_value = "2G")]
    pub memory: String,
    /// CPU limit per sandbox, in cores (default: none).
    #[arg(long)]
    pub cpus: Option<f64>,
    #[command(flatten)]
    pub backend: BackendOpts,
}

/// The run: episodes, output, resume.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOpts {
    /// Model replies per episode.
    #[arg(long, value_parser = positive_u32)]
    pub max_turns: Option<u32>,
    /// Wall-clock limit per cell (interrupt, then restart the kernel).
    #[arg(long, default_value = "180s", value_name = "DURATION")]
    pub cell_timeout: String,
    /// Wall-clock limit per episode (`none` for no limit).
    #[arg(long, default_value = "30m", value_name = "DURATION")]
    pub episode_timeout: String,
    /// Episodes at once (default 8; --resume keeps the run's unless given).
    #[arg(long, value_parser = positive_usize)]
    pub concurrency: Option<usize>,
    /// Run directory (default: dsbox-runs/<time>-<stage>-<model>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue an interrupted run (its settings come from its run.json and synth.json).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// With --resume: also redo episodes that ended in a model, sandbox or budget error.
    #[arg(long)]
    pub retry_errors: bool,
}

#[derive(Debug, clap::Args)]
pub struct QueriesArgs {
    /// Seed tasks: SUITE (all of it) or SUITE:ID[,ID…] (e.g. qrdata:qrdata/0,qrdata/5 or
    /// qrdata:0,5); repeat the flag for more suites.
    #[arg(long, value_name = "SUITE[:IDS]")]
    pub seeds: Vec<String>,
    /// Items to ask for per seed.
    #[arg(long, default_value_t = 5, value_parser = positive_usize)]
    pub n: usize,
    /// Only the first N seeds of each suite.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Suite name of the generated tasks (their ids are NAME/<seed>-q<k>).
    #[arg(long, default_value = "synth")]
    pub name: String,
    /// Sampling temperature of the generator (default 0.8).
    #[arg(long)]
    pub temperature: Option<f64>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sandbox: SandboxOpts,
    #[command(flatten)]
    pub run: RunOpts,
}

#[derive(Debug, clap::Args)]
pub struct TrajectoriesArgs {
    /// The tasks: the queries.jsonl `dsbox synth queries` wrote (or any JSONL of dsbox task
    /// records).
    #[arg(long, value_name = "FILE")]
    pub tasks: Option<PathBuf>,
    /// Suite name of the tasks (default: the one the records carry, else `synth`).
    #[arg(long)]
    pub name: Option<String>,
    /// Rollouts per query (default 8).
    #[arg(long, value_parser = positive_u32)]
    pub k: Option<u32>,
    /// Sampling temperature (default 0.8).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Only the first N tasks.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// react: the reference's <python>/<answer> tags; tools: OpenAI tool calling.
    #[arg(long)]
    pub scaffold: Option<ScaffoldKind>,
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

#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// The run directory of `dsbox synth trajectories`.
    #[arg(value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// Where the decisions go (default: RUN_DIR/filter).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Fewest turns a kept trajectory may have.
    #[arg(long, default_value_t = 2)]
    pub min_turns: u32,
    /// Most turns a kept trajectory may have (default: the run's turn limit).
    #[arg(long)]
    pub max_turns: Option<u32>,
    /// Share of a query's rollouts the majority answer needs (0 turns the check off).
    #[arg(long, default_value_t = 0.5)]
    pub agreement: f64,
    /// Also require the answer to match the answer generated with the query.
    #[arg(long)]
    pub require_correct: bool,
    /// Skip execution verification (re-running each trajectory's cells).
    #[arg(long)]
    pub no_verify: bool,
    /// Skip the LLM-judge rubric.
    #[arg(long)]
    pub no_judge: bool,
    /// Judge model (default: the run's model).
    #[arg(long)]
    pub judge_model: Option<String>,
    /// Judge server (default: the run's server).
    #[arg(long, value_name = "URL")]
    pub judge_base_url: Option<String>,
    /// The environment variable holding the judge server's API key.
    #[arg(long, default_value = "OPENAI_API_KEY", value_name = "NAME")]
    pub api_key_env: String,
    /// Weighted rubric score a trajectory needs (0 to 1).
    #[arg(long, default_value_t = synth::judge::DEFAULT_THRESHOLD)]
    pub judge_threshold: f64,
    /// Token-Jaccard similarity at which a query is a near-duplicate.
    #[arg(long, default_value_t = synth::dedup::DEFAULT_THRESHOLD)]
    pub dedup_threshold: f64,
    /// Keep near-duplicate queries.
    #[arg(long)]
    pub no_dedup: bool,
    /// Keep queries that near-duplicate their seed question.
    #[arg(long)]
    pub no_seed_dedup: bool,
    /// At most N trajectories per query (best judged first).
    #[arg(long, value_name = "N", value_parser = positive_usize)]
    pub per_query: Option<usize>,
    /// Checks at once.
    #[arg(long, default_value_t = 4, value_parser = positive_usize)]
    pub concurrency: usize,
    /// Limit per judge request.
    #[arg(long, default_value = "600s", value_name = "DURATION")]
    pub request_timeout: String,
    #[command(flatten)]
    pub sandbox: SandboxOpts,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The run directory of `dsbox synth trajectories`.
    #[arg(value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// openai-chat ({"messages": [...]}) or sharegpt ({"conversations": [...]}).
    #[arg(long, default_value = "openai-chat")]
    pub format: ExportFormat,
    /// The JSONL file to write (the card goes beside it: NAME.card.md, NAME.card.json).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The filter's directory (default: RUN_DIR/filter).
    #[arg(long, value_name = "DIR")]
    pub filter: Option<PathBuf>,
    /// Leave out the system prompt.
    #[arg(long)]
    pub no_system: bool,
    /// Add a `metadata` object to each line (task, seed, answers, judge score).
    #[arg(long)]
    pub metadata: bool,
}

pub(crate) fn positive_u32(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

pub(crate) fn positive_usize(s: &str) -> Result<usize, String> {
    positive_u32(s).map(|n| n as usize)
}

fn duration(flag: &str, value: &str) -> anyhow::Result<Option<Duration>> {
    if matches!(value.trim(), "none" | "0") {
        return Ok(None);
    }
    dsbox_runtime::parse_duration(value)
        .map(Some)
        .with_context(|| format!("--{flag}"))
}

pub(crate) fn check_temperature(t: Option<f64>) -> anyhow::Result<()> {
    if let Some(t) = t
        && !(0.0..=2.0).contains(&t)
    {
        bail!("--temperature {t} is out of range: use 0 to 2");
    }
    Ok(())
}

/// An OpenAI-compatible client for `name` at `base_url`.
pub(crate) fn model_for(
    args: &ModelArgs,
    name: &str,
    base_url: &str,
    temperature: Option<f64>,
    concurrency: usize,
) -> anyhow::Result<OpenAiModel> {
    let mut cfg = OpenAiConfig::new(base_url, name).with_key_from_env(&args.api_key_env);
    cfg.temperature = temperature;
    cfg.top_p = args.top_p;
    cfg.max_tokens = Some(args.max_tokens);
    if let Some(t) = duration("request-timeout", &args.request_timeout)? {
        cfg.request_timeout = t;
    }
    cfg.max_retries = args.max_retries;
    cfg.max_concurrent = concurrency + 4;
    Ok(OpenAiModel::new(cfg)?)
}

/// `--model` and `--base-url`, required to start a run.
pub(crate) fn model_and_url(args: &ModelArgs) -> anyhow::Result<(String, String)> {
    let Some(model) = args.model.clone() else {
        bail!("give the model's name with --model (as the server knows it)");
    };
    let Some(url) = args.base_url.clone() else {
        bail!(
            "give the OpenAI-compatible server with --base-url (e.g. http://localhost:8000/v1 for vLLM) or $OPENAI_BASE_URL"
        );
    };
    Ok((model, url))
}

pub(crate) fn episode_settings(
    run: &RunOpts,
    default_turns: u32,
) -> anyhow::Result<EpisodeSettings> {
    Ok(EpisodeSettings {
        max_turns: run.max_turns.unwrap_or(default_turns),
        cell_timeout: duration("cell-timeout", &run.cell_timeout)?
            .context("--cell-timeout cannot be `none`")?,
        episode_budget: duration("episode-timeout", &run.episode_timeout)?,
        ..EpisodeSettings::default()
    })
}

pub(crate) fn factory_for(
    rt: &tokio::runtime::Runtime,
    opts: &SandboxOpts,
    rootfs: &str,
    concurrency: usize,
) -> anyhow::Result<Arc<dyn SandboxFactory>> {
    let memory = Some(dsbox_runtime::parse_size(&opts.memory).context("--memory")?);
    sandbox_factory(
        rt,
        &SandboxArgs {
            rootfs,
            store: opts.store.as_deref(),
            no_build: opts.no_build,
            backend: opts.backend.config(memory, opts.cpus, concurrency),
        },
    )
}

/// Fail early when `dir` holds a run or other files (naming the stage's resume).
pub(crate) fn check_out(dir: &Path, command: &str) -> anyhow::Result<()> {
    if dir.join(dsbox_agent::rundir::MANIFEST).exists() {
        bail!(
            "{} already holds a run: continue it with `{command} --resume {}` or choose another --out",
            dir.display(),
            dir.display()
        );
    }
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.any(|e| e.is_ok_and(|e| e.file_name() != ".lock"))
    {
        bail!(
            "{} is not empty and holds no dsbox run: choose a new or empty directory for --out",
            dir.display()
        );
    }
    Ok(())
}

/// A new run's manifest.
#[allow(clippy::too_many_arguments)]
pub(crate) fn manifest(
    model: &str,
    base_url: &str,
    temperature: Option<f64>,
    args: &ModelArgs,
    scaffold: ScaffoldKind,
    settings: EpisodeSettings,
    k: u32,
    items: &[PlannedItem],
    data_root: Option<PathBuf>,
    factory: &dyn SandboxFactory,
    concurrency: usize,
    notes: Vec<String>,
) -> RunManifest {
    let mut suites: Vec<String> = Vec::new();
    for i in items {
        if !suites.contains(&i.task.suite) {
            suites.push(i.task.suite.clone());
        }
    }
    RunManifest {
        format: dsbox_agent::rundir::FORMAT,
        dsbox_version: env!("CARGO_PKG_VERSION").into(),
        created: dsbox_agent::rundir::now_rfc3339(),
        model: ModelInfo {
            name: model.into(),
            kind: "openai".into(),
            base_url: Some(base_url.into()),
            temperature,
            top_p: args.top_p,
            max_tokens: Some(args.max_tokens),
        },
        scaffold,
        settings,
        k,
        suites,
        selection: Selection::default(),
        data_root,
        backend: factory.info(),
        concurrency,
        tasks: items
            .iter()
            .map(|i| PlannedTask {
                id: i.task.id.clone(),
                suite: i.task.suite.clone(),
                index: i.index,
            })
            .collect(),
        notes,
    }
}

/// Run the planned episodes (Ctrl-C stops cleanly) and write the eval reports.
pub(crate) fn roll_out(
    rt: &tokio::runtime::Runtime,
    dir: RunDir,
    manifest: &RunManifest,
    items: Vec<PlannedItem>,
    done: Vec<ResultRecord>,
    setup: EvalSetup,
) -> anyhow::Result<RunReport> {
    let root = dir.root().to_owned();
    let observer: Arc<dyn RunObserver> = Arc::from(observer_for_stderr());
    let report = drive(rt, dir, manifest, items, done, setup, observer)?;
    if let Err(e) = report::write_reports(&root) {
        eprintln!("dsbox: warning: could not write the reports: {e}");
    }
    Ok(report)
}

/// The exit code of a run, with what to do next when it did not complete.
pub(crate) fn run_end(report: &RunReport, dir: &Path, command: &str) -> Option<ExitCode> {
    match &report.end {
        RunEnd::Completed => None,
        RunEnd::Interrupted => {
            eprintln!(
                "{command}: interrupted with {} of {} episodes finished; continue with `{command} --resume {}`",
                report.metrics.overall.finished,
                report.metrics.overall.planned,
                dir.display()
            );
            Some(ExitCode::from(130))
        }
        RunEnd::Stopped(e) => {
            eprintln!(
                "dsbox: error: the run stopped: {e}\n  finished episodes are saved; after fixing this, continue with `{command} --resume {}`",
                dir.display()
            );
            Some(ExitCode::FAILURE)
        }
    }
}

/// What a resumed stage runs on: the runtime, the run's model (checked with one request),
/// the concurrency, and the sandboxes of `--rootfs` or the run's own rootfs (none when
/// `with_sandbox` is false).
pub(crate) struct Resumed {
    pub rt: tokio::runtime::Runtime,
    pub model: OpenAiModel,
    pub concurrency: usize,
    pub factory: Option<Arc<dyn SandboxFactory>>,
}

impl Resumed {
    pub(crate) fn open(
        model: &ModelArgs,
        sandbox: &SandboxOpts,
        run: &RunOpts,
        manifest: &RunManifest,
        with_sandbox: bool,
    ) -> anyhow::Result<Resumed> {
        let concurrency = run.concurrency.unwrap_or(manifest.concurrency);
        let model = resumed_model(model, manifest, concurrency)?;
        let rt = runtime()?;
        rt.block_on(model.preflight())?;
        let factory = if with_sandbox {
            let rootfs = sandbox
                .rootfs
                .clone()
                .unwrap_or(manifest.backend.rootfs.clone());
            Some(factory_for(&rt, sandbox, &rootfs, concurrency)?)
        } else {
            None
        };
        Ok(Resumed {
            rt,
            model,
            concurrency,
            factory,
        })
    }

    /// The rollouts' setup, with the run's own scaffold and episode settings.
    pub(crate) fn setup(
        model: OpenAiModel,
        factory: Arc<dyn SandboxFactory>,
        manifest: &RunManifest,
        concurrency: usize,
        retry_errors: bool,
    ) -> EvalSetup {
        EvalSetup {
            model: Arc::new(model),
            judge: None,
            factory,
            scaffold: manifest.scaffold,
            settings: manifest.settings.clone(),
            concurrency,
            retry_errors,
        }
    }
}

/// The model of a resumed run (server may change; the rest is the run's).
pub(crate) fn resumed_model(
    args: &ModelArgs,
    m: &RunManifest,
    concurrency: usize,
) -> anyhow::Result<OpenAiModel> {
    if let Some(given) = &args.model
        && *given != m.model.name
    {
        bail!(
            "--model {given} differs from the run's {}: --resume continues a run with its own model; drop --model or start a new run",
            m.model.name
        );
    }
    let base_url = args
        .base_url
        .clone()
        .or(m.model.base_url.clone())
        .context("the run names no --base-url; give one")?;
    let mut args = args.clone();
    args.top_p = m.model.top_p;
    if let Some(t) = m.model.max_tokens {
        args.max_tokens = t;
    }
    model_for(
        &args,
        &m.model.name,
        &base_url,
        m.model.temperature,
        concurrency,
    )
}

pub fn run(args: SynthArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SynthCommand::Queries(q) => queries_cmd(&args.source, *q),
        SynthCommand::Trajectories(t) => trajectories_cmd(&args.source, *t),
        SynthCommand::Filter(f) => filter_cmd(&args.source, *f),
        SynthCommand::Export(e) => export_cmd(&args.source, e),
    }
}

// ---------------------------------------------------------------- queries

/// `SUITE`, `SUITE,SUITE` or `SUITE:ID,ID` → (suite, ids).
fn parse_seed_specs(specs: &[String]) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for spec in specs {
        match spec.split_once(':') {
            Some((suite, ids)) => {
                let suite = suite.trim();
                if suite.is_empty() {
                    bail!("--seeds {spec}: name the suite before the colon (SUITE:ID,ID)");
                }
                let ids: Vec<String> = ids
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|id| {
                        if id.starts_with(&format!("{suite}/")) {
                            id.to_owned()
                        } else {
                            format!("{suite}/{id}")
                        }
                    })
                    .collect();
                if ids.is_empty() {
                    bail!(
                        "--seeds {spec}: list task ids after the colon, or give the suite alone for all of it"
                    );
                }
                out.push((suite.to_owned(), ids));
            }
            None => {
                for s in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    out.push((s.to_owned(), Vec::new()));
                }
            }
        }
    }
    Ok(out)
}

/// The seed tasks of `specs`, in order; whether any spec selected a whole suite.
fn load_seeds(
    reg: &SuiteRegistry,
    specs: &[(String, Vec<String>)],
    limit: Option<usize>,
) -> anyhow::Result<(Vec<Task>, bool)> {
    let mut seeds: Vec<Task> = Vec::new();
    let mut whole = false;
    let mut loaded: HashMap<String, dsbox_tasks::LoadedSuite> = HashMap::new();
    for (suite, ids) in specs {
        if !loaded.contains_key(suite) {
            loaded.insert(suite.clone(), reg.load(suite)?);
        }
        let s = &loaded[suite];
        let chosen: Vec<Task> = if ids.is_empty() {
            whole = true;
            s.tasks
                .iter()
                .take(limit.unwrap_or(usize::MAX))
                .cloned()
                .collect()
        } else {
            let mut v = Vec::new();
            for id in ids {
                let t = s.task(id).with_context(|| {
                    format!(
                        "--seeds: {id} is not a task of {suite} (ids look like {}); `dsbox tasks list --suite {suite}` lists them",
                        s.tasks.first().map_or("<suite>/<id>", |t| t.id.as_str())
                    )
                })?;
                v.push(t.clone());
            }
            v.into_iter().take(limit.unwrap_or(usize::MAX)).collect()
        };
        for t in chosen {
            if !seeds.iter().any(|x| x.id == t.id) {
                seeds.push(t);
            }
        }
    }
    Ok((seeds, whole))
}

const QUERIES: &str = "dsbox synth queries";

fn queries_cmd(source: &SuiteSourceArgs, args: QueriesArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.run.resume.clone() {
        return queries_resume(source, args, &dir);
    }
    if args.seeds.is_empty() {
        bail!(
            "give the seed tasks with --seeds SUITE or --seeds SUITE:ID,ID (e.g. --seeds qrdata:0,1,2)"
        );
    }
    let (model_name, base_url) = model_and_url(&args.model)?;
    let temperature = Some(args.temperature.unwrap_or(0.8));
    check_temperature(temperature)?;
    let settings = episode_settings(&args.run, dsbox_agent::protocol::DEFAULT_MAX_TURNS)?;
    trajectories::check_name(&args.name)?;
    let specs = parse_seed_specs(&args.seeds)?;
    let reg = source.registry()?;
    let (seeds, whole) = load_seeds(&reg, &specs, args.limit)?;
    let (seeds, notes) = queries::check_seeds(seeds, whole)?;
    for n in &notes {
        eprintln!("{QUERIES}: note: {n}");
    }
    let out = args
        .run
        .out
        .clone()
        .unwrap_or_else(|| default_out(&format!("synth-queries-{model_name}")));
    check_out(&out, QUERIES)?;
    let concurrency = args.run.concurrency.unwrap_or(8);
    let model = model_for(
        &args.model,
        &model_name,
        &base_url,
        temperature,
        concurrency,
    )?;
    let rt = runtime()?;
    rt.block_on(model.preflight())?;
    let factory = factory_for(
        &rt,
        &args.sandbox,
        args.sandbox.rootfs.as_deref().unwrap_or("analysis"),
        concurrency,
    )?;
    let items = queries::plan(&seeds, args.n);
    let manifest = manifest(
        &model_name,
        &base_url,
        temperature,
        &args.model,
        ScaffoldKind::React,
        settings.clone(),
        1,
        &items,
        source.data_root.clone(),
        factory.as_ref(),
        concurrency,
        notes,
    );
    let stage = QueriesStage {
        name: args.name.clone(),
        n: args.n,
        prompt_version: queries::PROMPT_VERSION.into(),
        seeds: seeds.iter().map(|s| s.id.clone()).collect(),
    };
    let dir = RunDir::create(&out, &manifest)?;
    StageManifest::new(Stage::Queries(stage.clone())).write(&out)?;
    eprintln!(
        "{QUERIES}: {} seed(s), {} item(s) each, model {model_name}; run directory {}",
        seeds.len(),
        args.n,
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
    queries_finish(source, &out, &stage, &seeds, &manifest, &report)
}

fn queries_resume(
    source: &SuiteSourceArgs,
    args: QueriesArgs,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    if args.run.out.is_some() {
        bail!(
            "--out and --resume exclude each other: --resume continues the run in its own directory"
        );
    }
    let stage = StageManifest::read(dir, "queries")?.queries(dir)?;
    let opened = RunDir::open(dir)?;
    let manifest = opened.manifest.clone();
    let mut source = source.clone();
    if source.data_root.is_none() {
        source.data_root = manifest.data_root.clone();
    }
    let reg = source.registry()?;
    let mut loaded: HashMap<String, dsbox_tasks::LoadedSuite> = HashMap::new();
    let mut seeds = Vec::new();
    for id in &stage.seeds {
        let suite = manifest
            .tasks
            .iter()
            .find(|t| t.id == *id)
            .map(|t| t.suite.clone())
            .with_context(|| format!("{}: seed {id} is not in run.json", dir.display()))?;
        if !loaded.contains_key(&suite) {
            loaded.insert(suite.clone(), reg.load(&suite)?);
        }
        let task = loaded[&suite].task(id).with_context(|| {
            format!("seed {id} of the run is no longer in suite {suite}: was the data root changed? (--data-root)")
        })?;
        seeds.push(task.clone());
    }
    let Resumed {
        rt,
        model,
        concurrency,
        factory,
    } = Resumed::open(&args.model, &args.sandbox, &args.run, &manifest, true)?;
    if opened.dropped_partial_line {
        eprintln!(
            "{QUERIES}: dropped a half-written last line of results.jsonl (that episode is redone)"
        );
    }
    let items = queries::plan(&seeds, stage.n);
    eprintln!(
        "{QUERIES}: resuming {}: {} of {} seeds finished",
        dir.display(),
        opened.records.len(),
        seeds.len()
    );
    let factory = factory.context("no sandbox factory")?;
    let setup = Resumed::setup(
        model,
        factory,
        &manifest,
        concurrency,
        args.run.retry_errors,
    );
    let report = roll_out(&rt, opened.dir, &manifest, items, opened.records, setup)?;
    queries_finish(&source, dir, &stage, &seeds, &manifest, &report)
}

fn queries_finish(
    source: &SuiteSourceArgs,
    dir: &Path,
    stage: &QueriesStage,
    seeds: &[Task],
    manifest: &RunManifest,
    report: &RunReport,
) -> anyhow::Result<ExitCode> {
    let (tasks, qreport) =
        queries::collect(dir, stage, seeds, &report.records, &manifest.model.name);
    for s in &qreport.per_seed {
        if let Some(p) = &s.problem {
            eprintln!("{QUERIES}: {}: {p}", s.seed);
        }
    }
    let stopped = run_end(report, dir, QUERIES);
    let written = queries::write_outputs(dir, &tasks, &qreport);
    if source.json {
        println!("{}", serde_json::to_string_pretty(&qreport)?);
    }
    match written {
        Ok(out) => {
            eprintln!(
                "{QUERIES}: {} queries from {} seed(s) → {}\n  suite `{}`: {} (and {}); next: `dsbox synth trajectories --tasks {}`",
                tasks.len(),
                qreport.seeds,
                out.queries.display(),
                stage.name,
                out.entry.display(),
                out.report.display(),
                out.queries.display()
            );
        }
        // An interrupted run may simply not have got to any seed yet.
        Err(SynthError::NoQueries { .. }) if stopped.is_some() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(stopped.unwrap_or(ExitCode::SUCCESS))
}

// ---------------------------------------------------------------- trajectories

const TRAJECTORIES: &str = "dsbox synth trajectories";

fn trajectories_cmd(source: &SuiteSourceArgs, args: TrajectoriesArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.run.resume.clone() {
        return trajectories_resume(source, args, &dir);
    }
    let Some(tasks_path) = args.tasks.clone() else {
        bail!("give the tasks with --tasks FILE (the queries.jsonl `dsbox synth queries` wrote)");
    };
    let (model_name, base_url) = model_and_url(&args.model)?;
    let k = args.k.unwrap_or(8);
    let t = args.temperature.unwrap_or(0.8);
    let temperature = Some(t);
    check_temperature(temperature)?;
    let settings = episode_settings(&args.run, dsbox_agent::protocol::DEFAULT_MAX_TURNS)?;
    let tf = trajectories::load_tasks_file(&tasks_path, args.name.as_deref())?;
    for w in &tf.warnings {
        eprintln!("{TRAJECTORIES}: note: {w}");
    }
    let prompts = prompts(args.prompts_dir.clone())?;
    let items = trajectories::plan(&tf.suite, &prompts, args.limit)?;
    let out = args
        .run
        .out
        .clone()
        .unwrap_or_else(|| default_out(&format!("synth-trajectories-{model_name}")));
    check_out(&out, TRAJECTORIES)?;
    let concurrency = args.run.concurrency.unwrap_or(8);
    let model = model_for(
        &args.model,
        &model_name,
        &base_url,
        temperature,
        concurrency,
    )?;
    let rt = runtime()?;
    rt.block_on(model.preflight())?;
    let factory = factory_for(
        &rt,
        &args.sandbox,
        args.sandbox.rootfs.as_deref().unwrap_or("analysis"),
        concurrency,
    )?;
    let scaffold = args.scaffold.unwrap_or(ScaffoldKind::React);
    let manifest = manifest(
        &model_name,
        &base_url,
        temperature,
        &args.model,
        scaffold,
        settings.clone(),
        k,
        &items,
        None,
        factory.as_ref(),
        concurrency,
        vec![format!("tasks from {}", tf.path.display())],
    );
    let dir = RunDir::create(&out, &manifest)?;
    trajectories::install(&out, &tf)?;
    StageManifest::new(Stage::Trajectories(TrajectoriesStage {
        name: tf.suite.def.name.clone(),
        source: tf.path.clone(),
        tasks: items.len(),
    }))
    .write(&out)?;
    eprintln!(
        "{TRAJECTORIES}: {} queries × k = {k} at temperature {}, model {model_name}; run directory {}",
        items.len(),
        t,
        out.display()
    );
    let setup = EvalSetup {
        model: Arc::new(model),
        judge: None,
        factory,
        scaffold,
        settings,
        concurrency,
        retry_errors: false,
    };
    let report = roll_out(&rt, dir, &manifest, items, Vec::new(), setup)?;
    trajectories_finish(source, &out, &report)
}

fn trajectories_resume(
    source: &SuiteSourceArgs,
    args: TrajectoriesArgs,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    if args.run.out.is_some() || args.tasks.is_some() {
        bail!(
            "--out and --tasks cannot change a run: --resume continues it with its own copy of the tasks"
        );
    }
    let stage = StageManifest::read(dir, "trajectories")?.trajectories(dir)?;
    let opened = RunDir::open(dir)?;
    let manifest = opened.manifest.clone();
    if let Some(k) = args.k
        && k != manifest.k
    {
        bail!(
            "--k {k} differs from the run's {}: drop --k or start a new run",
            manifest.k
        );
    }
    let suite = trajectories::run_suite(dir, &stage.name)?;
    let prompts = prompts(args.prompts_dir.clone())?;
    let by_id: HashMap<&str, &Task> = suite.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut items = Vec::new();
    for p in &manifest.tasks {
        let task = by_id.get(p.id.as_str()).with_context(|| {
            format!(
                "task {} of the run is missing from its {}",
                p.id,
                trajectories::TASKS_FILE
            )
        })?;
        items.push(PlannedItem {
            task: Arc::new((*task).clone()),
            prompt: Arc::new(prompts.render(task, &suite.def)?),
            index: p.index,
        });
    }
    let Resumed {
        rt,
        model,
        concurrency,
        factory,
    } = Resumed::open(&args.model, &args.sandbox, &args.run, &manifest, true)?;
    if opened.dropped_partial_line {
        eprintln!(
            "{TRAJECTORIES}: dropped a half-written last line of results.jsonl (that trajectory is redone)"
        );
    }
    eprintln!(
        "{TRAJECTORIES}: resuming {}: {} of {} trajectories finished",
        dir.display(),
        opened.records.len(),
        manifest.planned_trajectories()
    );
    let factory = factory.context("no sandbox factory")?;
    let setup = Resumed::setup(
        model,
        factory,
        &manifest,
        concurrency,
        args.run.retry_errors,
    );
    let report = roll_out(&rt, opened.dir, &manifest, items, opened.records, setup)?;
    trajectories_finish(source, dir, &report)
}

fn trajectories_finish(
    source: &SuiteSourceArgs,
    dir: &Path,
    report: &RunReport,
) -> anyhow::Result<ExitCode> {
    if source.json {
        println!("{}", serde_json::to_string_pretty(&report.metrics)?);
    } else {
        print!("{}", report::table(&report.metrics));
    }
    let stopped = run_end(report, dir, TRAJECTORIES);
    eprintln!(
        "{TRAJECTORIES}: {} new trajectories; run directory {} (report.html there); next: `dsbox synth filter {}`",
        report.new_records,
        dir.display(),
        dir.display()
    );
    Ok(stopped.unwrap_or(ExitCode::SUCCESS))
}

// ---------------------------------------------------------------- filter

/// Progress lines on stderr.
struct FilterLines;

impl FilterObserver for FilterLines {
    fn message(&self, text: &str) {
        eprintln!("dsbox synth filter: {text}");
    }

    fn checked(&self, what: &str, done: usize, total: usize) {
        if done == total || done.is_multiple_of(25) {
            eprintln!("dsbox synth filter: {what}: {done}/{total}");
        }
    }
}

fn filter_cmd(source: &SuiteSourceArgs, args: FilterArgs) -> anyhow::Result<ExitCode> {
    let run = &args.run;
    // The run must be a trajectories run before anything else is asked of it.
    StageManifest::read(run, "trajectories")?.trajectories(run)?;
    let (manifest, _) = dsbox_agent::rundir::read_run(run)?;
    let mut params = FilterParams::defaults(manifest.settings.max_turns);
    params.min_turns = args.min_turns;
    params.max_turns = args.max_turns.unwrap_or(manifest.settings.max_turns);
    params.agreement = args.agreement;
    params.require_correct = args.require_correct;
    params.verify = !args.no_verify;
    params.dedup_threshold = (!args.no_dedup).then_some(args.dedup_threshold);
    params.seed_dedup = !args.no_seed_dedup;
    params.per_query = args.per_query;
    let judge_model = args
        .judge_model
        .clone()
        .unwrap_or(manifest.model.name.clone());
    if !args.no_judge {
        params.judge = Some(JudgeParams {
            model: judge_model.clone(),
            threshold: args.judge_threshold,
            rubric: synth::judge::RUBRIC_VERSION.into(),
        });
    }
    params.check()?;
    let rt = runtime()?;
    let judge: Option<Arc<dyn Model>> = if args.no_judge {
        None
    } else {
        let Some(url) = args
            .judge_base_url
            .clone()
            .or(manifest.model.base_url.clone())
        else {
            bail!(
                "the run names no model server for the judge: give --judge-base-url (and --judge-model), or --no-judge"
            );
        };
        let margs = ModelArgs {
            model: Some(judge_model.clone()),
            base_url: Some(url.clone()),
            api_key_env: args.api_key_env.clone(),
            top_p: None,
            max_tokens: 512,
            request_timeout: args.request_timeout.clone(),
            max_retries: 5,
        };
        let m = model_for(&margs, &judge_model, &url, Some(0.0), args.concurrency)?;
        rt.block_on(m.preflight())
            .map_err(|e| anyhow::anyhow!("{e} (or pass --no-judge)"))?;
        Some(Arc::new(m))
    };
    let factory = if params.verify {
        let rootfs = args
            .sandbox
            .rootfs
            .clone()
            .unwrap_or(manifest.backend.rootfs.clone());
        Some(factory_for(&rt, &args.sandbox, &rootfs, args.concurrency)?)
    } else {
        None
    };
    let setup = FilterSetup {
        params,
        factory,
        judge,
        concurrency: args.concurrency,
        verify: VerifySettings {
            cell_timeout: manifest.settings.cell_timeout,
            observation_cap: manifest.settings.observation_cap,
        },
    };
    let outcome = rt.block_on(async {
        let (tx, rx) = watch::channel(false);
        let signals = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ndsbox synth filter: stopping: finished checks are saved (Ctrl-C again to quit at once)");
                let _ = tx.send(true);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        let r = synth::filter::run_filter(run, args.out.as_deref(), &setup, &FilterLines, rx).await;
        signals.abort();
        r
    });
    let outcome = match outcome {
        Ok(o) => o,
        Err(e @ SynthError::EmptyFilter { .. }) => {
            if let Ok(s) = synth::filter::read_summary(
                &args
                    .out
                    .clone()
                    .unwrap_or(run.join(synth::filter::FILTER_DIR)),
            ) {
                eprint!("{}", s.table());
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    if outcome.interrupted {
        eprintln!(
            "dsbox synth filter: interrupted; the checks done are saved in {}: run the same command again to continue",
            outcome.out.join(synth::filter::CHECKS).display()
        );
        return Ok(ExitCode::from(130));
    }
    let s = &outcome.summary;
    if source.json {
        println!("{}", serde_json::to_string_pretty(s)?);
    } else {
        print!("{}", s.table());
    }
    eprintln!(
        "dsbox synth filter: kept {} of {} trajectories ({} of {} queries); {} re-run now, {} reused; {} judged now, {} reused\n  decisions: {}\n  next: `dsbox synth export {} --format openai-chat --out train.jsonl`",
        s.kept,
        s.trajectories,
        s.queries_kept,
        s.queries,
        s.verified_now,
        s.verified_cached,
        s.judged_now,
        s.judged_cached,
        outcome.out.join(synth::filter::DECISIONS).display(),
        run.display()
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- export

fn export_cmd(source: &SuiteSourceArgs, args: ExportArgs) -> anyhow::Result<ExitCode> {
    if args.out.extension().is_none_or(|e| e != "jsonl") {
        bail!(
            "--out {}: the export is JSONL; name the file *.jsonl",
            args.out.display()
        );
    }
    if args.out.is_dir() {
        bail!(
            "--out {} is a directory: give a file name ending in .jsonl",
            args.out.display()
        );
    }
    let opts = ExportOptions {
        format: args.format,
        system: !args.no_system,
        metadata: args.metadata,
    };
    let r = synth::export::export(&args.run, args.filter.as_deref(), &args.out, &opts)?;
    if source.json {
        println!("{}", serde_json::to_string_pretty(&r.card)?);
    }
    for s in &r.card.skipped {
        eprintln!("dsbox synth export: left out {s}");
    }
    eprintln!(
        "dsbox synth export: {} conversations ({} queries) as {} → {}\n  dataset card: {} and {}",
        r.card.counts.examples,
        r.card.counts.queries,
        r.card.format.as_str(),
        r.data.display(),
        r.card_md.display(),
        r.card_json.display()
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- bench

/// `dsbox bench synth`.
#[derive(Debug, clap::Args)]
pub struct BenchSynthArgs {
    /// Seed tasks: the first N QRData tasks (the starter suite without a data root).
    #[arg(long, default_value_t = 10, value_parser = positive_usize)]
    pub seeds: usize,
    /// Queries per seed.
    #[arg(long, default_value_t = 3, value_parser = positive_usize)]
    pub n: usize,
    /// Rollouts per query.
    #[arg(long, default_value_t = 4, value_parser = positive_u32)]
    pub k: u32,
    /// Episodes and checks at once.
    #[arg(long, default_value_t = 2, value_parser = positive_usize)]
    pub concurrency: usize,
    /// Trajectories the baseline replays (its figure is per trajectory).
    #[arg(long, default_value_t = 10, value_parser = positive_usize)]
    pub baseline_trajectories: usize,
    /// DSGym release directory (default: $DSBOX_DATA_ROOT, ~/.local/share/dsbox/dsgym, or
    /// ../shared/data/dsgym).
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    #[command(flatten)]
    pub rootfs: RootfsOpts,
    #[command(flatten)]
    pub backend: BackendOpts,
    /// Keep the runs here (queries/, trajectories/, train.jsonl); must not exist.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Print the full result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn bench(args: BenchSynthArgs) -> anyhow::Result<ExitCode> {
    let root = super::demo::data_root(args.data_root.clone());
    let reg = SuiteRegistry::builtin(dsbox_tasks::DataRoot::resolve(root.as_deref()))?;
    let (seeds, source) = match reg.load("qrdata") {
        Ok(s) if !s.tasks.is_empty() => {
            let seeds: Vec<Task> = s
                .tasks
                .into_iter()
                .filter(|t| {
                    t.data.iter().any(|d| {
                        d.path.ends_with(".csv") && d.host.as_ref().is_some_and(|h| h.exists())
                    })
                })
                .take(args.seeds)
                .collect();
            let source = format!(
                "qrdata ({})",
                root.as_deref()
                    .map_or_else(|| "data root".into(), |p| p.display().to_string())
            );
            (seeds, source)
        }
        _ => {
            let s = reg.load("starter")?;
            let seeds: Vec<Task> = s.tasks.into_iter().take(args.seeds).collect();
            let source = format!(
                "the starter suite ({} seeds on 3 files; no DSGym data root found, pass --data-root for QRData)",
                seeds.len()
            );
            (seeds, source)
        }
    };
    if let Some(dir) = &args.keep {
        check_out(dir, "dsbox bench synth")?;
    }
    let rootfs = args.rootfs.ensure()?;
    let cfg = dsbox_bench::synth::SynthBenchConfig {
        seeds,
        source,
        n: args.n,
        k: args.k,
        concurrency: args.concurrency,
        backend: args.backend.config(Some(2 << 30), None, args.concurrency),
        rootfs,
        baseline_trajectories: args.baseline_trajectories,
        keep: args.keep.clone(),
    };
    eprintln!(
        "dsbox bench synth: {} seeds from {}, {} queries each, k = {}, concurrency {}, {} backend; then the baseline",
        cfg.seeds.len(),
        cfg.source,
        cfg.n,
        cfg.k,
        cfg.concurrency,
        cfg.backend.backend.as_str()
    );
    let result = dsbox_bench::synth::run(&cfg)?;
    super::bench::print_result(&result, result.summary(), args.json)
}
