//! An evaluation run: N tasks × k trajectories, `concurrency` episodes at a time, each
//! written the moment it ends (trajectory file, then its line in `results.jsonl`), so a
//! crash or a kill loses at most the episodes in flight, and `--resume` redoes only those.
//!
//! A model error no later request can fix (wrong key, unknown model, server gone) stops
//! the run instead of being recorded against every remaining trajectory; Ctrl-C stops it
//! too. Either way the trajectories in flight are not recorded, their sandboxes are
//! released, and the summaries are written for what finished.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dsbox_tasks::{Judge, RenderedPrompt, Task};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::episode::{EpisodeContext, EpisodeSettings, run_episode};
use crate::metrics::RunMetrics;
use crate::model::{Model, ModelError};
use crate::record::{ResultRecord, score_trajectory};
use crate::rundir::{
    self, RunArtifacts, RunDir, RunError, RunManifest, latest, trajectory_file, write_atomic,
};
use crate::sandbox::SandboxFactory;
use crate::scaffold::{Scaffold, ScaffoldKind};

/// One task of a run, ready to roll out.
#[derive(Debug, Clone)]
pub struct PlannedItem {
    pub task: Arc<Task>,
    pub prompt: Arc<RenderedPrompt>,
    /// Position in its suite's selection.
    pub index: usize,
}

/// What runs the episodes.
#[derive(Clone)]
pub struct EvalSetup {
    pub model: Arc<dyn Model>,
    /// For LLM-judge metrics (None: those tasks are not evaluable).
    pub judge: Option<Arc<dyn Judge>>,
    pub factory: Arc<dyn SandboxFactory>,
    pub scaffold: ScaffoldKind,
    pub settings: EpisodeSettings,
    pub concurrency: usize,
    /// Redo trajectories that ended in a model, sandbox or budget error.
    pub retry_errors: bool,
}

/// Progress events of a run.
pub trait RunObserver: Send + Sync {
    /// `total` trajectories planned, `done` of them finished before this start.
    fn start(&self, _total: usize, _done: &[ResultRecord]) {}
    fn trajectory_started(&self, _task_id: &str, _trajectory: u32) {}
    fn trajectory_finished(&self, _record: &ResultRecord) {}
    /// A trajectory in flight was given up (the run is stopping).
    fn trajectory_abandoned(&self) {}
    fn message(&self, _text: &str) {}
    fn finish(&self) {}
}

/// Observes nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl RunObserver for Quiet {}

/// How a run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// Every planned trajectory has a result.
    Completed,
    /// Ctrl-C (or another cancel): resume later.
    Interrupted,
    /// A model error that no retry fixes; resume after fixing it.
    Stopped(ModelError),
}

/// The result of [`run_eval`].
#[derive(Debug)]
pub struct RunReport {
    pub end: RunEnd,
    /// Trajectories finished by this call.
    pub new_records: usize,
    /// Latest record of every finished trajectory of the run.
    pub records: Vec<ResultRecord>,
    pub metrics: RunMetrics,
}

enum Finished {
    Recorded(Box<ResultRecord>),
    Fatal(ModelError),
    Failed(RunError),
}

/// Roll out every planned trajectory not finished yet, writing each as it ends, then
/// write the summaries. `items` are the manifest's tasks in order; `done` the records
/// read from the run directory.
pub async fn run_eval(
    dir: RunDir,
    manifest: &RunManifest,
    items: Vec<PlannedItem>,
    done: Vec<ResultRecord>,
    setup: EvalSetup,
    observer: Arc<dyn RunObserver>,
    mut cancel: watch::Receiver<bool>,
) -> Result<RunReport, RunError> {
    let root = dir.root().to_owned();
    let finished: HashSet<(String, u32)> = done
        .iter()
        .filter(|r| !(setup.retry_errors && r.end_reason.is_error()))
        .map(ResultRecord::key)
        .collect();
    let mut todo = Vec::new();
    for item in &items {
        for j in 0..manifest.k {
            if !finished.contains(&(item.task.id.clone(), j)) {
                todo.push((item.clone(), j));
            }
        }
    }
    let artifacts = Arc::new(RunArtifacts {
        root: root.clone(),
        index: items
            .iter()
            .map(|i| (i.task.id.clone(), i.index))
            .collect::<HashMap<_, _>>(),
    });
    let scaffold: Arc<dyn Scaffold> = Arc::from(setup.scaffold.build());
    let settings = Arc::new(setup.settings.clone());
    let dir = Arc::new(Mutex::new(dir));
    let permits = Arc::new(Semaphore::new(setup.concurrency.max(1)));
    let mut tally = Tally {
        observer: observer.clone(),
        records: done,
        new_records: 0,
        end: None,
        write_error: None,
    };
    observer.start(manifest.planned_trajectories(), &tally.records);

    // Each task hands its permit back with its result, so a new episode starts only once
    // the finished one is accounted for.
    let mut running: JoinSet<(Finished, OwnedSemaphorePermit)> = JoinSet::new();
    let mut queue = todo.into_iter().peekable();
    let mut cancel_open = true;
    loop {
        if cancel_open && *cancel.borrow() && tally.end.is_none() {
            tally.end = Some(RunEnd::Interrupted);
        }
        if tally.stopping() {
            // Ctrl-C and write failures drop the episodes in flight (their sandboxes are
            // destroyed as they drop); a fatal model error lets them end by themselves.
            if tally.abort_running() {
                running.abort_all();
            }
            match running.join_next().await {
                Some(r) => tally.handle(r),
                None => break,
            }
            continue;
        }
        let more = queue.peek().is_some();
        if !more && running.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            changed = cancel.changed(), if cancel_open => {
                if changed.is_err() {
                    // The sender is gone: nobody can cancel any more.
                    cancel_open = false;
                }
            }
            Some(r) = running.join_next(), if !running.is_empty() => tally.handle(r),
            permit = permits.clone().acquire_owned(), if more => {
                let (Ok(permit), Some((item, j))) = (permit, queue.next()) else { break };
                observer.trajectory_started(&item.task.id, j);
                let setup = setup.clone();
                let scaffold = scaffold.clone();
                let settings = settings.clone();
                let artifacts = artifacts.clone();
                let dir = dir.clone();
                let root = root.clone();
                running.spawn(async move {
                    let finished = one(item, j, setup, scaffold, settings, artifacts, dir, root).await;
                    (finished, permit)
                });
            }
        }
    }
    observer.finish();
    if let Some(e) = tally.write_error {
        return Err(e);
    }
    let records = latest(tally.records);
    let metrics = rundir::write_summaries(&root, manifest, &records)?;
    let end = tally.end.unwrap_or_else(|| {
        let keys: HashSet<(String, u32)> = records.iter().map(ResultRecord::key).collect();
        let all = items
            .iter()
            .all(|i| (0..manifest.k).all(|j| keys.contains(&(i.task.id.clone(), j))));
        if all {
            RunEnd::Completed
        } else {
            RunEnd::Interrupted
        }
    });
    Ok(RunReport {
        end,
        new_records: tally.new_records,
        records,
        metrics,
    })
}

/// What the finished episodes added up to.
struct Tally {
    observer: Arc<dyn RunObserver>,
    records: Vec<ResultRecord>,
    new_records: usize,
    end: Option<RunEnd>,
    write_error: Option<RunError>,
}

impl Tally {
    fn stopping(&self) -> bool {
        self.end.is_some() || self.write_error.is_some()
    }

    fn abort_running(&self) -> bool {
        matches!(self.end, Some(RunEnd::Interrupted)) || self.write_error.is_some()
    }

    fn handle(&mut self, result: Result<(Finished, OwnedSemaphorePermit), tokio::task::JoinError>) {
        // The permit is released when this returns.
        let result = result.map(|(finished, _permit)| finished);
        match result {
            Ok(Finished::Recorded(rec)) => {
                self.observer.trajectory_finished(&rec);
                self.records.push(*rec);
                self.new_records += 1;
            }
            Ok(Finished::Fatal(e)) => {
                self.observer.trajectory_abandoned();
                if self.end.is_none() {
                    self.observer.message(&format!("stopping the run: {e}"));
                    self.end = Some(RunEnd::Stopped(e));
                }
            }
            Ok(Finished::Failed(e)) => {
                self.observer.trajectory_abandoned();
                if self.write_error.is_none() {
                    self.observer.message(&format!("stopping the run: {e}"));
                    self.write_error = Some(e);
                }
            }
            Err(e) => {
                self.observer.trajectory_abandoned();
                if !e.is_cancelled() {
                    tracing::error!("an episode task panicked: {e}");
                }
            }
        }
    }
}

/// One trajectory: episode, score, trajectory file, results line.
#[allow(clippy::too_many_arguments)]
async fn one(
    item: PlannedItem,
    trajectory: u32,
    setup: EvalSetup,
    scaffold: Arc<dyn Scaffold>,
    settings: Arc<EpisodeSettings>,
    artifacts: Arc<RunArtifacts>,
    dir: Arc<Mutex<RunDir>>,
    root: std::path::PathBuf,
) -> Finished {
    let ctx = EpisodeContext {
        model: setup.model.as_ref(),
        factory: setup.factory.as_ref(),
        scaffold: scaffold.as_ref(),
        settings: &settings,
        artifacts: artifacts.as_ref(),
    };
    let outcome = run_episode(&ctx, &item.task, &item.prompt, item.index, trajectory).await;
    if let Some(fatal) = outcome.fatal {
        return Finished::Fatal(fatal);
    }
    let mut t = outcome.trajectory;
    let (name, outcome) = score_trajectory(&item.task, &t, setup.judge.as_deref(), &root).await;
    t.score = outcome.score;
    t.metrics.insert(name, outcome);
    let file = trajectory_file(&t.suite, t.index, t.trajectory);
    let json = match serde_json::to_vec_pretty(&t) {
        Ok(j) => j,
        Err(e) => {
            return Finished::Failed(RunError::Io {
                path: root.join(&file),
                source: std::io::Error::other(e),
            });
        }
    };
    let path = root.join(&file);
    let written = tokio::task::spawn_blocking(move || write_atomic(&path, &json)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Finished::Failed(e),
        Err(e) => {
            return Finished::Failed(RunError::Io {
                path: root.join(&file),
                source: std::io::Error::other(e.to_string()),
            });
        }
    }
    let record = ResultRecord::from_trajectory(&t, file);
    let mut dir = dir.lock().await;
    match dir.append_result(&record) {
        Ok(()) => Finished::Recorded(Box::new(record)),
        Err(e) => Finished::Failed(e),
    }
}
