//! `dsbox demo`: run a few real tasks end to end with a built-in scripted agent (no API
//! key): the built-in `starter` suite, plus a handful of QRData and DAEval tasks when the
//! DSGym data is present. Every episode runs in its own sandbox; the scripted analyst's
//! pandas code computes each answer from the task's data, the metrics score it, and the
//! report is written like any `dsbox eval` run's.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use dsbox_agent::demo;
use dsbox_agent::progress::observer_for_stderr;
use dsbox_agent::rundir::{ModelInfo, RunManifest, Selection};
use dsbox_agent::{EpisodeSettings, EvalSetup, Model, RunDir, RunObserver, ScaffoldKind};
use dsbox_tasks::{DataRoot, SuiteRegistry};

use super::eval::{
    BackendOpts, RootfsOpts, SandboxArgs, check_out_dir, default_out, drive, finish, prompts,
    runtime, sandbox_factory, select,
};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Run directory (default: dsbox-runs/<time>-demo).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// DSGym release directory; when present, QRData and DAEval tasks join the demo
    /// (default: $DSBOX_DATA_ROOT, ~/.local/share/dsbox/dsgym, or ../shared/data/dsgym).
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Only the built-in starter suite.
    #[arg(long)]
    pub starter_only: bool,
    #[command(flatten)]
    pub rootfs: RootfsOpts,
    /// Episodes at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    #[command(flatten)]
    pub backend: BackendOpts,
    /// Where the starter suite writes its data (default: ~/.cache/dsbox/starter).
    #[arg(long, value_name = "DIR", hide = true)]
    pub starter_dir: Option<PathBuf>,
    /// Print the metrics as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The DSGym data: the flag, else the configured root, else ../shared/data/dsgym.
pub(crate) fn data_root(flag: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(f) = flag {
        return Some(f);
    }
    let configured = DataRoot::resolve(None);
    if let Ok(p) = configured.require() {
        return Some(p.to_owned());
    }
    let shared = PathBuf::from("../shared/data/dsgym");
    shared.join("task").is_dir().then_some(shared)
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let root = if args.starter_only {
        None
    } else {
        data_root(args.data_root.clone())
    };
    let mut reg = SuiteRegistry::builtin(DataRoot::resolve(root.as_deref()))?;
    if let Some(dir) = &args.starter_dir {
        reg.set_starter_dir(dir);
    }
    let mut suites = vec!["starter".to_owned()];
    let mut notes = Vec::new();
    match &root {
        Some(r) if r.join("task").is_dir() => {
            suites.extend(["qrdata".to_owned(), "daeval".to_owned()]);
            notes.push(format!("DSGym data from {}", r.display()));
        }
        _ => notes.push(
            "no DSGym data root found: starter suite only (pass --data-root for QRData/DAEval tasks)".into(),
        ),
    }
    let ids: Vec<String> = demo::supported_task_ids()
        .into_iter()
        .filter(|id| suites.iter().any(|s| id.starts_with(&format!("{s}/"))))
        .map(str::to_owned)
        .collect();
    let prompts = prompts(None)?;
    let selected = select(&reg, &suites, &ids, None, &prompts)?;
    let out = args.out.clone().unwrap_or_else(|| default_out("demo"));
    check_out_dir(&out)?;
    for n in &notes {
        eprintln!("dsbox demo: {n}");
    }
    let concurrency = args.concurrency.max(1);
    let backend = args.backend.config(Some(2 << 30), None, concurrency);
    eprintln!(
        "dsbox demo: {} tasks ({}), one sandbox each ({} backend), rootfs `{}`",
        selected.items.len(),
        suites.join(", "),
        backend.backend.as_str(),
        args.rootfs.name
    );
    let rt = runtime()?;
    let factory = sandbox_factory(
        &rt,
        &SandboxArgs {
            rootfs: &args.rootfs.name,
            store: args.rootfs.store.as_deref(),
            no_build: args.rootfs.no_build,
            backend,
        },
    )?;
    let tasks: Vec<&dsbox_tasks::Task> = selected.items.iter().map(|i| i.task.as_ref()).collect();
    let model = demo::scripted_analyst(&tasks);
    let settings = EpisodeSettings::default();
    let manifest = RunManifest {
        format: dsbox_agent::rundir::FORMAT,
        dsbox_version: env!("CARGO_PKG_VERSION").into(),
        created: dsbox_agent::rundir::now_rfc3339(),
        model: ModelInfo::scripted(model.name().to_owned()),
        scaffold: ScaffoldKind::React,
        settings: settings.clone(),
        k: 1,
        suites: selected.suites.iter().map(|s| s.def.name.clone()).collect(),
        selection: Selection { limit: None, ids },
        data_root: root.clone(),
        backend: factory.info(),
        concurrency,
        tasks: selected.planned(),
        notes,
    };
    let dir = RunDir::create(&out, &manifest)?;
    let setup = EvalSetup {
        model: Arc::new(model),
        judge: None,
        factory,
        scaffold: ScaffoldKind::React,
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
    )
    .context("the demo run")?;
    let code = finish(&report, &out, args.json, "dsbox demo")?;
    eprintln!(
        "\nEvaluate a real model the same way (any OpenAI-compatible server: vLLM, SGLang, llama.cpp, Ollama, OpenAI):\n  dsbox eval --suite starter --model MODEL --base-url http://localhost:8000/v1\n  (API key from $OPENAI_API_KEY, or name the variable with --api-key-env)"
    );
    Ok(code)
}
