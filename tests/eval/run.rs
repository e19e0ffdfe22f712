//! Runs through the library: LLM-judge metrics scored by a judge over HTTP, redoing
//! only failed trajectories with `retry_errors`, and the concurrency bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dsbox_agent::demo;
use dsbox_agent::fake::{FakeConfig, FakeReply, FakeServer, Script};
use dsbox_agent::model::{ModelJudge, ScriptedModel};
use dsbox_agent::run::{Quiet, RunObserver};
use dsbox_agent::{
    EndReason, EpisodeSettings, EvalSetup, Model, ModelError, OpenAiConfig, OpenAiModel,
    PlannedItem, RunDir, RunEnd, RunReport, ScaffoldKind, run_eval,
};
use dsbox_tasks::{Judge, LoadedSuite, Prompts, Task};

use crate::shared_data::manifest;
use crate::{dsgym_root, factory, registry, scratch, starter_suite};

fn items(suite: &LoadedSuite, ids: Option<&[&str]>) -> Vec<PlannedItem> {
    let prompts = Prompts::builtin();
    suite
        .tasks
        .iter()
        .filter(|t| ids.is_none_or(|ids| ids.contains(&t.id.as_str())))
        .enumerate()
        .map(|(index, t)| PlannedItem {
            task: Arc::new(t.clone()),
            prompt: Arc::new(prompts.render(t, &suite.def).unwrap()),
            index,
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    New,
    Resume,
    ResumeRetryErrors,
}

async fn run(
    out: &std::path::Path,
    items: Vec<PlannedItem>,
    model: Arc<dyn Model>,
    judge: Option<Arc<dyn Judge>>,
    concurrency: usize,
    observer: Arc<dyn RunObserver>,
    mode: Mode,
) -> RunReport {
    let resume = mode != Mode::New;
    let retry_errors = mode == Mode::ResumeRetryErrors;
    let suites: Vec<String> = {
        let mut s: Vec<String> = items.iter().map(|i| i.task.suite.clone()).collect();
        s.dedup();
        s
    };
    let suite_refs: Vec<&str> = suites.iter().map(String::as_str).collect();
    let (dir, m, done) = if resume {
        let o = RunDir::open(out).expect("open the run");
        (o.dir, o.manifest, o.records)
    } else {
        let m = manifest(&items, &suite_refs, model.name(), 1);
        (RunDir::create(out, &m).unwrap(), m, Vec::new())
    };
    let setup = EvalSetup {
        model,
        judge,
        factory: factory(),
        scaffold: ScaffoldKind::React,
        settings: EpisodeSettings::default(),
        concurrency,
        retry_errors,
    };
    let (_tx, rx) = tokio::sync::watch::channel(false);
    run_eval(dir, &m, items, done, setup, observer, rx)
        .await
        .expect("run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_judge_metrics_are_scored_by_the_judge() {
    if dsgym_root().is_none() {
        eprintln!("skipped: the DSGym data (../shared/data/dsgym) is not here");
        return;
    }
    let starter = scratch();
    let suite = registry(starter.path()).load("discoverybench").unwrap();
    let items = items(&suite, Some(&["discoverybench/0", "discoverybench/1"]));
    assert_eq!(items.len(), 2);
    // Episodes answer at once; the judge (requests without stop sequences) says True
    // only for the answer that names 3400 BCE.
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::handler(|r| {
            if r.stop().is_empty() {
                let verdict = r.last_content().contains("Around 3400 BCE");
                FakeReply::text(format!(
                    "Compared.\n## The final answer is: {}",
                    if verdict { "True" } else { "False" }
                ))
            } else if r.first_user().contains("In which century") {
                FakeReply::text("<answer>Around 3400 BCE, house sizes first increased.</answer>")
            } else {
                FakeReply::text("<answer>No idea.</answer>")
            }
        }),
    )
    .await
    .unwrap();
    let model = OpenAiModel::new(OpenAiConfig::new(server.base_url(), "fake-model")).unwrap();
    let judge: Arc<dyn Judge> = Arc::new(ModelJudge(model.clone()));
    let out = scratch();
    let report = run(
        out.path(),
        items.clone(),
        Arc::new(model.clone()),
        Some(judge),
        2,
        Arc::new(Quiet),
        Mode::New,
    )
    .await;
    let by_id = |id: &str| report.records.iter().find(|r| r.sample_id == id).unwrap();
    assert_eq!(by_id("discoverybench/0").score, Some(1.0));
    assert_eq!(by_id("discoverybench/1").score, Some(0.0));
    let details = &by_id("discoverybench/0").metrics["llm_score"].details;
    assert!(details["judge_reply"].as_str().unwrap().ends_with("True"));
    let judge_requests: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.stop().is_empty())
        .collect();
    assert_eq!(judge_requests.len(), 2);
    assert!(judge_requests.iter().all(|r| r.body["temperature"] == 0.0));

    // Without a judge the same answers are not evaluable, and say why.
    let out = scratch();
    let report = run(
        out.path(),
        items,
        Arc::new(model),
        None,
        2,
        Arc::new(Quiet),
        Mode::New,
    )
    .await;
    assert!(report.records.iter().all(|r| r.score.is_none()));
    assert_eq!(
        report.metrics.overall.errors.not_evaluable["needs-judge"],
        2
    );
    assert_eq!(report.metrics.overall.mean, 0.0);
}

/// The scripted analyst, failing (HTTP 500, not fatal) on the questions `fail_on` names
/// while `failing` is set; counts its calls.
fn flaky_analyst(
    tasks: &[&Task],
    fail_on: &'static str,
    failing: Arc<Mutex<bool>>,
    calls: Arc<AtomicUsize>,
) -> ScriptedModel {
    let inner = demo::scripted_analyst(tasks);
    ScriptedModel::new("flaky", move |req| {
        calls.fetch_add(1, Ordering::SeqCst);
        let first = req
            .messages
            .iter()
            .find(|m| m.role == dsbox_agent::model::Role::User)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        if *failing.lock().unwrap() && first.contains(fail_on) {
            return Err(ModelError::Status {
                base_url: "scripted".into(),
                status: 500,
                body: "down".into(),
                attempts: 1,
            });
        }
        inner.respond(req).map(|c| c.text)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_errors_redoes_only_the_trajectories_that_failed() {
    let dir = scratch();
    let suite = starter_suite(dir.path());
    let items = items(&suite, None);
    let tasks: Vec<&Task> = suite.tasks.iter().collect();
    let failing = Arc::new(Mutex::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let model = Arc::new(flaky_analyst(
        &tasks,
        "On which date were visits highest?",
        failing.clone(),
        calls.clone(),
    ));
    let out = scratch();
    let report = run(
        out.path(),
        items.clone(),
        model.clone(),
        None,
        3,
        Arc::new(Quiet),
        Mode::New,
    )
    .await;
    assert!(matches!(report.end, RunEnd::Completed));
    let failed: Vec<_> = report
        .records
        .iter()
        .filter(|r| r.end_reason == EndReason::ModelError)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].sample_id, "starter/peak-day");
    assert_eq!(report.metrics.overall.errors.model_errors, 1);
    assert!((report.metrics.overall.mean - 11.0 / 12.0).abs() < 1e-12);

    // Resume without --retry-errors: everything is finished, nothing runs.
    let before = calls.load(Ordering::SeqCst);
    let report = run(
        out.path(),
        items.clone(),
        model.clone(),
        None,
        3,
        Arc::new(Quiet),
        Mode::Resume,
    )
    .await;
    assert_eq!(report.new_records, 0);
    assert_eq!(calls.load(Ordering::SeqCst), before);

    // With it, and the server fixed: only the failed trajectory is redone (3 calls).
    *failing.lock().unwrap() = false;
    let report = run(
        out.path(),
        items,
        model,
        None,
        3,
        Arc::new(Quiet),
        Mode::ResumeRetryErrors,
    )
    .await;
    assert_eq!(report.new_records, 1);
    assert_eq!(calls.load(Ordering::SeqCst) - before, 3);
    assert_eq!(
        report.records.len(),
        12,
        "the redone line supersedes the failed one"
    );
    assert_eq!(report.metrics.overall.mean, 1.0);
    assert_eq!(report.metrics.overall.errors.model_errors, 0);
    let lines = std::fs::read_to_string(out.path().join("results.jsonl")).unwrap();
    assert_eq!(
        lines.lines().count(),
        13,
        "the failed line is kept in the log"
    );
}

#[derive(Default)]
struct MaxRunning {
    now: AtomicUsize,
    max: AtomicUsize,
    finished: AtomicUsize,
}

impl RunObserver for MaxRunning {
    fn trajectory_started(&self, _: &str, _: u32) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn trajectory_finished(&self, _: &dsbox_agent::ResultRecord) {
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_concurrency_episodes_run_at_once() {
    let dir = scratch();
    let suite = starter_suite(dir.path());
    let items = items(&suite, None);
    let tasks: Vec<&Task> = suite.tasks.iter().collect();
    let obs = Arc::new(MaxRunning::default());
    let out = scratch();
    let report = run(
        out.path(),
        items,
        Arc::new(demo::scripted_analyst(&tasks)),
        None,
        3,
        obs.clone(),
        Mode::New,
    )
    .await;
    assert_eq!(report.records.len(), 12);
    assert_eq!(obs.finished.load(Ordering::SeqCst), 12);
    let max = obs.max.load(Ordering::SeqCst);
    assert!((2..=3).contains(&max), "max in flight {max}");
}
