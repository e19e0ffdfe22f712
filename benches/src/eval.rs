//! `dsbox bench eval` (targets.md P7): evaluation throughput with an instant scripted
//! model. Every task runs the same self-contained analysis cells (load the CSV, describe
//! it, compute a figure from it); the run goes through the real pipeline — episodes,
//! sandboxes, kernels, scoring, trajectory files and fsync'd results — with
//! `concurrency` episodes at once.
//!
//! The baseline, measured in the same run, executes the same cells one after another,
//! each in a fresh `python` process in a fresh sandbox of the same rootfs with the same
//! data mounted (no persistent kernel: the way a harness without kernels runs code).
//! It skips the model and the scoring, so it is the cheaper side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dsbox_agent::model::{Program, ScriptedModel};
use dsbox_agent::rundir::{self, ModelInfo, PlannedTask, RunManifest, Selection};
use dsbox_agent::sandbox::{BackendConfig, ColdConfig, SandboxRequest, make_factory};
use dsbox_agent::{
    EndReason, EpisodeSettings, EvalSetup, PlannedItem, RunDir, RunEnd, ScaffoldKind, run_eval,
};
use serde::Serialize;

use crate::start::{Machine, Stats};

/// Errors of the eval benchmark.
#[derive(Debug, thiserror::Error)]
pub enum EvalBenchError {
    #[error("no tasks to run: the benchmark needs at least one task with a CSV file")]
    NoTasks,
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the benchmark's sandboxes: {0}")]
    Sandbox(#[from] dsbox_agent::sandbox::SandboxError),
    #[error("the benchmark's run directory: {0}")]
    Run(#[from] dsbox_agent::RunError),
    #[error("the dsbox run did not finish every task ({finished} of {planned}): {detail}")]
    Incomplete {
        finished: usize,
        planned: usize,
        detail: String,
    },
    #[error("task {task}: {detail}")]
    Episode { task: String, detail: String },
    #[error("baseline cell of {task}: {detail}")]
    Baseline { task: String, detail: String },
}

/// What to run.
#[derive(Clone, Debug)]
pub struct EvalBenchConfig {
    /// The tasks (each with at least one CSV data file).
    pub items: Vec<PlannedItem>,
    /// Where the tasks come from, for the output.
    pub source: String,
    pub rootfs: dsbox_rootfs::Rootfs,
    /// The dsbox side's sandboxes (the baseline always starts a fresh sandbox per cell).
    pub backend: BackendConfig,
    pub concurrency: usize,
    /// How many of the tasks the baseline runs (the figure is per task); all by default.
    pub baseline_tasks: Option<usize>,
    /// Keep the dsbox run's directory here (default: a temporary one, removed).
    pub keep_run: Option<std::path::PathBuf>,
}

/// One side of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    pub tasks: usize,
    pub cells: usize,
    pub wall_s: f64,
    pub tasks_per_s: f64,
    /// Per task (dsbox: episode wall time; baseline: its cells' total).
    pub per_task: Stats,
}

/// The benchmark's result.
#[derive(Clone, Debug, Serialize)]
pub struct EvalBenchResult {
    pub figure: &'static str,
    pub machine: Machine,
    pub source: String,
    pub backend: String,
    pub rootfs: String,
    pub concurrency: usize,
    pub cells_per_task: usize,
    /// Starting the backend until it has a kernel per concurrent episode ready (the
    /// pooled backend's zygote imports pandas once); part of the dsbox wall time.
    pub warmup_s: f64,
    pub dsbox: Side,
    pub baseline: Side,
    /// dsbox tasks/s ÷ baseline tasks/s.
    pub ratio: f64,
    pub target_ratio: f64,
    pub meets_target: bool,
    /// Baseline cells per task, p50/p99 (ms).
    pub baseline_cell: Stats,
}

impl EvalBenchResult {
    /// Human-readable summary.
    pub fn summary(&self) -> String {
        let m = &self.machine;
        format!(
            "P7 evaluation throughput ({} tasks from {}; {} cells each; instant scripted model)\n\
             machine: {} cores ({}), Linux {}, cgroup {}\n\
             dsbox   : {:>6.2} tasks/s  ({:.1} s wall incl. {:.1} s backend start, concurrency {}, {} backend, rootfs {}; per task p50 {:.0} ms, p99 {:.0} ms)\n\
             baseline: {:>6.2} tasks/s  ({:.1} s wall for {} tasks; fresh python per cell in a fresh sandbox; per cell p50 {:.0} ms, p99 {:.0} ms)\n\
             ratio   : {:.1}x (target >= {:.0}x: {})\n",
            self.dsbox.tasks,
            self.source,
            self.cells_per_task,
            m.cores,
            m.cpu_model,
            m.kernel,
            m.cgroup_mode,
            self.dsbox.tasks_per_s,
            self.dsbox.wall_s,
            self.warmup_s,
            self.concurrency,
            self.backend,
            self.rootfs,
            self.dsbox.per_task.p50_ms,
            self.dsbox.per_task.p99_ms,
            self.baseline.tasks_per_s,
            self.baseline.wall_s,
            self.baseline.tasks,
            self.baseline_cell.p50_ms,
            self.baseline_cell.p99_ms,
            self.ratio,
            self.target_ratio,
            if self.meets_target { "met" } else { "NOT met" },
        )
    }
}

fn py(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The benchmark's cells for a CSV at `path`: each loads the file itself, so each also
/// runs on its own in the baseline.
pub fn bench_cells(path: &str) -> Vec<String> {
    let load = format!("import pandas as pd\ndf = pd.read_csv({})\n", py(path));
    vec![
        format!("{load}print(df.shape)\nprint(df.dtypes)"),
        format!("{load}print(df.describe(include='all').T.head(20))"),
        format!(
            "{load}num = df.select_dtypes('number')\nprint('ANSWER:', round(float(num.mean().mean()), 4) if num.shape[1] else len(df))"
        ),
    ]
}

fn first_csv(item: &PlannedItem) -> Option<String> {
    item.task
        .data
        .iter()
        .find(|d| d.path.ends_with(".csv"))
        .map(|d| d.path.clone())
}

/// Run the benchmark.
pub fn run(cfg: &EvalBenchConfig) -> Result<EvalBenchResult, EvalBenchError> {
    let items: Vec<PlannedItem> = cfg
        .items
        .iter()
        .filter(|i| first_csv(i).is_some())
        .cloned()
        .collect();
    if items.is_empty() {
        return Err(EvalBenchError::NoTasks);
    }
    let programs: Vec<Program> = items
        .iter()
        .map(|i| {
            let path = first_csv(i).unwrap_or_default();
            Program {
                matches: vec![i.task.question.clone(), path.clone()],
                cells: bench_cells(&path),
            }
        })
        .collect();
    let cells_per_task = bench_cells("x").len();
    let model = ScriptedModel::from_programs("dsbox-bench-instant", programs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(EvalBenchError::Runtime)?;
    // The clock starts before the backend: the pooled backend's zygote imports pandas
    // before its first kernel, a cost every `dsbox eval` pays once, and it counts.
    let backend_started = Instant::now();
    let factory = {
        let _runtime = rt.enter();
        make_factory(&cfg.rootfs, &cfg.backend)?
    };
    rt.block_on(factory.warm(cfg.concurrency.max(1), Duration::from_secs(120)))?;
    let warmup = backend_started.elapsed();
    let cold = ColdConfig::from_rootfs(&cfg.rootfs);

    // --- dsbox: the whole pipeline into a scratch run directory ---
    let dir = cfg.keep_run.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("dsbox-bench-eval-{}", std::process::id()))
    });
    if cfg.keep_run.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let manifest = RunManifest {
        format: rundir::FORMAT,
        dsbox_version: env!("CARGO_PKG_VERSION").into(),
        created: rundir::now_rfc3339(),
        model: ModelInfo::scripted("dsbox-bench-instant"),
        scaffold: ScaffoldKind::React,
        settings: EpisodeSettings::default(),
        k: 1,
        suites: {
            let mut s: Vec<String> = items.iter().map(|i| i.task.suite.clone()).collect();
            s.dedup();
            s
        },
        selection: Selection::default(),
        data_root: None,
        backend: factory.info(),
        concurrency: cfg.concurrency,
        tasks: items
            .iter()
            .map(|i| PlannedTask {
                id: i.task.id.clone(),
                suite: i.task.suite.clone(),
                index: i.index,
            })
            .collect(),
        notes: vec![],
    };
    let run_dir = RunDir::create(&dir, &manifest)?;
    let setup = EvalSetup {
        model: Arc::new(model),
        judge: None,
        factory: factory.clone(),
        scaffold: ScaffoldKind::React,
        settings: EpisodeSettings::default(),
        concurrency: cfg.concurrency.max(1),
        retry_errors: false,
    };
    let (_cancel, rx) = tokio::sync::watch::channel(false);
    let report = rt.block_on(run_eval(
        run_dir,
        &manifest,
        items.clone(),
        Vec::new(),
        setup,
        Arc::new(dsbox_agent::run::Quiet),
        rx,
    ));
    let dsbox_wall = backend_started.elapsed();
    if cfg.keep_run.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = report?;
    if !matches!(report.end, RunEnd::Completed) || report.records.len() != items.len() {
        return Err(EvalBenchError::Incomplete {
            finished: report.records.len(),
            planned: items.len(),
            detail: format!("{:?}", report.end),
        });
    }
    if let Some(bad) = report
        .records
        .iter()
        .find(|r| r.end_reason != EndReason::Answered || r.cells != cells_per_task)
    {
        return Err(EvalBenchError::Episode {
            task: bad.sample_id.clone(),
            detail: format!(
                "ended {} after {} cells: {}",
                bad.end_reason.as_str(),
                bad.cells,
                bad.error.clone().unwrap_or_default()
            ),
        });
    }
    let dsbox_side = Side {
        tasks: items.len(),
        cells: items.len() * cells_per_task,
        wall_s: dsbox_wall.as_secs_f64(),
        tasks_per_s: items.len() as f64 / dsbox_wall.as_secs_f64(),
        per_task: Stats::from_ms(
            report
                .records
                .iter()
                .map(|r| r.execution_time * 1e3)
                .collect(),
        ),
    };

    // --- baseline: the same cells, one fresh python each, one after another ---
    let n = cfg
        .baseline_tasks
        .unwrap_or(items.len())
        .clamp(1, items.len());
    let mut cell_ms = Vec::new();
    let mut task_ms = Vec::new();
    let started = Instant::now();
    for item in &items[..n] {
        let path = first_csv(item).unwrap_or_default();
        let mut spec = cold
            .spec(&SandboxRequest::for_task(&item.task, 0))
            .map_err(|detail| EvalBenchError::Baseline {
                task: item.task.id.clone(),
                detail,
            })?;
        let mut total = Duration::ZERO;
        for cell in bench_cells(&path) {
            if let Some(p) = spec.process.as_mut() {
                p.args = vec![cold.python.clone(), "-c".into(), cell];
            }
            let t = Instant::now();
            let code =
                crate::start::run_to_exit(&spec).map_err(|detail| EvalBenchError::Baseline {
                    task: item.task.id.clone(),
                    detail,
                })?;
            let took = t.elapsed();
            if code != 0 {
                return Err(EvalBenchError::Baseline {
                    task: item.task.id.clone(),
                    detail: format!("python exited with {code}"),
                });
            }
            total += took;
            cell_ms.push(took.as_secs_f64() * 1e3);
        }
        task_ms.push(total.as_secs_f64() * 1e3);
    }
    let baseline_wall = started.elapsed();
    let baseline = Side {
        tasks: n,
        cells: cell_ms.len(),
        wall_s: baseline_wall.as_secs_f64(),
        tasks_per_s: n as f64 / baseline_wall.as_secs_f64(),
        per_task: Stats::from_ms(task_ms),
    };
    let ratio = dsbox_side.tasks_per_s / baseline.tasks_per_s;
    Ok(EvalBenchResult {
        figure: "P7 evaluation throughput with an instant scripted model",
        machine: Machine::detect(),
        source: cfg.source.clone(),
        backend: factory.info().backend,
        rootfs: format!("{} ({})", cold.rootfs_name, cold.rootfs_hash),
        concurrency: cfg.concurrency,
        cells_per_task,
        warmup_s: warmup.as_secs_f64(),
        dsbox: dsbox_side,
        baseline,
        ratio,
        target_ratio: 10.0,
        meets_target: ratio >= 10.0,
        baseline_cell: Stats::from_ms(cell_ms),
    })
}
