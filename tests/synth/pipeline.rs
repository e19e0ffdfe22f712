//! The pipeline end to end through the `dsbox` binary: seeds → queries → trajectories →
//! filter (each decision checked against what the fake model did) → export (parsed as an
//! SFT trainer would). Always on the built-in `starter` suite; also on shared QRData when
//! the DSGym data is present.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use dsbox_agent::fake::{FakeConfig, FakeReply, FakeServer, Script};
use dsbox_agent::model::Message;
use dsbox_agent::synth::scripted::{self, Part, SynthAnalyst};
use serde_json::Value;

use crate::{ROOTFS, check_chat_jsonl, dsbox, dsgym_root, json, jsonl, output, scratch, text};

/// How one rollout of one question deviates from the scripted analyst.
#[derive(Debug, Clone)]
enum Twist {
    /// Computes the value but prints something else, then answers the right value anyway
    /// (an answer nothing in the outputs supports).
    Unprinted { answer: String },
    /// A first cell that raises, then the analyst's own steps.
    ErrorFirst,
    /// Answers twice the printed value.
    Doubled,
}

/// The analyst through the fake server, with `twists` keyed by (question, attempt).
fn script(analyst: Arc<SynthAnalyst>, twists: HashMap<(String, u32), Twist>) -> Script {
    Script::handler(move |r| {
        let msgs = scripted::messages_from_json(r.messages());
        if scripted::part(&msgs) != Part::Solver {
            return FakeReply::text(analyst.reply(&msgs));
        }
        let q = scripted::question(&msgs);
        let twist = scripted::attempt(&msgs).and_then(|a| twists.get(&(q.clone(), a)));
        let turn = scripted::turn(&msgs);
        let reply = match (twist, turn) {
            (Some(Twist::Unprinted { .. }), 1) => {
                "<python>\nvalue = df.select_dtypes('number').mean()\nprint('computed')\n</python>"
                    .to_owned()
            }
            (Some(Twist::Unprinted { answer }), _) => format!("<answer>{answer}</answer>"),
            (Some(Twist::ErrorFirst), 1) => {
                "<python>\nprint(df['no_such_column'].mean())\n</python>".to_owned()
            }
            (Some(Twist::ErrorFirst), _) => {
                // Carry on as if the failed step had not happened.
                let mut m: Vec<Message> = msgs.clone();
                m.drain(4..6);
                analyst.reply(&m)
            }
            (Some(Twist::Doubled), 2) => {
                let printed: f64 = scripted::printed_answer(&msgs)
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0.0);
                format!("<answer>{:.2}</answer>", printed * 2.0)
            }
            _ => analyst.reply(&msgs),
        };
        FakeReply::text(reply)
    })
}

fn s(v: &str) -> String {
    v.to_owned()
}

/// Run a stage and require success.
async fn ok(starter: &Path, args: &[&str]) -> (String, String) {
    let o = output(dsbox(starter, args)).await;
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(
        o.status.success(),
        "dsbox {} failed ({}):\n{stderr}\n{stdout}",
        args.join(" "),
        o.status
    );
    (stdout, stderr)
}

/// The rollout number each trajectory file's first cell carries.
fn attempts(run: &Path) -> BTreeMap<(String, u64), u32> {
    let mut out = BTreeMap::new();
    for r in jsonl(&run.join("results.jsonl")) {
        let t = json(&run.join(r["trajectory_file"].as_str().unwrap()));
        let msgs: Vec<Message> = serde_json::from_value(t["conversation"].clone()).unwrap();
        let a = scripted::attempt(&msgs).expect("the first cell names its attempt");
        out.insert(
            (
                r["sample_id"].as_str().unwrap().to_owned(),
                r["trajectory"].as_u64().unwrap(),
            ),
            a,
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starter_seeds_to_verified_sft_data() {
    let dir = scratch();
    let starter = dir.path().join("starter");
    let analyst = Arc::new(SynthAnalyst::new());
    let server = FakeServer::start(FakeConfig::default(), analyst.script())
        .await
        .unwrap();
    let url = server.base_url();
    let q_run = dir.path().join("queries");
    let t_run = dir.path().join("trajectories");
    let (q_s, t_s) = (q_run.to_str().unwrap(), t_run.to_str().unwrap());

    // --- 1. queries: three seeds, two of them on the same file ---
    let (_, stderr) = ok(
        &starter,
        &[
            "synth",
            "queries",
            "--seeds",
            "starter:total-revenue,top-region",
            "--seeds",
            "starter:conversion-lift",
            "--n",
            "2",
            "--model",
            "fake-model",
            "--base-url",
            &url,
            "--rootfs",
            ROOTFS,
            "--out",
            q_s,
            "--concurrency",
            "3",
        ],
    )
    .await;
    assert!(stderr.contains("6 queries from 3 seed(s)"), "{stderr}");
    let queries = jsonl(&q_run.join("queries.jsonl"));
    let ids: Vec<&str> = queries.iter().map(|q| q["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "synth/starter-total-revenue-q1",
            "synth/starter-total-revenue-q2",
            "synth/starter-top-region-q1",
            "synth/starter-top-region-q2",
            "synth/starter-conversion-lift-q1",
            "synth/starter-conversion-lift-q2",
        ]
    );
    for q in &queries {
        let p = &q["metadata"]["synth"];
        assert_eq!(p["model"], "fake-model");
        assert_eq!(p["prompt_version"], "synth-queries/v1");
        assert!(p["generated_at"].as_str().unwrap().ends_with('Z'));
        assert!(
            q["id"]
                .as_str()
                .unwrap()
                .contains(&p["seed_id"].as_str().unwrap().replace("starter/", ""))
        );
        let data = q["data"].as_array().unwrap();
        assert_eq!(data.len(), 1, "the seed's data file: {q}");
        assert!(Path::new(data[0]["host"].as_str().unwrap()).is_file());
        assert!(
            q["question"]
                .as_str()
                .unwrap()
                .contains(data[0]["path"].as_str().unwrap())
        );
        assert_eq!(q["metric"]["name"], "exact_match");
    }
    // The generator really ran code on the seed's data in a sandbox: its answer is the
    // value pandas printed there.
    let gen0 = jsonl(&q_run.join("results.jsonl"));
    assert!(
        gen0.iter()
            .all(|r| r["cells"] == 2 && r["end_reason"] == "answered"),
        "{gen0:?}"
    );
    // The generated tasks are a user suite the tasks crate loads and validates.
    ok(
        &starter,
        &["tasks", "validate", "--suites-dir", q_s, "--suite", "synth"],
    )
    .await;

    // --- 2. trajectories, with one rollout of three questions going astray ---
    let answer_of = |id: &str| -> (String, String) {
        let q = queries.iter().find(|q| q["id"] == id).unwrap();
        (
            s(q["question"].as_str().unwrap()),
            s(q["answer"].as_str().unwrap()),
        )
    };
    let (qa, qa_answer) = answer_of("synth/starter-total-revenue-q1");
    let (qb, _) = answer_of("synth/starter-conversion-lift-q2");
    let (qc, _) = answer_of("synth/starter-conversion-lift-q1");
    let twists: HashMap<(String, u32), Twist> = [
        ((qa, 0), Twist::Unprinted { answer: qa_answer }),
        ((qb, 1), Twist::ErrorFirst),
        ((qc, 2), Twist::Doubled),
    ]
    .into_iter()
    .collect();
    server.set_script(script(analyst.clone(), twists));
    let tasks_file = q_run.join("queries.jsonl");
    ok(
        &starter,
        &[
            "synth",
            "trajectories",
            "--tasks",
            tasks_file.to_str().unwrap(),
            "--k",
            "3",
            "--model",
            "fake-model",
            "--base-url",
            &url,
            "--rootfs",
            ROOTFS,
            "--out",
            t_s,
            "--concurrency",
            "3",
        ],
    )
    .await;
    let results = jsonl(&t_run.join("results.jsonl"));
    assert_eq!(results.len(), 18);
    let manifest = json(&t_run.join("run.json"));
    assert_eq!(manifest["model"]["temperature"], 0.8);
    assert_eq!(manifest["k"], 3);
    assert!(t_run.join("tasks.jsonl").is_file() && t_run.join("suite.toml").is_file());
    assert!(
        t_run.join("report.html").is_file(),
        "eval reports work on the run"
    );

    // --- 3. filter (the judge is the run's model, through the same server) ---
    let (stdout, stderr) = ok(&starter, &["synth", "filter", t_s]).await;
    let decisions = jsonl(&t_run.join("filter/decisions.jsonl"));
    assert_eq!(decisions.len(), 18, "one decision per trajectory");
    let attempt = attempts(&t_run);
    let mut expected: BTreeMap<(String, u64), &str> = BTreeMap::new();
    for ((id, traj), a) in &attempt {
        let reason = match (id.as_str(), a) {
            ("synth/starter-total-revenue-q1", 0) => "not-reproduced",
            ("synth/starter-conversion-lift-q2", 1) => "judge-below-threshold",
            ("synth/starter-conversion-lift-q1", 2) => "disagrees-with-majority",
            (id, _) if id.starts_with("synth/starter-top-region") => "near-duplicate",
            _ => "kept",
        };
        expected.insert((id.clone(), *traj), reason);
    }
    let got: BTreeMap<(String, u64), &str> = decisions
        .iter()
        .map(|d| {
            (
                (
                    s(d["task_id"].as_str().unwrap()),
                    d["trajectory"].as_u64().unwrap(),
                ),
                d["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        expected,
        "decisions:\n{}",
        serde_json::to_string_pretty(&decisions).unwrap()
    );
    let unprinted = decisions
        .iter()
        .find(|d| d["reason"] == "not-reproduced")
        .unwrap();
    assert!(
        unprinted["detail"]
            .as_str()
            .unwrap()
            .contains("is not in the re-run's outputs"),
        "{unprinted}"
    );
    assert_eq!(unprinted["verification"]["failure"], "answer-not-found");
    assert_eq!(
        unprinted["agreement"]["count"], 3,
        "it agreed with the others: only re-execution catches it"
    );
    let judged = decisions
        .iter()
        .find(|d| d["reason"] == "judge-below-threshold")
        .unwrap();
    assert_eq!(
        judged["verification"]["reproduced"], true,
        "the recovered error still reproduces"
    );
    assert_eq!(judged["judge"]["total"], 0.52);
    let dup = decisions
        .iter()
        .find(|d| d["reason"] == "near-duplicate")
        .unwrap();
    assert!(
        dup["duplicate_of"]
            .as_str()
            .unwrap()
            .starts_with("synth/starter-total-revenue-q")
    );
    for d in decisions.iter().filter(|d| d["keep"] == true) {
        assert_eq!(d["verification"]["reproduced"], true, "{d}");
        assert!(d["judge"]["total"].as_f64().unwrap() >= 0.6, "{d}");
    }
    let summary = json(&t_run.join("filter/summary.json"));
    assert_eq!(summary["kept"], 9);
    assert_eq!(summary["by_reason"]["near-duplicate"], 6);
    assert_eq!(summary["by_reason"]["not-reproduced"], 1);
    assert_eq!(
        summary["verified_now"], 17,
        "re-runs only for what passed the cheap checks"
    );
    assert!(stdout.contains("not-reproduced"), "{stdout}");
    assert!(stderr.contains("kept 9 of 18 trajectories"), "{stderr}");
    assert_eq!(jsonl(&t_run.join("filter/kept.jsonl")).len(), 9);

    // Run again: every re-run and judgement is reused, the decisions are the same.
    let (_, stderr) = ok(&starter, &["synth", "filter", t_s]).await;
    assert!(
        stderr.contains("0 re-run now, 17 reused; 0 judged now, 16 reused"),
        "{stderr}"
    );
    assert_eq!(jsonl(&t_run.join("filter/decisions.jsonl")), decisions);

    // An empty result: a clear error, decisions kept for inspection, no kept list.
    let strict = t_run.join("strict");
    let o = output(dsbox(
        &starter,
        &[
            "synth",
            "filter",
            t_s,
            "--out",
            strict.to_str().unwrap(),
            "--min-turns",
            "50",
            "--max-turns",
            "60",
        ],
    ))
    .await;
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("no trajectory passed the filters (18 trajectories: 18 turns-out-of-range)"),
        "{stderr}"
    );
    assert!(stderr.contains("loosen the filters"), "{stderr}");
    assert!(strict.join("decisions.jsonl").is_file());
    assert!(!strict.join("kept.jsonl").exists());
    let o = output(dsbox(
        &starter,
        &[
            "synth",
            "export",
            t_s,
            "--filter",
            strict.to_str().unwrap(),
            "--out",
            dir.path().join("x.jsonl").to_str().unwrap(),
        ],
    ))
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("has no filter result"),
        "{}",
        text(&o.stderr)
    );
    assert!(!dir.path().join("x.jsonl").exists());

    // --- 4. export ---
    let train = dir.path().join("out/train.jsonl");
    let (_, stderr) = ok(
        &starter,
        &[
            "synth",
            "export",
            t_s,
            "--format",
            "openai-chat",
            "--out",
            train.to_str().unwrap(),
        ],
    )
    .await;
    assert!(stderr.contains("9 conversations (4 queries)"), "{stderr}");
    let convs = check_chat_jsonl(&train);
    assert_eq!(convs.len(), 9);
    for c in &convs {
        // system, task, then code/observation pairs, then the answer.
        assert!(c[1].1.contains("QUESTION:"), "{c:?}");
        assert_eq!(c.len(), 7, "{c:?}");
    }
    let card = json(&dir.path().join("out/train.card.json"));
    assert_eq!(card["counts"]["examples"], 9);
    assert_eq!(card["counts"]["trajectories_generated"], 18);
    assert_eq!(card["counts"]["seeds"], 3);
    assert_eq!(card["sources"]["seed_suites"]["starter"], 3);
    assert_eq!(card["sources"]["generator_models"][0], "fake-model");
    assert_eq!(card["sources"]["rollouts_per_query"], 3);
    assert_eq!(card["filters"]["params"]["verify"], true);
    assert_eq!(card["filters"]["params"]["judge"]["threshold"], 0.6);
    let md = std::fs::read_to_string(dir.path().join("out/train.card.md")).unwrap();
    assert!(md.contains("| execution verification | on |"), "{md}");
    assert!(md.contains("| not-reproduced | 1 |"), "{md}");

    let share = dir.path().join("out/share.jsonl");
    ok(
        &starter,
        &[
            "synth",
            "export",
            t_s,
            "--format",
            "sharegpt",
            "--out",
            share.to_str().unwrap(),
        ],
    )
    .await;
    for line in jsonl(&share) {
        let c = line["conversations"].as_array().unwrap();
        let froms: Vec<&str> = c.iter().map(|m| m["from"].as_str().unwrap()).collect();
        assert_eq!(
            froms,
            ["system", "human", "gpt", "human", "gpt", "human", "gpt"]
        );
    }

    // The finished run resumes to nothing new.
    let (_, stderr) = ok(&starter, &["synth", "trajectories", "--resume", t_s]).await;
    assert!(
        stderr.contains("18 of 18 trajectories finished"),
        "{stderr}"
    );
    assert!(stderr.contains("0 new trajectories"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_qrdata_seeds_to_sft_data() {
    let Some(root) = dsgym_root() else {
        eprintln!("note: skipped: the shared DSGym data (../shared/data/dsgym) is not present");
        return;
    };
    let dir = scratch();
    let starter = dir.path().join("starter");
    let analyst = Arc::new(SynthAnalyst::new());
    let server = FakeServer::start(FakeConfig::default(), analyst.script())
        .await
        .unwrap();
    let url = server.base_url();
    let root_s = root.to_str().unwrap();
    let q_run = dir.path().join("queries");
    let t_run = dir.path().join("trajectories");
    let (q_s, t_s) = (q_run.to_str().unwrap(), t_run.to_str().unwrap());
    ok(
        &starter,
        &[
            "synth",
            "queries",
            "--data-root",
            root_s,
            "--seeds",
            "qrdata:0,1,2",
            "--n",
            "2",
            "--model",
            "fake-model",
            "--base-url",
            &url,
            "--rootfs",
            ROOTFS,
            "--out",
            q_s,
            "--concurrency",
            "3",
        ],
    )
    .await;
    let queries = jsonl(&q_run.join("queries.jsonl"));
    assert!(queries.len() >= 3, "{queries:?}");
    for q in &queries {
        let seed = q["metadata"]["synth"]["seed_id"].as_str().unwrap();
        assert!(seed.starts_with("qrdata/"), "{seed}");
        assert!(
            q["data"][0]["path"]
                .as_str()
                .unwrap()
                .starts_with("/data/qrdata/")
        );
        // QRData's metric (exact_match, tolerance 0.03) is inherited.
        assert_eq!(q["metric"]["params"]["tolerance"], 0.03, "{q}");
    }
    ok(
        &starter,
        &[
            "synth",
            "trajectories",
            "--tasks",
            q_run.join("queries.jsonl").to_str().unwrap(),
            "--k",
            "2",
            "--model",
            "fake-model",
            "--base-url",
            &url,
            "--rootfs",
            ROOTFS,
            "--out",
            t_s,
            "--concurrency",
            "3",
        ],
    )
    .await;
    ok(&starter, &["synth", "filter", t_s]).await;
    let summary = json(&t_run.join("filter/summary.json"));
    assert_eq!(summary["trajectories"], 2 * queries.len());
    // The analyst's work all verifies and agrees; only two questions on a file with one
    // numeric column can be near-duplicates ("mean of x" and "median of x").
    let decisions = jsonl(&t_run.join("filter/decisions.jsonl"));
    assert!(
        decisions
            .iter()
            .all(|d| d["reason"] == "kept" || d["reason"] == "near-duplicate"),
        "{decisions:?}"
    );
    let kept = summary["kept"].as_u64().unwrap() as usize;
    assert!(kept >= 2 * 3, "{summary}");
    let train = dir.path().join("train.jsonl");
    ok(
        &starter,
        &[
            "synth",
            "export",
            t_s,
            "--out",
            train.to_str().unwrap(),
            "--metadata",
        ],
    )
    .await;
    let n = check_chat_jsonl_with_metadata(&train);
    assert_eq!(n, kept);
}

/// Like [`check_chat_jsonl`], for lines that also carry `metadata`.
fn check_chat_jsonl_with_metadata(path: &Path) -> usize {
    let lines = jsonl(path);
    let stripped = path.with_extension("stripped.jsonl");
    let mut text = String::new();
    for l in &lines {
        let m = &l["metadata"];
        assert!(
            m["task_id"].as_str().unwrap().starts_with("synth/qrdata-"),
            "{m}"
        );
        assert!(m["seed_id"].as_str().unwrap().starts_with("qrdata/"), "{m}");
        assert!(m["judge_total"].as_f64().is_some(), "{m}");
        let mut l: Value = l.clone();
        l.as_object_mut().unwrap().remove("metadata");
        text.push_str(&format!("{l}\n"));
    }
    std::fs::write(&stripped, text).unwrap();
    check_chat_jsonl(&stripped).len()
}
