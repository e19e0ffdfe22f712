//! Bad input gets one clear line naming the problem and the fix, and leaves nothing
//! half-written: seeds without data, a model reply with no parseable queries, tasks files
//! that do not load, flags that make no sense, stages run on the wrong directory. (An
//! empty filter result is checked in the pipeline test, on a real run.)

use std::path::Path;

use dsbox_agent::fake::{FakeConfig, FakeReply, FakeServer, Script};
use dsbox_agent::synth::scripted::{self, Part, SynthAnalyst};

use crate::{ROOTFS, dsbox, json, output, scratch, text};

/// A user suite with a task without data and one whose file is missing.
fn user_suite(dir: &Path) -> std::path::PathBuf {
    let suites = dir.join("suites");
    std::fs::create_dir_all(&suites).unwrap();
    std::fs::write(
        suites.join("mine.toml"),
        "name = \"mine\"\nformat = \"dsbox\"\nfiles = [\"mine.jsonl\"]\n",
    )
    .unwrap();
    std::fs::write(
        suites.join("mine.jsonl"),
        "{\"id\": \"nodata\", \"question\": \"What is 2+2?\", \"answer\": \"4\"}\n{\"id\": \"gone\", \"question\": \"Mean of x?\", \"data\": [\"/data/gone.csv\"], \"answer\": \"1\"}\n",
    )
    .unwrap();
    suites
}

/// One line on stderr, beginning `dsbox: error:`.
fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("dsbox: error: "), "{stderr}");
    lines[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_anything_is_written() {
    let dir = scratch();
    let starter = dir.path().join("starter");
    let suites = user_suite(dir.path());
    let out = dir.path().join("run");
    let out_s = out.to_str().unwrap();
    // Nothing listens here: every check below comes before the model is asked.
    let url = "http://127.0.0.1:9/v1";
    let mine_jsonl = suites.join("mine.jsonl");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "synth",
                "--suites-dir",
                suites.to_str().unwrap(),
                "queries",
                "--seeds",
                "mine:nodata,gone",
                "--model",
                "m",
                "--base-url",
                url,
                "--out",
                out_s,
            ],
            "seeds mine/nodata, mine/gone have no data on this host (mine/nodata names no data files): the queries agent explores a seed's data, so pick seeds whose files are present",
        ),
        (
            vec![
                "synth",
                "--suites-dir",
                suites.to_str().unwrap(),
                "queries",
                "--seeds",
                "mine",
                "--model",
                "m",
                "--base-url",
                url,
                "--out",
                out_s,
            ],
            "have no data on this host",
        ),
        (
            vec![
                "synth",
                "queries",
                "--seeds",
                "starter:no-such-task",
                "--model",
                "m",
                "--base-url",
                url,
                "--out",
                out_s,
            ],
            "--seeds: starter/no-such-task is not a task of starter",
        ),
        (
            vec![
                "synth",
                "queries",
                "--seeds",
                "starter",
                "--name",
                "qrdata",
                "--model",
                "m",
                "--base-url",
                url,
                "--out",
                out_s,
            ],
            "suite name `qrdata`: it is a built-in suite's name; pick another with --name",
        ),
        (
            vec!["synth", "queries", "--model", "m", "--base-url", url],
            "give the seed tasks with --seeds",
        ),
        (
            vec![
                "synth",
                "trajectories",
                "--tasks",
                "/nonexistent/queries.jsonl",
                "--model",
                "m",
                "--base-url",
                url,
                "--out",
                out_s,
            ],
            "no such file (pass the queries.jsonl that `dsbox synth queries` wrote)",
        ),
        (
            vec![
                "synth",
                "trajectories",
                "--tasks",
                mine_jsonl.to_str().unwrap(),
                "--model",
                "m",
                "--base-url",
                url,
                "--out",
                out_s,
            ],
            "missing-data",
        ),
        (
            vec!["synth", "filter", out_s],
            "is not a `dsbox synth trajectories` run (it does not exist)",
        ),
        (
            vec!["synth", "filter", suites.to_str().unwrap()],
            "is not a `dsbox synth trajectories` run (it holds no dsbox run)",
        ),
        (
            vec![
                "synth",
                "export",
                suites.to_str().unwrap(),
                "--out",
                "/tmp/x.jsonl",
            ],
            "is not a `dsbox synth trajectories` run",
        ),
        (
            vec!["synth", "export", out_s, "--out", "/tmp/x.txt"],
            "the export is JSONL",
        ),
        (
            vec![
                "audit",
                "shortcut",
                "--suite",
                "starter",
                "--k",
                "2",
                "--flag-threshold",
                "3",
                "--model",
                "m",
                "--base-url",
                url,
            ],
            "--flag-threshold 3 is more than --k 2",
        ),
        (
            vec!["audit", "shortcut", "--model", "m", "--base-url", url],
            "give the suites to audit with --suite",
        ),
        (
            vec![
                "synth",
                "queries",
                "--seeds",
                "starter",
                "--model",
                "m",
                "--base-url",
                url,
                "--out",
                out_s,
                "--temperature",
                "3",
            ],
            "--temperature 3 is out of range",
        ),
    ];
    for (args, want) in cases {
        let o = output(dsbox(&starter, &args)).await;
        let stderr = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
        let line = one_error_line(&stderr);
        assert!(
            line.contains(want),
            "{args:?}:\n  got  {line}\n  want {want}"
        );
        assert!(!out.exists(), "{args:?} left {} behind", out.display());
    }
    // A usage error (exit 2) for a flag clap can check.
    let o = output(dsbox(&starter, &["synth", "trajectories", "--k", "0"])).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    // An unreachable server is the last check before the run directory.
    let o = output(dsbox(
        &starter,
        &[
            "synth",
            "queries",
            "--seeds",
            "starter:total-revenue",
            "--model",
            "m",
            "--base-url",
            url,
            "--out",
            out_s,
            "--rootfs",
            ROOTFS,
        ],
    ))
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(one_error_line(&text(&o.stderr)).contains("cannot reach the model server"));
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_no_parseable_queries_names_the_fix_and_writes_no_tasks() {
    let dir = scratch();
    let starter = dir.path().join("starter");
    let analyst = SynthAnalyst::new();
    // The generator explores properly, then answers with prose instead of a list.
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::handler(move |r| {
            let msgs = scripted::messages_from_json(r.messages());
            if scripted::part(&msgs) == Part::Generator && scripted::turn(&msgs) == 2 {
                return FakeReply::text("<answer>The data holds monthly sales by region; revenue grows in summer.</answer>");
            }
            FakeReply::text(analyst.reply(&msgs))
        }),
    )
    .await
    .unwrap();
    let out = dir.path().join("run");
    let o = output(dsbox(
        &starter,
        &[
            "synth",
            "queries",
            "--seeds",
            "starter:total-revenue",
            "--n",
            "2",
            "--model",
            "fake-model",
            "--base-url",
            &server.base_url(),
            "--rootfs",
            ROOTFS,
            "--out",
            out.to_str().unwrap(),
        ],
    ))
    .await;
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("starter/total-revenue: the reply held no `Query: … Answer: …` items (it began: \"The data holds monthly sales"),
        "{stderr}"
    );
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("dsbox: error: no queries could be parsed from the model's replies for 1 seed(s): each reply must end with <answer> holding a numbered list `1. Query: ... Answer: ...`"),
        "{stderr}"
    );
    assert!(!out.join("queries.jsonl").exists(), "no tasks file");
    assert!(!out.join("queries.toml").exists(), "no suite entry");
    let report = json(&out.join("queries-report.json"));
    assert_eq!(report["generated"], 0);
    assert_eq!(report["per_seed"][0]["proposed"], 0);
    // The exploration itself is kept (the run can be inspected and resumed).
    assert!(out.join("results.jsonl").is_file());
}
