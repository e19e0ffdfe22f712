//! `dsbox eval`: evaluate a model on benchmark suites: rollouts in sandboxes, metrics,
//! reports.
//!
//! Everything that can be checked before the run starts is checked first, in this order,
//! so bad input never leaves a run directory behind: the flags, the suites and task ids,
//! the prompts, the output directory (a run already there → use `--resume`), the model
//! server (one tiny request: unreachable, wrong key and unknown model fail here), and the
//! rootfs (built on first use). Then the run directory is created and the rollouts start.
//!
//! Exit codes: 0 when every planned trajectory has a result, 130 after Ctrl-C/SIGTERM
//! (continue with `--resume`), 1 on errors (including a model server that stopped
//! working mid-run), 2 on usage errors.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use dsbox_agent::model::{ModelJudge, OpenAiConfig, OpenAiModel};
use dsbox_agent::progress::observer_for_stderr;
use dsbox_agent::report;
use dsbox_agent::rundir::{ModelInfo, PlannedTask, RunManifest, Selection};
use dsbox_agent::sandbox::{Backend, BackendConfig, SandboxFactory};
use dsbox_agent::{
    EpisodeSettings, EvalSetup, Model, PlannedItem, RunDir, RunEnd, RunObserver, RunReport,
    ScaffoldKind,
};
use dsbox_tasks::paths::default_prompts_dir;
use dsbox_tasks::{Judge, LoadedSuite, Metric, Prompts, SuiteRegistry};
use tokio::sync::watch;

use super::tasks::SuiteSourceArgs;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub source: SuiteSourceArgs,
    /// Suites to run, comma-separated (see `dsbox tasks suites`).
    #[arg(long, value_delimiter = ',', value_name = "SUITE[,SUITE]")]
    pub suite: Vec<String>,
    /// The model's name on the server.
    #[arg(long)]
    pub model: Option<String>,
    /// The OpenAI-compatible server, e.g. http://localhost:8000/v1 (vLLM, SGLang,
    /// llama.cpp, Ollama: http://localhost:11434/v1, OpenAI: https://api.openai.com/v1).
    #[arg(long, env = "OPENAI_BASE_URL", value_name = "URL")]
    pub base_url: Option<String>,
    /// The environment variable holding the API key.
    #[arg(long, default_value = "OPENAI_API_KEY", value_name = "NAME")]
    pub api_key_env: String,
    /// Only the first N tasks of each suite.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Only these task ids (comma-separated, e.g. qrdata/0,qrdata/5).
    #[arg(long, value_delimiter = ',', value_name = "ID[,ID]")]
    pub ids: Vec<String>,
    /// Trajectories per task (pass@k). Default 1.
    #[arg(long, value_parser = parse_k)]
    pub k: Option<u32>,
    /// Sampling temperature. Default: 0 for k = 1, 0.8 for k > 1 (as the reference).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus sampling (default: the server's).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Completion tokens per reply.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: u32,
    /// Model replies per episode (the reference's default is 15).
    #[arg(long, value_parser = parse_positive_u32)]
    pub max_turns: Option<u32>,
    /// Episodes at once (default 8; --resume keeps the run's unless given).
    #[arg(long, value_parser = parse_positive_usize)]
    pub concurrency: Option<usize>,
    /// Run directory (default: dsbox-runs/<time>-<model>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// react: the reference's <python>/<answer> tags; tools: OpenAI tool calling.
    #[arg(long)]
    pub scaffold: Option<ScaffoldKind>,
    /// Continue an interrupted run (its settings come from its run.json).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// With --resume: also redo trajectories that ended in a model, sandbox or budget error.
    #[arg(long)]
    pub retry_errors: bool,
    /// Send figures to the model as images (vision models).
    #[arg(long)]
    pub multimodal: bool,
    /// Wall-clock limit per cell (interrupt, then restart the kernel).
    #[arg(long, default_value = "180s", value_name = "DURATION")]
    pub cell_timeout: String,
    /// Wall-clock limit per episode (`none` for no limit).
    #[arg(long, default_value = "30m", value_name = "DURATION")]
    pub episode_timeout: String,
    /// Limit per model request.
    #[arg(long, default_value = "600s", value_name = "DURATION")]
    pub request_timeout: String,
    /// Retries of a model request on 429, 5xx and connection errors.
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// Observations longer than this many characters keep their head and tail.
    #[arg(long, default_value_t = dsbox_agent::protocol::DEFAULT_OBSERVATION_CAP)]
    pub observation_cap: usize,
    #[command(flatten)]
    pub rootfs: RootfsOpts,
    /// Memory limit per sandbox.
    #[arg(long, default_value = "2G")]
    pub memory: String,
    /// CPU limit per sandbox, in cores (default: none).
    #[arg(long)]
    pub cpus: Option<f64>,
    #[command(flatten)]
    pub backend: BackendOpts,
    /// Prompt templates replacing the built-in ones.
    #[arg(long, value_name = "DIR")]
    pub prompts_dir: Option<PathBuf>,
    /// Judge model for LLM-judge metrics (default: --model).
    #[arg(long)]
    pub judge_model: Option<String>,
    /// Judge server (default: --base-url).
    #[arg(long, value_name = "URL")]
    pub judge_base_url: Option<String>,
}

fn parse_k(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("--k must be at least 1 (it is the number of trajectories per task)".into()),
        Ok(k) => Ok(k),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

fn parse_positive_u32(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

fn parse_positive_usize(s: &str) -> Result<usize, String> {
    parse_positive_u32(s).map(|n| n as usize)
}

fn duration(flag: &str, value: &str) -> anyhow::Result<Option<Duration>> {
    if matches!(value.trim(), "none" | "0") {
        return Ok(None);
    }
    dsbox_runtime::parse_duration(value)
        .map(Some)
        .with_context(|| format!("--{flag}"))
}

/// The prompt templates (user overrides when present).
pub(crate) fn prompts(dir: Option<PathBuf>) -> anyhow::Result<Prompts> {
    if let Some(d) = &dir
        && !d.is_dir()
    {
        bail!(
            "prompts directory {} does not exist; pass an existing directory to --prompts-dir",
            d.display()
        );
    }
    let dir = dir.or_else(|| Some(default_prompts_dir()).filter(|d| d.is_dir()));
    Ok(Prompts::with_override_dir(dir))
}

/// The selected tasks of the suites, with their prompts rendered.
pub(crate) struct Selected {
    pub suites: Vec<LoadedSuite>,
    pub items: Vec<PlannedItem>,
}

impl Selected {
    pub fn planned(&self) -> Vec<PlannedTask> {
        self.items
            .iter()
            .map(|i| PlannedTask {
                id: i.task.id.clone(),
                suite: i.task.suite.clone(),
                index: i.index,
            })
            .collect()
    }

    pub fn needs_judge(&self) -> bool {
        self.items.iter().any(|i| {
            Metric::for_task(&i.task)
                .map(|m| m.needs_judge())
                .unwrap_or(false)
        })
    }
}

/// Load `suites`, keep `ids` (all when empty) and the first `limit` of each, render the
/// prompts.
pub(crate) fn select(
    reg: &SuiteRegistry,
    suites: &[String],
    ids: &[String],
    limit: Option<usize>,
    prompts: &Prompts,
) -> anyhow::Result<Selected> {
    let mut seen = HashSet::new();
    let mut loaded = Vec::new();
    for name in suites {
        if seen.insert(name.clone()) {
            loaded.push(reg.load(name)?);
        }
    }
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let known: HashSet<&str> = loaded
        .iter()
        .flat_map(|s| s.tasks.iter().map(|t| t.id.as_str()))
        .collect();
    let unknown: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| !known.contains(id))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "--ids: {} not a task of {} (ids look like {}); `dsbox tasks list --suite {}` lists them",
            unknown.join(", "),
            suites.join(", "),
            loaded
                .first()
                .and_then(|s| s.tasks.first())
                .map_or("<suite>/<id>", |t| t.id.as_str()),
            suites.first().map_or("SUITE", String::as_str)
        );
    }
    let mut items = Vec::new();
    for suite in &loaded {
        let chosen = suite
            .tasks
            .iter()
            .filter(|t| wanted.is_empty() || wanted.contains(t.id.as_str()))
            .take(limit.unwrap_or(usize::MAX));
        for (index, task) in chosen.enumerate() {
            let prompt = prompts
                .render(task, &suite.def)
                .with_context(|| format!("rendering the prompt of {}", task.id))?;
            items.push(PlannedItem {
                task: Arc::new(task.clone()),
                prompt: Arc::new(prompt),
                index,
            });
        }
    }
    if items.is_empty() {
        bail!(
            "no tasks selected from {}: check --ids and --limit",
            suites.join(", ")
        );
    }
    Ok(Selected {
        suites: loaded,
        items,
    })
}

/// The planned tasks of a run's manifest, looked up again in their suites.
fn items_from_manifest(
    reg: &SuiteRegistry,
    manifest: &RunManifest,
    prompts: &Prompts,
) -> anyhow::Result<Vec<PlannedItem>> {
    let mut suites = Vec::new();
    for name in &manifest.suites {
        suites.push(reg.load(name)?);
    }
    manifest
        .tasks
        .iter()
        .map(|p| {
            let suite = suites
                .iter()
                .find(|s| s.def.name == p.suite)
                .with_context(|| format!("suite {} of the run is not loaded", p.suite))?;
            let task = suite.task(&p.id).with_context(|| {
                format!(
                    "task {} of the run is no longer in suite {}: was the data root changed? (--data-root)",
                    p.id, p.suite
                )
            })?;
            let prompt = prompts.render(task, &suite.def)?;
            Ok(PlannedItem {
                task: Arc::new(task.clone()),
                prompt: Arc::new(prompt),
                index: p.index,
            })
        })
        .collect()
}

/// Fail early when `dir` holds a run or other files.
pub(crate) fn check_out_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.join(dsbox_agent::rundir::MANIFEST).exists() {
        let created = dsbox_agent::rundir::read_run(dir)
            .map(|(m, _)| format!(" (started {}, model {})", m.created, m.model.name))
            .unwrap_or_default();
        bail!(
            "{} already holds a run{created}: continue it with `dsbox eval --resume {}` or choose another --out",
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

/// `dsbox-runs/<UTC time>-<name>`.
pub(crate) fn default_out(name: &str) -> PathBuf {
    let stamp = dsbox_agent::rundir::now_rfc3339()
        .replace([':', '-'], "")
        .replace('T', "-")
        .trim_end_matches('Z')
        .to_owned();
    let slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    PathBuf::from("dsbox-runs").join(format!("{stamp}-{slug}"))
}

/// The rootfs flags of the commands that start a run's sandboxes.
#[derive(Debug, Clone, clap::Args)]
pub struct RootfsOpts {
    /// Root filesystem of the sandboxes (a name in the store, or a profile built on first use).
    #[arg(long = "rootfs", value_name = "NAME", default_value = "analysis")]
    pub name: String,
    /// Rootfs store (default: $DSBOX_STORE, else ~/.local/share/dsbox/rootfs).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Fail instead of building a missing rootfs.
    #[arg(long)]
    pub no_build: bool,
}

impl RootfsOpts {
    /// The rootfs, built first when it is a profile not in the store (unless --no-build).
    pub(crate) fn ensure(&self) -> anyhow::Result<dsbox_rootfs::Rootfs> {
        super::rootfs::ensure_rootfs(&self.name, self.store.as_deref(), self.no_build)
    }
}

/// The sandbox backend flags shared by the commands that run episodes.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendOpts {
    /// Where episodes run: `pooled` kernels forked from a zygote that already imported
    /// pandas and numpy, taken from a warm pool (milliseconds), or `cold`: a fresh sandbox
    /// and Python per episode (about a second).
    #[arg(long, value_enum, default_value_t = BackendArg::Pooled)]
    pub backend: BackendArg,
    /// Ready kernels the pooled backend keeps warm (default: the number of episodes at
    /// once).
    #[arg(long, value_name = "N", value_parser = parse_positive_usize)]
    pub pool_size: Option<usize>,
}

/// `--backend` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    Pooled,
    Cold,
}

impl BackendOpts {
    /// The backend settings for a run of `concurrency` episodes at once.
    pub(crate) fn config(
        &self,
        memory: Option<u64>,
        cpus: Option<f64>,
        concurrency: usize,
    ) -> BackendConfig {
        BackendConfig {
            backend: match self.backend {
                BackendArg::Pooled => Backend::Pooled,
                BackendArg::Cold => Backend::Cold,
            },
            memory,
            cpus,
            pool_size: self.pool_size.unwrap_or(concurrency).max(1),
        }
    }
}

/// Sandbox settings of a run.
pub(crate) struct SandboxArgs<'a> {
    pub rootfs: &'a str,
    pub store: Option<&'a Path>,
    pub no_build: bool,
    pub backend: BackendConfig,
}

/// The sandbox factory of the run's backend over the rootfs (built on first use unless
/// `no_build`). The pooled backend's zygote starts now, on `rt`, and must come up.
pub(crate) fn sandbox_factory(
    rt: &tokio::runtime::Runtime,
    args: &SandboxArgs,
) -> anyhow::Result<Arc<dyn SandboxFactory>> {
    let rootfs = super::rootfs::ensure_rootfs(args.rootfs, args.store, args.no_build)?;
    let factory = {
        let _runtime = rt.enter();
        dsbox_agent::sandbox::make_factory(&rootfs, &args.backend)?
    };
    // A backend that cannot start (the zygote's interpreter fails) is an error now, before
    // any run directory exists, not once per episode.
    rt.block_on(factory.warm(0, std::time::Duration::ZERO))?;
    Ok(factory)
}

/// Run the rollouts on a tokio runtime with Ctrl-C/SIGTERM stopping the run gracefully
/// (a second Ctrl-C exits at once).
pub(crate) fn drive(
    runtime: &tokio::runtime::Runtime,
    dir: RunDir,
    manifest: &RunManifest,
    items: Vec<PlannedItem>,
    done: Vec<dsbox_agent::ResultRecord>,
    setup: EvalSetup,
    observer: Arc<dyn RunObserver>,
) -> anyhow::Result<RunReport> {
    let root = dir.root().to_owned();
    runtime.block_on(async move {
        let (tx, rx) = watch::channel(false);
        let signals = tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let term_recv = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term_recv => {}
            }
            eprintln!(
                "\ndsbox: stopping: finished trajectories are saved; episodes in flight are dropped (Ctrl-C again to quit at once)"
            );
            let _ = tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
        let report = dsbox_agent::run_eval(dir, manifest, items, done, setup, observer, rx)
            .await
            .with_context(|| format!("run {}", root.display()));
        signals.abort();
        report
    })
}

/// Print the outcome: the table (or JSON), where the files are, and the exit code.
pub(crate) fn finish(
    report: &RunReport,
    dir: &Path,
    json: bool,
    what: &str,
) -> anyhow::Result<ExitCode> {
    let reports = report::write_reports(dir);
    if json {
        println!("{}", serde_json::to_string_pretty(&report.metrics)?);
    } else {
        print!("{}", report::table(&report.metrics));
    }
    match &reports {
        Ok((_, _, md, html)) => eprintln!(
            "{what}: {} new trajectories; run directory {}\n  report: {}\n  also: {}, results.jsonl, metrics.json, summary.csv",
            report.new_records,
            dir.display(),
            html.display(),
            md.display()
        ),
        Err(e) => eprintln!("dsbox: warning: could not write the reports: {e}"),
    }
    Ok(match &report.end {
        RunEnd::Completed => ExitCode::SUCCESS,
        RunEnd::Interrupted => {
            eprintln!(
                "{what}: interrupted with {} of {} trajectories finished; continue with `dsbox eval --resume {}`",
                report.metrics.overall.finished,
                report.metrics.overall.planned,
                dir.display()
            );
            ExitCode::from(130)
        }
        RunEnd::Stopped(e) => {
            eprintln!(
                "dsbox: error: the run stopped: {e}\n  finished trajectories are saved; after fixing this, continue with `dsbox eval --resume {}`",
                dir.display()
            );
            ExitCode::FAILURE
        }
    })
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

struct ModelSettings {
    base_url: String,
    model: String,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u32>,
}

fn openai(args: &EvalArgs, s: &ModelSettings, concurrency: usize) -> anyhow::Result<OpenAiModel> {
    let mut cfg = OpenAiConfig::new(&s.base_url, &s.model).with_key_from_env(&args.api_key_env);
    cfg.temperature = s.temperature;
    cfg.top_p = s.top_p;
    cfg.max_tokens = s.max_tokens;
    if let Some(t) = duration("request-timeout", &args.request_timeout)? {
        cfg.request_timeout = t;
    }
    cfg.max_retries = args.max_retries;
    // Judge calls and the episodes' requests share the server: allow a few more.
    cfg.max_concurrent = concurrency + 4;
    Ok(OpenAiModel::new(cfg)?)
}

fn judge_for(
    args: &EvalArgs,
    s: &ModelSettings,
    model: &OpenAiModel,
    concurrency: usize,
) -> anyhow::Result<Arc<dyn Judge>> {
    if args.judge_model.is_none() && args.judge_base_url.is_none() {
        return Ok(Arc::new(ModelJudge(model.clone())));
    }
    let js = ModelSettings {
        base_url: args
            .judge_base_url
            .clone()
            .unwrap_or_else(|| s.base_url.clone()),
        model: args.judge_model.clone().unwrap_or_else(|| s.model.clone()),
        temperature: Some(0.0),
        top_p: None,
        max_tokens: None,
    };
    Ok(Arc::new(openai(args, &js, concurrency)?))
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    match args.resume.clone() {
        Some(dir) => resume(args, &dir),
        None => start(args),
    }
}

fn start(args: EvalArgs) -> anyhow::Result<ExitCode> {
    if args.suite.is_empty() {
        bail!(
            "give the suites to run with --suite (e.g. --suite qrdata,daeval); `dsbox tasks suites` lists them"
        );
    }
    let Some(model_name) = args.model.clone() else {
        bail!("give the model's name with --model (as the server knows it)");
    };
    let Some(base_url) = args.base_url.clone() else {
        bail!(
            "give the OpenAI-compatible server with --base-url (e.g. http://localhost:8000/v1 for vLLM) or $OPENAI_BASE_URL"
        );
    };
    let k = args.k.unwrap_or(1);
    let concurrency = args.concurrency.unwrap_or(8);
    let temperature = args.temperature.or(Some(if k > 1 { 0.8 } else { 0.0 }));
    if let Some(t) = temperature
        && !(0.0..=2.0).contains(&t)
    {
        bail!("--temperature {t} is out of range: use 0 to 2");
    }
    let settings = EpisodeSettings {
        max_turns: args
            .max_turns
            .unwrap_or(dsbox_agent::protocol::DEFAULT_MAX_TURNS),
        cell_timeout: duration("cell-timeout", &args.cell_timeout)?
            .context("--cell-timeout cannot be `none`")?,
        episode_budget: duration("episode-timeout", &args.episode_timeout)?,
        multimodal: args.multimodal,
        observation_cap: args.observation_cap.max(200),
        ..EpisodeSettings::default()
    };
    let memory = Some(dsbox_runtime::parse_size(&args.memory).context("--memory")?);
    let reg = args.source.registry()?;
    let prompts = prompts(args.prompts_dir.clone())?;
    let selected = select(&reg, &args.suite, &args.ids, args.limit, &prompts)?;
    let out = args.out.clone().unwrap_or_else(|| default_out(&model_name));
    check_out_dir(&out)?;

    let ms = ModelSettings {
        base_url: base_url.clone(),
        model: model_name.clone(),
        temperature,
        top_p: args.top_p,
        max_tokens: Some(args.max_tokens),
    };
    let model = openai(&args, &ms, concurrency)?;
    let rt = runtime()?;
    rt.block_on(model.preflight())?;
    let judge = if selected.needs_judge() {
        let j = judge_for(&args, &ms, &model, concurrency)?;
        eprintln!(
            "dsbox eval: LLM-judge metrics are scored by {}",
            args.judge_model.as_deref().unwrap_or(&model_name)
        );
        Some(j)
    } else {
        None
    };
    let factory = sandbox_factory(
        &rt,
        &SandboxArgs {
            rootfs: &args.rootfs.name,
            store: args.rootfs.store.as_deref(),
            no_build: args.rootfs.no_build,
            backend: args.backend.config(memory, args.cpus, concurrency),
        },
    )?;
    let manifest = RunManifest {
        format: dsbox_agent::rundir::FORMAT,
        dsbox_version: env!("CARGO_PKG_VERSION").into(),
        created: dsbox_agent::rundir::now_rfc3339(),
        model: ModelInfo {
            name: model_name,
            kind: "openai".into(),
            base_url: Some(base_url),
            temperature,
            top_p: args.top_p,
            max_tokens: Some(args.max_tokens),
        },
        scaffold: args.scaffold.unwrap_or(ScaffoldKind::React),
        settings: settings.clone(),
        k,
        suites: selected.suites.iter().map(|s| s.def.name.clone()).collect(),
        selection: Selection {
            limit: args.limit,
            ids: args.ids.clone(),
        },
        data_root: args.source.data_root.clone(),
        backend: factory.info(),
        concurrency,
        tasks: selected.planned(),
        notes: Vec::new(),
    };
    let dir = RunDir::create(&out, &manifest)?;
    let setup = EvalSetup {
        model: Arc::new(model),
        judge,
        factory,
        scaffold: manifest.scaffold,
        settings,
        concurrency,
        retry_errors: false,
    };
    let observer: Arc<dyn RunObserver> = Arc::from(observer_for_stderr());
    let report = drive(
        &rt,
        dir,
        &manifest,
        selected.items,
        Vec::new(),
        setup,
        observer,
    )?;
    finish(&report, &out, args.source.json, "dsbox eval")
}

/// A flag given with --resume must agree with the run (or be left out).
fn same<T: PartialEq + std::fmt::Debug>(
    flag: &str,
    given: Option<T>,
    run: T,
) -> anyhow::Result<()> {
    match given {
        Some(g) if g != run => bail!(
            "--{flag} {g:?} differs from the run's {run:?}: --resume continues a run with its own settings; drop --{flag} or start a new run"
        ),
        _ => Ok(()),
    }
}

fn resume(args: EvalArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    if args.out.is_some() {
        bail!(
            "--out and --resume exclude each other: --resume continues the run in its own directory"
        );
    }
    let opened = RunDir::open(dir)?;
    let manifest = opened.manifest.clone();
    if opened.dropped_partial_line {
        eprintln!(
            "dsbox eval: dropped a half-written last line of {}/results.jsonl (that trajectory is redone)",
            dir.display()
        );
    }
    same("model", args.model.clone(), manifest.model.name.clone())?;
    same("k", args.k, manifest.k)?;
    same("scaffold", args.scaffold, manifest.scaffold)?;
    same("max-turns", args.max_turns, manifest.settings.max_turns)?;
    same(
        "temperature",
        args.temperature,
        manifest.model.temperature.unwrap_or(0.0),
    )?;
    if !args.suite.is_empty() {
        same("suite", Some(args.suite.clone()), manifest.suites.clone())?;
    }
    if !args.ids.is_empty() || args.limit.is_some() {
        bail!("--ids and --limit cannot change a run: --resume continues the tasks it planned");
    }
    let mut source = args.source.clone();
    if source.data_root.is_none() {
        source.data_root = manifest.data_root.clone();
    }
    let reg = source.registry()?;
    let prompts = prompts(args.prompts_dir.clone())?;
    let items = items_from_manifest(&reg, &manifest, &prompts)?;
    let concurrency = args.concurrency.unwrap_or(manifest.concurrency);
    let base_url = args
        .base_url
        .clone()
        .or(manifest.model.base_url.clone())
        .context("the run names no --base-url; give one")?;
    let ms = ModelSettings {
        base_url,
        model: manifest.model.name.clone(),
        temperature: manifest.model.temperature,
        top_p: manifest.model.top_p,
        max_tokens: manifest.model.max_tokens,
    };
    let model = openai(&args, &ms, concurrency)?;
    let rt = runtime()?;
    rt.block_on(model.preflight())?;
    let needs_judge = items.iter().any(|i| {
        Metric::for_task(&i.task)
            .map(|m| m.needs_judge())
            .unwrap_or(false)
    });
    let judge = if needs_judge {
        Some(judge_for(&args, &ms, &model, concurrency)?)
    } else {
        None
    };
    let memory = Some(dsbox_runtime::parse_size(&args.memory).context("--memory")?);
    let factory = sandbox_factory(
        &rt,
        &SandboxArgs {
            rootfs: &manifest.backend.rootfs,
            store: args.rootfs.store.as_deref(),
            no_build: args.rootfs.no_build,
            backend: args.backend.config(memory, args.cpus, concurrency),
        },
    )?;
    let info = factory.info();
    if info.rootfs_hash != manifest.backend.rootfs_hash {
        eprintln!(
            "dsbox eval: warning: rootfs {} changed since the run started ({} → {}); the new trajectories run in the new one",
            info.rootfs, manifest.backend.rootfs_hash, info.rootfs_hash
        );
    }
    let done = opened.records;
    eprintln!(
        "dsbox eval: resuming {}: {} of {} trajectories finished",
        dir.display(),
        done.len(),
        manifest.planned_trajectories()
    );
    let setup = EvalSetup {
        model: Arc::new(model) as Arc<dyn Model>,
        judge,
        factory,
        scaffold: manifest.scaffold,
        settings: manifest.settings.clone(),
        concurrency,
        retry_errors: args.retry_errors,
    };
    let observer: Arc<dyn RunObserver> = Arc::from(observer_for_stderr());
    let report = drive(&rt, opened.dir, &manifest, items, done, setup, observer)?;
    finish(&report, dir, args.source.json, "dsbox eval")
}

/// `dsbox bench eval` (targets.md P7).
#[derive(Debug, clap::Args)]
pub struct BenchEvalArgs {
    /// QRData tasks to run (from the data root; the starter suite repeated without one).
    #[arg(long, default_value_t = 100, value_parser = parse_positive_usize)]
    pub tasks: usize,
    /// Episodes at once.
    #[arg(long, default_value_t = 2, value_parser = parse_positive_usize)]
    pub concurrency: usize,
    /// Run the baseline on only the first N tasks (its figure is per task).
    #[arg(long, value_parser = parse_positive_usize)]
    pub baseline_tasks: Option<usize>,
    /// DSGym release directory (default: $DSBOX_DATA_ROOT, ~/.local/share/dsbox/dsgym, or
    /// ../shared/data/dsgym).
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    #[command(flatten)]
    pub rootfs: RootfsOpts,
    #[command(flatten)]
    pub backend: BackendOpts,
    /// Keep the dsbox side's run directory here (for `dsbox report`); must not exist.
    #[arg(long, value_name = "DIR")]
    pub keep_run: Option<PathBuf>,
    /// Print the full result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn bench(args: BenchEvalArgs) -> anyhow::Result<ExitCode> {
    let root = super::demo::data_root(args.data_root.clone());
    let reg = SuiteRegistry::builtin(dsbox_tasks::DataRoot::resolve(root.as_deref()))?;
    let prompts = prompts(None)?;
    let (suite, source) = match reg.load("qrdata") {
        Ok(s) if !s.tasks.is_empty() => {
            let source = format!(
                "qrdata ({})",
                root.as_deref()
                    .map_or_else(|| "data root".into(), |p| p.display().to_string())
            );
            (s, source)
        }
        _ => {
            let s = reg.load("starter")?;
            let source = format!(
                "the starter suite repeated ({} tasks; no DSGym data root found, pass --data-root for QRData)",
                s.tasks.len()
            );
            (s, source)
        }
    };
    let mut items = Vec::with_capacity(args.tasks);
    for i in 0..args.tasks {
        let Some(base) = suite.tasks.get(i % suite.tasks.len().max(1)) else {
            break;
        };
        let mut task = base.clone();
        if i >= suite.tasks.len() {
            // Repeats need their own ids: results are keyed by task id.
            task.id = format!("{}~{}", task.id, i / suite.tasks.len());
        }
        let prompt = prompts.render(&task, &suite.def)?;
        items.push(PlannedItem {
            task: Arc::new(task),
            prompt: Arc::new(prompt),
            index: i,
        });
    }
    let rootfs = args.rootfs.ensure()?;
    let cfg = dsbox_bench::eval::EvalBenchConfig {
        items,
        source,
        rootfs: rootfs.clone(),
        backend: args.backend.config(Some(2 << 30), None, args.concurrency),
        concurrency: args.concurrency,
        baseline_tasks: args.baseline_tasks,
        keep_run: args.keep_run.clone(),
    };
    if let Some(dir) = &args.keep_run {
        check_out_dir(dir)?;
    }
    eprintln!(
        "dsbox bench eval: {} tasks from {}, concurrency {}, {} backend; then the baseline",
        cfg.items.len(),
        cfg.source,
        cfg.concurrency,
        cfg.backend.backend.as_str()
    );
    let result = dsbox_bench::eval::run(&cfg)?;
    super::bench::print_result(&result, result.summary(), args.json)
}
