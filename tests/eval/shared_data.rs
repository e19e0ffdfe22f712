//! A scripted analyst answering shared QRData and DAEval tasks through the fake server
//! (real HTTP): its pandas code runs in sandboxes over the tasks' own data, and the run's
//! scores are exactly what the metrics say about its answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dsbox_agent::demo;
use dsbox_agent::fake::{FakeConfig, FakeReply, FakeServer, Script};
use dsbox_agent::model::{ChatRequest, Message, answer_from_last_output};
use dsbox_agent::rundir::{self, ModelInfo, RunManifest, Selection};
use dsbox_agent::sandbox::SandboxFactory;
use dsbox_agent::{
    EndReason, EpisodeSettings, EvalSetup, OpenAiConfig, OpenAiModel, PlannedItem, RunDir, RunEnd,
    ScaffoldKind, run_eval,
};
use dsbox_tasks::{Metric, Prompts, Task};

use crate::{dsgym_root, factory, registry, scratch};

/// The fake server plays the scripted analyst: the next cell of the task's program, then
/// the value its last cell printed.
pub fn analyst_script(tasks: &[&Task]) -> Script {
    let programs = demo::programs_for(tasks);
    Script::handler(move |r| {
        let first = r.first_user();
        let Some(p) = programs
            .iter()
            .find(|p| p.matches.iter().all(|m| first.contains(m.as_str())))
        else {
            return FakeReply::text("OK");
        };
        match p.cells.get(r.assistant_turns()) {
            Some(cell) => FakeReply::text(format!("<python>\n{cell}\n</python>")),
            None => {
                let last = ChatRequest {
                    messages: vec![Message::user(r.last_content())],
                    ..ChatRequest::default()
                };
                let value = answer_from_last_output(&last).unwrap_or_default();
                FakeReply::text(format!("<answer>{value}</answer>"))
            }
        }
    })
}

pub fn manifest(items: &[PlannedItem], suites: &[&str], model: &str, k: u32) -> RunManifest {
    RunManifest {
        format: rundir::FORMAT,
        dsbox_version: "test".into(),
        created: rundir::now_rfc3339(),
        model: ModelInfo {
            name: model.into(),
            kind: "openai".into(),
            base_url: None,
            temperature: Some(0.0),
            top_p: None,
            max_tokens: None,
        },
        scaffold: ScaffoldKind::React,
        settings: EpisodeSettings::default(),
        k,
        suites: suites.iter().map(|s| s.to_string()).collect(),
        selection: Selection::default(),
        data_root: None,
        backend: factory().info(),
        concurrency: 2,
        tasks: items
            .iter()
            .map(|i| rundir::PlannedTask {
                id: i.task.id.clone(),
                suite: i.task.suite.clone(),
                index: i.index,
            })
            .collect(),
        notes: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_analyst_on_qrdata_and_daeval_scores_what_the_metrics_say() {
    if dsgym_root().is_none() {
        eprintln!("skipped: the DSGym data (../shared/data/dsgym) is not here");
        return;
    }
    let starter = scratch();
    let reg = registry(starter.path());
    let prompts = Prompts::builtin();
    let ids: Vec<&str> = demo::supported_task_ids()
        .into_iter()
        .filter(|id| id.starts_with("qrdata/") || id.starts_with("daeval/"))
        .collect();
    assert_eq!(ids.len(), 12);
    let mut items = Vec::new();
    for name in ["qrdata", "daeval"] {
        let suite = reg.load(name).expect("load");
        for (index, task) in suite
            .tasks
            .iter()
            .filter(|t| ids.contains(&t.id.as_str()))
            .enumerate()
        {
            items.push(PlannedItem {
                task: Arc::new(task.clone()),
                prompt: Arc::new(prompts.render(task, &suite.def).unwrap()),
                index,
            });
        }
    }
    assert_eq!(items.len(), 12);
    let tasks: Vec<&Task> = items.iter().map(|i| i.task.as_ref()).collect();
    let server = FakeServer::start(FakeConfig::default(), analyst_script(&tasks))
        .await
        .unwrap();
    let mut cfg = OpenAiConfig::new(server.base_url(), "fake-model");
    cfg.request_timeout = Duration::from_secs(30);
    let model = OpenAiModel::new(cfg).unwrap();
    let out = scratch();
    let m = manifest(&items, &["qrdata", "daeval"], "fake-model", 1);
    let dir = RunDir::create(out.path(), &m).unwrap();
    let factory = factory();
    let setup = EvalSetup {
        model: Arc::new(model),
        judge: None,
        factory: factory.clone(),
        scaffold: ScaffoldKind::React,
        settings: EpisodeSettings::default(),
        concurrency: 2,
        retry_errors: false,
    };
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let report = run_eval(
        dir,
        &m,
        items.clone(),
        Vec::new(),
        setup,
        Arc::new(dsbox_agent::run::Quiet),
        rx,
    )
    .await
    .expect("run");
    assert!(matches!(report.end, RunEnd::Completed), "{:?}", report.end);
    assert_eq!(report.records.len(), 12);
    assert!(factory.live().is_empty(), "every sandbox released");
    // 2 cells + the answer per task, all through the fake server.
    assert_eq!(server.request_count(), 36);

    let mut scores = BTreeMap::new();
    for r in &report.records {
        assert_eq!(
            r.end_reason,
            EndReason::Answered,
            "{}: {:?}",
            r.sample_id,
            r.error
        );
        let task = tasks.iter().find(|t| t.id == r.sample_id).unwrap();
        // The recorded score is the metric's verdict on the recorded answer.
        let expected = Metric::for_task(task)
            .unwrap()
            .score(r.prediction.as_deref().unwrap(), task)
            .unwrap()
            .value;
        assert_eq!(r.score, Some(expected), "{}", r.sample_id);
        scores.insert(r.sample_id.clone(), expected);
        // And the answer came from the sandbox: it is in the last observation.
        let traj: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.path().join(&r.trajectory_file)).unwrap())
                .unwrap();
        let conv = traj["conversation"].as_array().unwrap();
        let obs = conv[conv.len() - 2]["content"].as_str().unwrap();
        assert!(
            obs.contains(&format!("ANSWER: {}", r.prediction.as_deref().unwrap())),
            "{obs}"
        );
    }
    // Known outcomes: every QRData answer right; DAEval's naive mean/std over a column
    // that holds an aggregate row (daeval/6) is wrong, the rest right.
    for (id, s) in &scores {
        let want = if id == "daeval/6" { 0.0 } else { 1.0 };
        assert_eq!(*s, want, "{id}");
    }
    let qr = &report.metrics.suites["qrdata"];
    let da = &report.metrics.suites["daeval"];
    assert_eq!((qr.mean, qr.tasks_solved), (1.0, 6));
    assert!((da.mean - 5.0 / 6.0).abs() < 1e-12, "{}", da.mean);
    assert!((report.metrics.overall.mean - 11.0 / 12.0).abs() < 1e-12);
    assert_eq!(report.metrics.overall.pass_at["pass@1"], 11.0 / 12.0);
    // The summaries on disk agree.
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("metrics.json")).unwrap()).unwrap();
    assert!((metrics["overall"]["mean"].as_f64().unwrap() - 11.0 / 12.0).abs() < 1e-12);
    let csv = std::fs::read_to_string(out.path().join("summary.csv")).unwrap();
    assert!(
        csv.lines().any(|l| l.starts_with("daeval,6,1,6,6,0.8333")),
        "{csv}"
    );
}
