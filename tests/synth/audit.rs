//! `dsbox audit shortcut` against a fake model that "remembers" some answers: the tasks it
//! solves in at least the threshold of its attempts — and only those — are flagged, every
//! prompt says there is no data, and the sandbox really has nothing under /data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dsbox_agent::fake::{FakeConfig, FakeReply, FakeServer, Script};
use dsbox_agent::synth::scripted;
use dsbox_tasks::{DataRoot, SuiteRegistry};

use crate::{ROOTFS, dsbox, json, jsonl, output, scratch, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_flags_exactly_the_tasks_answered_from_memory() {
    let dir = scratch();
    let starter = dir.path().join("starter");
    // The starter suite's answers, as the "memory" of the fake model.
    let mut reg = SuiteRegistry::builtin(DataRoot::at("/nonexistent")).unwrap();
    reg.set_starter_dir(&starter);
    let suite = reg.load("starter").unwrap();
    let task = |id: &str| suite.task(id).unwrap().clone();
    // Correct answers in this many of the 5 attempts.
    let wins: HashMap<String, u32> = [
        ("starter/total-revenue", 5),
        ("starter/top-region", 3),
        ("starter/peak-month", 2),
        ("starter/busy-days", 0),
    ]
    .into_iter()
    .map(|(id, n)| (task(id).question, n))
    .collect();
    let answers: HashMap<String, String> = suite
        .tasks
        .iter()
        .map(|t| (t.question.clone(), t.answer_text().unwrap()))
        .collect();
    let counts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let seen_prompts: Arc<Mutex<Vec<String>>> = Arc::default();
    let (c2, p2) = (counts.clone(), seen_prompts.clone());
    let script = Script::handler(move |r| {
        let msgs = scripted::messages_from_json(r.messages());
        if msgs.len() < 2 {
            return FakeReply::text("OK"); // the preflight request
        }
        let q = scripted::question(&msgs);
        if scripted::turn(&msgs) == 0 {
            p2.lock().unwrap().push(r.first_user());
            // One task looks for data first.
            if q.starts_with("On how many days") {
                return FakeReply::text(
                    "<python>\nimport os\nprint('DATA:', os.listdir('/data') if os.path.exists('/data') else 'absent')\n</python>",
                );
            }
        }
        let n = {
            let mut c = c2.lock().unwrap();
            let n = c.entry(q.clone()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let reply = match (wins.get(&q), answers.get(&q)) {
            (Some(w), Some(a)) if n < *w => a.clone(),
            _ => "I cannot know this without the data".to_owned(),
        };
        FakeReply::text(format!("<answer>{reply}</answer>"))
    });
    let server = FakeServer::start(FakeConfig::default(), script)
        .await
        .unwrap();
    let url = server.base_url();
    let out = dir.path().join("audit");
    let o = output(dsbox(
        &starter,
        &[
            "audit",
            "shortcut",
            "--suite",
            "starter",
            "--ids",
            "starter/total-revenue,starter/top-region,starter/peak-month,starter/busy-days",
            "--k",
            "5",
            "--model",
            "fake-model",
            "--base-url",
            &url,
            "--rootfs",
            ROOTFS,
            "--out",
            out.to_str().unwrap(),
            "--concurrency",
            "4",
            "--json",
        ],
    ))
    .await;
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stderr),
        text(&o.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let flagged: Vec<&str> = report["flagged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        flagged,
        ["starter/total-revenue", "starter/top-region"],
        "{report}"
    );
    assert_eq!(report["flag_threshold"], 3, "3 of 5 by default");
    let s = &report["suites"]["starter"];
    assert_eq!(s["tasks"], 4);
    assert_eq!(s["attempts"], 20);
    assert_eq!(s["flagged"], 2);
    assert_eq!(s["solved_at_least_once"], 3);
    assert_eq!(s["accuracy_without_data"], 0.5, "(5 + 3 + 2 + 0) / 20");
    assert_eq!(json(&out.join("audit.json")), report);
    assert!(
        std::fs::read_to_string(out.join("audit.md"))
            .unwrap()
            .contains("starter/top-region  3/5")
    );

    // Every attempt was told there is no data, and no data path was offered.
    let prompts = seen_prompts.lock().unwrap().clone();
    assert_eq!(prompts.len(), 20);
    for p in &prompts {
        assert!(p.contains("NO DATA IS AVAILABLE FOR THIS TASK"), "{p}");
        assert!(p.contains("- (no data files)"), "{p}");
        assert!(!p.contains("/data/starter"), "{p}");
    }
    // The sandbox had nothing under /data.
    let results = jsonl(&out.join("results.jsonl"));
    let looked = results
        .iter()
        .find(|r| r["cells"] == 1)
        .expect("an attempt ran a cell");
    let t = json(&out.join(looked["trajectory_file"].as_str().unwrap()));
    let obs = t["conversation"][3]["content"].as_str().unwrap();
    assert!(
        obs.contains("DATA: absent") || obs.contains("DATA: []"),
        "{obs}"
    );
    drop(server);
}
