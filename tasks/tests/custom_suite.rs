//! A suite defined only by files (a TOML entry, a JSONL task file, a CSV) is listed,
//! validated and scored, with no code change; its problems are reported per task while
//! the rest of the suite loads.

mod common;

use std::path::Path;

use dsbox_tasks::{Predictions, ProblemKind, Prompts, Scope, SuiteFormat, Track, score_suite};

const ENTRY: &str = r#"
name = "my-suite"
description = "A suite written by a user"
format = "dsbox"
files = ["tasks.jsonl"]
data_dir = "data"
metric = { name = "exact_match", params = { tolerance = 0.05 } }

[prompt]
style = "analysis"
instructions = ["Use pandas.", "Report numbers without thousands separators."]
"#;

const TASKS: &str = r#"{"id": "mean", "question": "What is the mean of x?", "context": "One column x.", "data": ["/data/numbers.csv"], "answer": "2.5"}
{"id": "pairs", "question": "Mean and max of x?", "data": ["/data/numbers.csv"], "answer": "[['mean', '2.5'], ['max', '4']]", "metric": {"name": "list_match"}, "answer_guideline": "@mean[value] @max[value]"}
{"id": "gone", "question": "Uses a file that is not there", "data": ["/data/missing.csv"], "answer": "1"}
{"id": "weird-metric", "question": "?", "data": [], "answer": "1", "metric": {"name": "bleu"}}
{"id": "bad-answer", "question": "?", "answer": "not a list", "metric": {"name": "list_match"}}
{"id": "escape", "question": "?", "data": ["/data/../etc/passwd"]}
{"id": "mean", "question": "duplicate id"}
this line is not JSON
{"id": "build", "track": "prediction", "question": "Write predictions", "metric": {"name": "none"}}
"#;

fn write_suite(dir: &Path) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("my-suite.toml"), ENTRY).unwrap();
    std::fs::write(dir.join("tasks.jsonl"), TASKS).unwrap();
    std::fs::write(dir.join("data/numbers.csv"), "x\n1\n2\n3\n4\n").unwrap();
}

#[test]
fn listed_validated_and_scored() {
    let (mut reg, tmp) = common::registry_without_data();
    let dir = tmp.path().join("suites");
    write_suite(&dir);
    reg.add_user_dir(&dir).unwrap();
    assert!(reg.names().contains(&"my-suite"));
    let def = reg.get("my-suite").unwrap();
    assert_eq!(def.format, SuiteFormat::Dsbox);
    // User suites need no DSGym data root.
    assert!(!dsbox_tasks::SuiteRegistry::needs_data_root(def));

    let suite = reg.load("my-suite").unwrap();
    let ids: Vec<&str> = suite.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "my-suite/mean",
            "my-suite/pairs",
            "my-suite/gone",
            "my-suite/weird-metric",
            "my-suite/bad-answer",
            "my-suite/build"
        ]
    );
    let mean = suite.task("my-suite/mean").unwrap();
    assert_eq!(
        mean.data[0].host.as_deref().unwrap(),
        dir.join("data/numbers.csv")
    );
    assert_eq!(mean.metric.params["tolerance"], 0.05);
    assert_eq!(
        suite.task("my-suite/pairs").unwrap().metric.name,
        "list_match"
    );
    let build = suite.task("my-suite/build").unwrap();
    assert_eq!(build.track, Track::Prediction);
    assert_eq!(
        build.submission.as_deref(),
        Some("/submission/submission.csv")
    );

    // Load problems: the escaping path, the duplicate id and the non-JSON line.
    let kinds: Vec<(String, ProblemKind)> = suite
        .problems
        .iter()
        .map(|p| (p.task_id.clone(), p.kind))
        .collect();
    assert_eq!(kinds.len(), 3, "{:?}", suite.problems);
    assert!(kinds.contains(&("my-suite/escape".into(), ProblemKind::BadRecord)));
    assert!(kinds.contains(&("my-suite/mean".into(), ProblemKind::DuplicateId)));
    let jsonl_line = format!("{}:8", dir.join("tasks.jsonl").display());
    assert!(
        kinds.contains(&(jsonl_line, ProblemKind::BadRecord)),
        "{kinds:?}"
    );

    // Validation adds the per-task checks.
    let problems = suite.validate();
    let has =
        |id: &str, kind: ProblemKind| problems.iter().any(|p| p.task_id == id && p.kind == kind);
    assert!(has("my-suite/gone", ProblemKind::MissingData));
    assert!(has("my-suite/weird-metric", ProblemKind::UnknownMetric));
    assert!(has("my-suite/bad-answer", ProblemKind::BadAnswer));
    assert_eq!(problems.len(), 6, "{problems:#?}");
    assert!(
        !problems
            .iter()
            .any(|p| p.task_id == "my-suite/mean" && p.kind != ProblemKind::DuplicateId)
    );

    // Scoring.
    let preds_path = tmp.path().join("preds.jsonl");
    std::fs::write(
        &preds_path,
        r#"{"id": "my-suite/mean", "prediction": "2.6"}
{"id": "my-suite/pairs", "prediction": "@max[4] @mean[2.5]"}
{"id": "my-suite/weird-metric", "prediction": "1"}
"#,
    )
    .unwrap();
    let preds = Predictions::read(&preds_path).unwrap();
    let scored = score_suite(&suite, &preds, Scope::AllTasks);
    let by_id = |id: &str| scored.rows.iter().find(|r| r.id == id).unwrap();
    assert_eq!(by_id("my-suite/mean").score, Some(1.0)); // 4% off, tolerance 5%
    assert_eq!(by_id("my-suite/pairs").score, Some(1.0));
    assert_eq!(by_id("my-suite/gone").score, Some(0.0));
    assert!(by_id("my-suite/gone").missing);
    assert_eq!(
        by_id("my-suite/weird-metric").error_kind,
        Some("unknown-metric")
    );
    assert_eq!(by_id("my-suite/bad-answer").error_kind, Some("bad-answer"));
    assert_eq!(by_id("my-suite/build").error_kind, Some("no-metric"));
    let a = &scored.aggregate;
    assert_eq!((a.count, a.evaluable, a.solved, a.missing), (6, 3, 2, 3));
    assert_eq!(a.mean, 2.0 / 6.0);

    // Prompts: the suite's extra instructions are rendered.
    let p = Prompts::builtin()
        .render(suite.task("my-suite/pairs").unwrap(), &suite.def)
        .unwrap();
    assert!(
        p.user.contains("- Use pandas.") && p.user.contains("@mean[value] @max[value]"),
        "{}",
        p.user
    );
}

#[test]
fn custom_prompt_templates_and_overrides() {
    let (mut reg, tmp) = common::registry_without_data();
    let dir = tmp.path().join("suites");
    write_suite(&dir);
    let entry = ENTRY.replace("[prompt]", "[prompt]\nuser_template = \"my-user.j2\"");
    std::fs::write(dir.join("my-suite.toml"), entry).unwrap();
    std::fs::write(
        dir.join("my-user.j2"),
        "Q: {{ question }} ({{ data_paths | length }} file)",
    )
    .unwrap();
    reg.add_user_dir(&dir).unwrap();
    let suite = reg.load("my-suite").unwrap();
    let task = suite.task("my-suite/mean").unwrap();
    let p = Prompts::builtin().render(task, &suite.def).unwrap();
    assert_eq!(p.user, "Q: What is the mean of x? (1 file)\n");

    // A user prompts directory overrides a built-in template by name.
    let prompts = tmp.path().join("prompts");
    std::fs::create_dir_all(prompts.join("instructions")).unwrap();
    std::fs::write(prompts.join("system.j2"), "SYSTEM for {{ suite }}").unwrap();
    std::fs::write(prompts.join("instructions/analysis.j2"), "- Be brief.").unwrap();
    let starter = reg.load("starter").unwrap();
    let t = &starter.tasks[0];
    let p = Prompts::with_override_dir(Some(prompts))
        .render(t, &starter.def)
        .unwrap();
    assert_eq!(p.system, "SYSTEM for starter\n");
    assert!(p.user.contains("INSTRUCTIONS:\n- Be brief."), "{}", p.user);

    // A broken template is an error naming it.
    std::fs::write(dir.join("my-user.j2"), "{% if %}").unwrap();
    let err = Prompts::builtin()
        .render(task, &suite.def)
        .unwrap_err()
        .to_string();
    assert!(err.contains("my-user.j2"), "{err}");
}

#[test]
fn a_suite_name_can_not_be_taken_twice() {
    let (mut reg, tmp) = common::registry_without_data();
    let dir = tmp.path().join("suites");
    write_suite(&dir);
    std::fs::write(dir.join("again.toml"), ENTRY).unwrap();
    let err = reg.add_user_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("suite `my-suite` is defined twice"), "{err}");
    let (mut reg, _tmp2) = common::registry_without_data();
    let clash = tmp.path().join("clash.toml");
    std::fs::write(&clash, ENTRY.replace("my-suite", "qrdata")).unwrap();
    let err = reg.add_entry(&clash).unwrap_err().to_string();
    assert!(err.contains("built-in suite qrdata"), "{err}");
}

#[test]
fn dsgym_format_user_suite_reuses_the_release_layout() {
    // A user can point an entry at DSGym-format files (e.g. a newer QRData release).
    let (mut reg, tmp) = common::registry_without_data();
    let dir = tmp.path().join("s");
    std::fs::create_dir_all(dir.join("files/q")).unwrap();
    std::fs::write(dir.join("files/q/a.csv"), "a\n1\n").unwrap();
    std::fs::write(
        dir.join("qa.json"),
        r#"[{"context": "c", "question": "q?", "answer": ["X", "y"], "data": ["/data/q/a.csv"], "metadata": {"level": "easy"}, "extra": 1}]"#,
    )
    .unwrap();
    std::fs::write(dir.join("e.toml"), "name = \"qa\"\nformat = \"dsgym\"\nfiles = [\"qa.json\"]\ndata_dir = \"files\"\nmetric = { name = \"exact_match\", params = { tolerance = 0.0 } }\n").unwrap();
    reg.add_user_dir(&dir).unwrap();
    let suite = reg.load("qa").unwrap();
    assert!(suite.validate().is_empty(), "{:?}", suite.validate());
    let t = &suite.tasks[0];
    assert_eq!(t.id, "qa/0");
    assert_eq!(t.metadata["extra"], 1);
    assert_eq!(t.answer_text().as_deref(), Some("['X', 'y']"));
    let m = dsbox_tasks::Metric::for_task(t).unwrap();
    assert_eq!(m.score("['Y', 'x']", t).unwrap().value, 1.0);
}
