//! Bad input gets one clear error naming the problem (file and line, suite, path) and
//! never a panic.

mod common;

use dsbox_tasks::{DataRoot, Predictions, SuiteRegistry, TasksError};

fn user_suite(dir: &std::path::Path, file: &str, contents: &str) -> SuiteRegistry {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(file), contents).unwrap();
    std::fs::write(
        dir.join("s.toml"),
        format!("name = \"s\"\nformat = \"dsbox\"\nfiles = [\"{file}\"]\n"),
    )
    .unwrap();
    let mut reg = SuiteRegistry::builtin(DataRoot::at(dir.join("none"))).unwrap();
    reg.set_starter_dir(dir.join("starter"));
    reg.add_user_dir(dir).unwrap();
    reg
}

#[test]
fn malformed_json_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = user_suite(
        tmp.path(),
        "t.json",
        "[\n  {\"question\": \"a\"},\n  {\"question\": \"b\",}\n]\n",
    );
    let err = reg.load("s").unwrap_err();
    match &err {
        TasksError::MalformedJson { path, line, .. } => {
            assert_eq!(path, &tmp.path().join("t.json"));
            assert_eq!(*line, 3);
        }
        other => panic!("unexpected error {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}:3:", tmp.path().join("t.json").display())),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn a_json_object_instead_of_an_array_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = user_suite(tmp.path(), "t.json", "{\"question\": \"a\"}");
    let msg = reg.load("s").unwrap_err().to_string();
    assert!(
        msg.contains("expected a JSON array of task records"),
        "{msg}"
    );
}

#[test]
fn records_of_the_wrong_shape_are_problems_not_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = user_suite(
        tmp.path(),
        "t.json",
        r#"[{"question": 5}, "text", {"question": "ok"}, {"question": "q", "data": "/data/x"}]"#,
    );
    let suite = reg.load("s").unwrap();
    assert_eq!(suite.tasks.len(), 1);
    assert_eq!(suite.tasks[0].id, "s/2");
    let msgs: Vec<String> = suite.problems.iter().map(ToString::to_string).collect();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert!(msgs[0].starts_with("s/0: bad-record:"), "{msgs:?}");
    assert!(msgs[1].contains("not a JSON object"), "{msgs:?}");
}

#[test]
fn unknown_suite_and_task() {
    let (reg, _tmp) = common::registry_without_data();
    let msg = reg.load("qrdta").unwrap_err().to_string();
    assert!(
        msg.contains("unknown suite `qrdta`") && msg.contains("qrdata"),
        "{msg}"
    );
    let msg = reg.find_task("starter/nope").unwrap_err().to_string();
    assert!(msg.contains("unknown task `starter/nope`"), "{msg}");
    let msg = reg.find_task("nosuite/1").unwrap_err().to_string();
    assert!(msg.contains("unknown task"), "{msg}");
}

#[test]
fn missing_data_root_names_the_path_and_the_fix() {
    let (reg, tmp) = common::registry_without_data();
    let err = reg.load("qrdata").unwrap_err();
    assert!(matches!(err, TasksError::DataRootMissing { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains(&tmp.path().join("no-such-root").display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains("--data-root") && msg.contains("DSBOX_DATA_ROOT"),
        "{msg}"
    );
    // The starter suite does not need it.
    assert!(reg.load("starter").is_ok());
}

#[test]
fn data_root_resolution_order() {
    // The flag wins; the env var and XDG default are read by `resolve` (not altered here:
    // tests run in parallel and share the environment).
    let root = DataRoot::resolve(Some(std::path::Path::new("/x/y")));
    assert_eq!(root.path, std::path::Path::new("/x/y"));
    assert_eq!(root.origin.to_string(), "--data-root");
}

#[test]
fn bad_suite_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("e.toml");
    let mut reg = SuiteRegistry::builtin(DataRoot::at(tmp.path())).unwrap();
    for (text, expect) in [
        (
            "name = \"x\"\nformat = \"dsbox\"\nfiles = [\"a.json\"\n",
            "invalid suite entry",
        ),
        (
            "name = \"x\"\nformat = \"xml\"\nfiles = [\"a.json\"]\n",
            "unknown variant `xml`",
        ),
        ("name = \"x\"\nformat = \"starter\"\n", "reserved"),
        (
            "name = \"x\"\nformat = \"dsbox\"\nfiles = [\"a.json\"]\nmetric = { name = \"exact_match\", params = { tolerance = \"high\" } }\n",
            "non-negative number",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let msg = reg.add_entry(&path).unwrap_err().to_string();
        assert!(
            msg.contains(expect) && msg.contains("e.toml"),
            "{text:?}: {msg}"
        );
    }
    let msg = reg
        .add_user_dir(&tmp.path().join("absent"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("absent"), "{msg}");
    // A task file that does not exist names the file.
    std::fs::write(
        &path,
        "name = \"x\"\nformat = \"dsbox\"\nfiles = [\"absent.json\"]\n",
    )
    .unwrap();
    reg.add_entry(&path).unwrap();
    let msg = reg.load("x").unwrap_err().to_string();
    assert!(msg.contains("absent.json"), "{msg}");
}

#[test]
fn bad_predictions_files() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("p.jsonl");
    for (text, expect) in [
        (
            "{\"id\": \"a\", \"prediction\": \"1\"}\n{\"id\": \"a\"",
            ":2: expected",
        ),
        ("{\"prediction\": \"1\"}", ":1: expected {\"id\""),
        (
            "{\"id\": \"a\"}\n\n{\"id\": \"a\"}",
            ":3: task id `a` appears twice",
        ),
    ] {
        std::fs::write(&p, text).unwrap();
        let msg = Predictions::read(&p).unwrap_err().to_string();
        assert!(
            msg.contains(expect) && msg.starts_with(&p.display().to_string()),
            "{text:?}: {msg}"
        );
    }
    let msg = Predictions::read(&tmp.path().join("none.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("none.jsonl"), "{msg}");
}

#[test]
fn hostile_answers_do_not_crash_the_metrics() {
    let (reg, _tmp) = common::registry_without_data();
    let suite = reg.load("starter").unwrap();
    let long = "[".repeat(50_000);
    let nul = "\u{0}@a[\u{0}]";
    for task in &suite.tasks {
        let m = dsbox_tasks::Metric::for_task(task).unwrap();
        for p in [
            long.as_str(),
            nul,
            "",
            "@[]",
            "@x[",
            "nan",
            "inf",
            "-0",
            "1e999",
            "'''",
        ] {
            let s = m.score(p, task).unwrap();
            assert!(s.value == 0.0 || s.value == 1.0);
        }
    }
}
