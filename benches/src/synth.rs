//! `dsbox bench synth`: throughput of the synthetic-data pipeline with an instant fake
//! model. The scripted analyst ([`dsbox_agent::synth::scripted`]) answers through the fake
//! OpenAI-compatible server over real HTTP on loopback, so every stage runs for real —
//! query generation (exploration episodes in sandboxes), k rollouts per query, the filter
//! (agreement, execution verification in fresh sandboxes, the LLM-judge rubric, dedup) and
//! the export — with `concurrency` episodes at once. The headline is rollout trajectories
//! per minute.
//!
//! The baseline, measured in the same run, executes the same trajectories' cells one after
//! another without a persistent kernel: cell i runs in a fresh `python` in a fresh sandbox
//! of the same rootfs and data, replaying cells 1..i first (a harness without kernels has
//! to rebuild the state). It skips the model, scoring and files, so it is the cheaper side.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dsbox_agent::fake::{FakeConfig, FakeServer};
use dsbox_agent::rundir::{self, ModelInfo, PlannedTask, RunManifest, Selection};
use dsbox_agent::sandbox::{
    BackendConfig, ColdConfig, SandboxFactory, SandboxRequest, make_factory,
};
use dsbox_agent::synth::export::{ExportFormat, ExportOptions};
use dsbox_agent::synth::filter::{FilterParams, FilterSetup, JudgeParams, QuietFilter};
use dsbox_agent::synth::scripted::SynthAnalyst;
use dsbox_agent::synth::stage::{QueriesStage, Stage, StageManifest, TrajectoriesStage};
use dsbox_agent::synth::verify::{self, VerifySettings};
use dsbox_agent::synth::{self, queries, trajectories};
use dsbox_agent::{
    EpisodeSettings, EvalSetup, OpenAiConfig, OpenAiModel, PlannedItem, ResultRecord, RunDir,
    RunEnd, ScaffoldKind, Trajectory, run_eval,
};
use dsbox_tasks::{Prompts, Task};
use serde::Serialize;

use crate::start::{Machine, Stats};

/// Errors of the synth benchmark.
#[derive(Debug, thiserror::Error)]
pub enum SynthBenchError {
    #[error("no seed tasks with a CSV file: the benchmark's generator explores CSV data")]
    NoSeeds,
    #[error("cannot start the async runtime or the fake server: {0}")]
    Setup(std::io::Error),
    #[error(transparent)]
    Synth(#[from] synth::SynthError),
    #[error(transparent)]
    Run(#[from] dsbox_agent::RunError),
    #[error(transparent)]
    Model(#[from] dsbox_agent::ModelError),
    #[error("the benchmark's sandboxes: {0}")]
    Sandbox(#[from] dsbox_agent::sandbox::SandboxError),
    #[error("the {stage} stage did not finish every episode ({finished} of {planned}): {detail}")]
    Incomplete {
        stage: &'static str,
        finished: usize,
        planned: usize,
        detail: String,
    },
    #[error("baseline cell of {task}: {detail}")]
    Baseline { task: String, detail: String },
}

/// What to run.
#[derive(Clone, Debug)]
pub struct SynthBenchConfig {
    /// Seed tasks (each with a CSV file).
    pub seeds: Vec<Task>,
    /// Where the seeds come from, for the output.
    pub source: String,
    /// Queries per seed.
    pub n: usize,
    /// Rollouts per query.
    pub k: u32,
    pub concurrency: usize,
    pub rootfs: dsbox_rootfs::Rootfs,
    /// The pipeline's sandboxes (the baseline always starts a fresh sandbox per process).
    pub backend: BackendConfig,
    /// How many trajectories the baseline replays (its figure is per trajectory).
    pub baseline_trajectories: usize,
    /// Keep the run directories here (default: a temporary directory, removed).
    pub keep: Option<PathBuf>,
}

/// One stage's figures.
#[derive(Clone, Debug, Serialize)]
pub struct StageFigures {
    /// Episodes (queries, trajectories), checks (filter) or examples (export).
    pub items: usize,
    pub wall_s: f64,
    pub per_minute: f64,
}

impl StageFigures {
    fn new(items: usize, wall: Duration) -> StageFigures {
        let s = wall.as_secs_f64().max(1e-9);
        StageFigures {
            items,
            wall_s: s,
            per_minute: items as f64 / s * 60.0,
        }
    }
}

/// The baseline's figures.
#[derive(Clone, Debug, Serialize)]
pub struct BaselineFigures {
    pub trajectories: usize,
    /// Python processes started (one per cell, replaying the earlier cells).
    pub processes: usize,
    pub wall_s: f64,
    pub trajectories_per_minute: f64,
    pub per_process: Stats,
}

/// The benchmark's result.
#[derive(Clone, Debug, Serialize)]
pub struct SynthBenchResult {
    pub figure: &'static str,
    pub machine: Machine,
    pub source: String,
    pub backend: String,
    pub rootfs: String,
    pub concurrency: usize,
    pub seeds: usize,
    pub n: usize,
    pub k: u32,
    /// Exploration episodes → queries.
    pub queries: StageFigures,
    pub generated_queries: usize,
    /// Rollouts (the headline: `per_minute` is trajectories per minute).
    pub trajectories: StageFigures,
    /// Per trajectory (episode wall time).
    pub per_trajectory: Stats,
    /// Trajectories judged by the filter (re-runs and judge calls included).
    pub filter: StageFigures,
    pub verified: usize,
    pub judged: usize,
    pub kept: usize,
    pub export: StageFigures,
    /// Kept trajectories per minute of the whole pipeline (all four stages).
    pub pipeline_kept_per_minute: f64,
    pub pipeline_wall_s: f64,
    pub trajectories_per_minute: f64,
    pub baseline: BaselineFigures,
    /// dsbox trajectories/min ÷ baseline trajectories/min.
    pub ratio: f64,
}

impl SynthBenchResult {
    /// Human-readable summary.
    pub fn summary(&self) -> String {
        let m = &self.machine;
        format!(
            "synthetic-data pipeline ({} seeds from {}; {} queries each, k = {}; instant scripted model over HTTP)\n\
             machine : {} cores ({}), Linux {}, cgroup {}\n\
             queries : {:>4} exploration episodes → {} queries in {:.1} s ({:.0}/min)\n\
             rollouts: {:>4} trajectories in {:.1} s = {:.0} trajectories/min (concurrency {}, {} backend, rootfs {}; per trajectory p50 {:.0} ms, p99 {:.0} ms)\n\
             filter  : {:>4} trajectories in {:.1} s ({} re-run in fresh sandboxes, {} judged; {} kept)\n\
             export  : {:>4} conversations in {:.2} s\n\
             pipeline: {:.1} s in all = {:.0} kept trajectories/min\n\
             baseline: {:>4} trajectories in {:.1} s = {:.0} trajectories/min (a fresh sandboxed python per cell, replaying earlier cells; p50 {:.0} ms per process)\n\
             ratio   : {:.1}x\n",
            self.seeds,
            self.source,
            self.n,
            self.k,
            m.cores,
            m.cpu_model,
            m.kernel,
            m.cgroup_mode,
            self.queries.items,
            self.generated_queries,
            self.queries.wall_s,
            self.queries.per_minute,
            self.trajectories.items,
            self.trajectories.wall_s,
            self.trajectories.per_minute,
            self.concurrency,
            self.backend,
            self.rootfs,
            self.per_trajectory.p50_ms,
            self.per_trajectory.p99_ms,
            self.filter.items,
            self.filter.wall_s,
            self.verified,
            self.judged,
            self.kept,
            self.export.items,
            self.export.wall_s,
            self.pipeline_wall_s,
            self.pipeline_kept_per_minute,
            self.baseline.trajectories,
            self.baseline.wall_s,
            self.baseline.trajectories_per_minute,
            self.baseline.per_process.p50_ms,
            self.ratio,
        )
    }
}

fn has_csv(t: &Task) -> bool {
    t.data.iter().any(|d| {
        d.path.to_lowercase().ends_with(".csv") && d.host.as_ref().is_some_and(|h| h.exists())
    })
}

#[allow(clippy::too_many_arguments)]
fn manifest(
    items: &[PlannedItem],
    model: &OpenAiModel,
    base_url: &str,
    k: u32,
    factory: &dyn SandboxFactory,
    concurrency: usize,
) -> RunManifest {
    let mut suites: Vec<String> = Vec::new();
    for i in items {
        if !suites.contains(&i.task.suite) {
            suites.push(i.task.suite.clone());
        }
    }
    RunManifest {
        format: rundir::FORMAT,
        dsbox_version: env!("CARGO_PKG_VERSION").into(),
        created: rundir::now_rfc3339(),
        model: ModelInfo {
            name: model.config().model.clone(),
            kind: "openai".into(),
            base_url: Some(base_url.into()),
            temperature: model.config().temperature,
            top_p: None,
            max_tokens: None,
        },
        scaffold: ScaffoldKind::React,
        settings: EpisodeSettings::default(),
        k,
        suites,
        selection: Selection::default(),
        data_root: None,
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
        notes: vec!["dsbox bench synth".into()],
    }
}

fn complete(
    stage: &'static str,
    report: &dsbox_agent::RunReport,
    planned: usize,
) -> Result<(), SynthBenchError> {
    if matches!(report.end, RunEnd::Completed) && report.records.len() == planned {
        return Ok(());
    }
    Err(SynthBenchError::Incomplete {
        stage,
        finished: report.records.len(),
        planned,
        detail: format!("{:?}", report.end),
    })
}

/// Run the benchmark.
pub fn run(cfg: &SynthBenchConfig) -> Result<SynthBenchResult, SynthBenchError> {
    let seeds: Vec<Task> = cfg.seeds.iter().filter(|t| has_csv(t)).cloned().collect();
    if seeds.is_empty() {
        return Err(SynthBenchError::NoSeeds);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(SynthBenchError::Setup)?;
    let root = cfg.keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("dsbox-bench-synth-{}", std::process::id()))
    });
    if cfg.keep.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    // The baseline runs after the pipeline, outside the async runtime (it blocks).
    let result = rt
        .block_on(pipeline(cfg, seeds, &root))
        .and_then(|(mut r, tasks, records)| {
            r.baseline = baseline(cfg, &root.join("trajectories"), &tasks, &records)?;
            r.ratio = r.trajectories.per_minute / r.baseline.trajectories_per_minute.max(1e-9);
            Ok(r)
        });
    if cfg.keep.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

/// The four stages; returns the result (baseline still empty), the tasks and the
/// rollouts' records for the baseline.
async fn pipeline(
    cfg: &SynthBenchConfig,
    seeds: Vec<Task>,
    root: &std::path::Path,
) -> Result<(SynthBenchResult, Vec<Task>, Vec<ResultRecord>), SynthBenchError> {
    let analyst = Arc::new(SynthAnalyst::new());
    let server = FakeServer::start(FakeConfig::default(), analyst.script())
        .await
        .map_err(SynthBenchError::Setup)?;
    let url = server.base_url();
    let concurrency = cfg.concurrency.max(1);
    let mut mc = OpenAiConfig::new(&url, "fake-model");
    mc.temperature = Some(0.8);
    mc.max_concurrent = concurrency * 2 + 4;
    let model = OpenAiModel::new(mc)?;
    let factory: Arc<dyn SandboxFactory> = make_factory(&cfg.rootfs, &cfg.backend)?;
    let (_cancel, rx) = tokio::sync::watch::channel(false);
    let pipeline_started = Instant::now();

    // --- 1. queries ---
    let q_dir = root.join("queries");
    let items = queries::plan(&seeds, cfg.n);
    let m = manifest(&items, &model, &url, 1, factory.as_ref(), concurrency);
    let stage = QueriesStage {
        name: "synth".into(),
        n: cfg.n,
        prompt_version: queries::PROMPT_VERSION.into(),
        seeds: seeds.iter().map(|s| s.id.clone()).collect(),
    };
    let dir = RunDir::create(&q_dir, &m)?;
    StageManifest::new(Stage::Queries(stage.clone())).write(&q_dir)?;
    let setup = EvalSetup {
        model: Arc::new(model.clone()),
        judge: None,
        factory: factory.clone(),
        scaffold: ScaffoldKind::React,
        settings: EpisodeSettings::default(),
        concurrency,
        retry_errors: false,
    };
    let started = Instant::now();
    let report = run_eval(
        dir,
        &m,
        items.clone(),
        Vec::new(),
        setup.clone(),
        Arc::new(dsbox_agent::run::Quiet),
        rx.clone(),
    )
    .await?;
    complete("queries", &report, items.len())?;
    let (tasks, qreport) = queries::collect(&q_dir, &stage, &seeds, &report.records, "fake-model");
    let out = queries::write_outputs(&q_dir, &tasks, &qreport)?;
    let queries_fig = StageFigures::new(items.len(), started.elapsed());

    // --- 2. trajectories ---
    let t_dir = root.join("trajectories");
    let tf = trajectories::load_tasks_file(&out.queries, None)?;
    let items = trajectories::plan(&tf.suite, &Prompts::builtin(), None)?;
    let m = manifest(&items, &model, &url, cfg.k, factory.as_ref(), concurrency);
    let dir = RunDir::create(&t_dir, &m)?;
    trajectories::install(&t_dir, &tf)?;
    StageManifest::new(Stage::Trajectories(TrajectoriesStage {
        name: tf.suite.def.name.clone(),
        source: tf.path.clone(),
        tasks: items.len(),
    }))
    .write(&t_dir)?;
    let started = Instant::now();
    let report = run_eval(
        dir,
        &m,
        items.clone(),
        Vec::new(),
        setup,
        Arc::new(dsbox_agent::run::Quiet),
        rx.clone(),
    )
    .await?;
    let planned = items.len() * cfg.k as usize;
    complete("trajectories", &report, planned)?;
    let traj_fig = StageFigures::new(planned, started.elapsed());
    let per_trajectory = Stats::from_ms(
        report
            .records
            .iter()
            .map(|r| r.execution_time * 1e3)
            .collect(),
    );

    // --- 3. filter ---
    let mut params = FilterParams::defaults(m.settings.max_turns);
    params.judge = Some(JudgeParams {
        model: "fake-model".into(),
        threshold: synth::judge::DEFAULT_THRESHOLD,
        rubric: synth::judge::RUBRIC_VERSION.into(),
    });
    let fsetup = FilterSetup {
        params,
        factory: Some(factory.clone()),
        judge: Some(Arc::new(model.clone())),
        concurrency,
        verify: VerifySettings::default(),
    };
    let started = Instant::now();
    let outcome =
        synth::filter::run_filter(&t_dir, None, &fsetup, &QuietFilter, rx.clone()).await?;
    let filter_fig = StageFigures::new(outcome.summary.trajectories, started.elapsed());

    // --- 4. export ---
    let started = Instant::now();
    let exported = synth::export::export(
        &t_dir,
        None,
        &root.join("train.jsonl"),
        &ExportOptions {
            format: ExportFormat::OpenaiChat,
            system: true,
            metadata: false,
        },
    )?;
    let export_fig = StageFigures::new(exported.card.counts.examples, started.elapsed());
    let pipeline_wall = pipeline_started.elapsed();
    drop(server);

    let result = SynthBenchResult {
        figure: "synthetic-data pipeline throughput with an instant fake model",
        machine: Machine::detect(),
        source: cfg.source.clone(),
        backend: factory.info().backend,
        rootfs: format!("{} ({})", cfg.rootfs.name, cfg.rootfs.content_hash),
        concurrency,
        seeds: seeds.len(),
        n: cfg.n,
        k: cfg.k,
        generated_queries: tasks.len(),
        queries: queries_fig,
        trajectories_per_minute: traj_fig.per_minute,
        trajectories: traj_fig,
        per_trajectory,
        verified: outcome.summary.verified_now,
        judged: outcome.summary.judged_now,
        kept: outcome.summary.kept,
        filter: filter_fig,
        export: export_fig,
        pipeline_kept_per_minute: outcome.summary.kept as f64 / pipeline_wall.as_secs_f64() * 60.0,
        pipeline_wall_s: pipeline_wall.as_secs_f64(),
        baseline: BaselineFigures {
            trajectories: 0,
            processes: 0,
            wall_s: 0.0,
            trajectories_per_minute: 0.0,
            per_process: Stats::from_ms(Vec::new()),
        },
        ratio: 0.0,
    };
    Ok((result, tf.suite.tasks, report.records))
}

/// Replay the first trajectories' cells the kernel-less way (see the module doc).
fn baseline(
    cfg: &SynthBenchConfig,
    run: &std::path::Path,
    tasks: &[Task],
    records: &[ResultRecord],
) -> Result<BaselineFigures, SynthBenchError> {
    let n = cfg.baseline_trajectories.clamp(1, records.len().max(1));
    let cold = ColdConfig::from_rootfs(&cfg.rootfs);
    let mut per_process = Vec::new();
    let started = Instant::now();
    let mut done = 0;
    for r in records.iter().take(n) {
        let Some(task) = tasks.iter().find(|t| t.id == r.sample_id) else {
            continue;
        };
        let bytes =
            std::fs::read(run.join(&r.trajectory_file)).map_err(|e| SynthBenchError::Baseline {
                task: task.id.clone(),
                detail: e.to_string(),
            })?;
        let t: Trajectory =
            serde_json::from_slice(&bytes).map_err(|e| SynthBenchError::Baseline {
                task: task.id.clone(),
                detail: e.to_string(),
            })?;
        let cells: Vec<String> = verify::executed_cells(&t)
            .into_iter()
            .map(|c| c.code)
            .collect();
        let mut spec = cold
            .spec(&SandboxRequest::for_task(task, 0))
            .map_err(|detail| SynthBenchError::Baseline {
                task: task.id.clone(),
                detail,
            })?;
        for i in 0..cells.len() {
            if let Some(p) = spec.process.as_mut() {
                p.args = vec![cold.python.clone(), "-c".into(), cells[..=i].join("\n")];
            }
            let t0 = Instant::now();
            let code =
                crate::start::run_to_exit(&spec).map_err(|detail| SynthBenchError::Baseline {
                    task: task.id.clone(),
                    detail,
                })?;
            per_process.push(t0.elapsed().as_secs_f64() * 1e3);
            if code != 0 {
                return Err(SynthBenchError::Baseline {
                    task: task.id.clone(),
                    detail: format!("python exited with {code}"),
                });
            }
        }
        done += 1;
    }
    let wall = started.elapsed().as_secs_f64();
    Ok(BaselineFigures {
        trajectories: done,
        processes: per_process.len(),
        wall_s: wall,
        trajectories_per_minute: done as f64 / wall.max(1e-9) * 60.0,
        per_process: Stats::from_ms(per_process),
    })
}
