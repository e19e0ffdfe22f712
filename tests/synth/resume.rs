//! A synth run stopped with Ctrl-C keeps what finished and `--resume` does only the rest.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dsbox_agent::fake::{FakeConfig, FakeReply, FakeServer, Script};
use dsbox_agent::synth::scripted::SynthAnalyst;
use dsbox_tasks::{DataRoot, SuiteRegistry};

use crate::{ROOTFS, dsbox, jsonl, output, scratch, text};

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_trajectories_run_resumes_without_redoing_anything() {
    let dir = scratch();
    let starter = dir.path().join("starter");
    let mut reg = SuiteRegistry::builtin(DataRoot::at("/nonexistent")).unwrap();
    reg.set_starter_dir(&starter);
    let suite = reg.load("starter").unwrap();
    let sales = suite.task("starter/total-revenue").unwrap().data[0].clone();
    // A tasks file written by hand: any dsbox task records will do.
    let tasks = dir.path().join("mine.jsonl");
    let records: Vec<String> = ["mean", "median", "maximum"]
        .iter()
        .enumerate()
        .map(|(i, stat)| {
            serde_json::json!({
                "id": format!("hand/q{i}"),
                "question": format!("What is the {stat} of the column `units` in {}? Round to 2 decimals.", sales.path),
                "data": [{"path": sales.path, "host": sales.host}],
                "answer": "0",
            })
            .to_string()
        })
        .collect();
    std::fs::write(&tasks, records.join("\n") + "\n").unwrap();

    let analyst = Arc::new(SynthAnalyst::new());
    let slow = {
        let analyst = analyst.clone();
        Script::handler(move |r| {
            let msgs = dsbox_agent::synth::scripted::messages_from_json(r.messages());
            FakeReply::delayed(
                Duration::from_millis(150),
                FakeReply::text(analyst.reply(&msgs)),
            )
        })
    };
    let server = FakeServer::start(FakeConfig::default(), slow)
        .await
        .unwrap();
    let url = server.base_url();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let mut child = dsbox(
        &starter,
        &[
            "synth",
            "trajectories",
            "--tasks",
            tasks.to_str().unwrap(),
            "--k",
            "4",
            "--model",
            "fake-model",
            "--base-url",
            &url,
            "--rootfs",
            ROOTFS,
            "--out",
            run_s,
            "--concurrency",
            "2",
        ],
    )
    .spawn()
    .unwrap();
    let results = run.join("results.jsonl");
    let deadline = Instant::now() + Duration::from_secs(180);
    while lines(&results) < 2 {
        assert!(Instant::now() < deadline, "no results in time");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let o = child.wait_with_output().await.unwrap();
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "continue with `dsbox synth trajectories --resume {run_s}`"
        )),
        "{stderr}"
    );
    let first = jsonl(&results);
    assert!((2..12).contains(&first.len()), "{}", first.len());

    let requests = server.request_count();
    let o = output(dsbox(
        &starter,
        &["synth", "trajectories", "--resume", run_s],
    ))
    .await;
    let stderr = text(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{} of 12 trajectories finished", first.len())),
        "{stderr}"
    );
    let all = jsonl(&results);
    assert_eq!(
        &all[..first.len()],
        &first[..],
        "finished lines are untouched"
    );
    let keys: BTreeSet<(String, u64)> = all
        .iter()
        .map(|r| {
            (
                r["sample_id"].as_str().unwrap().to_owned(),
                r["trajectory"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        (all.len(), keys.len()),
        (12, 12),
        "each trajectory exactly once"
    );
    // Only the missing ones went to the model: a preflight, then three replies each.
    assert_eq!(
        server.request_count() - requests,
        1 + 3 * (12 - first.len())
    );
    // The resumed run is whole: the filter takes it.
    let o = output(dsbox(&starter, &["synth", "filter", run_s, "--no-judge"])).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
}
