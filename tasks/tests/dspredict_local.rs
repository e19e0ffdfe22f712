//! DSPredict scoring without any upload: a submission.csv is scored locally against the
//! competition's answer file and placed on the offline board. Built on a small suite in
//! the DSPredict release format, written by the test.

use std::path::Path;

use dsbox_tasks::{DataRoot, Medal, Metric, ProblemKind, SuiteRegistry};
use serde_json::json;

fn setup(dir: &Path) -> SuiteRegistry {
    std::fs::create_dir_all(dir.join("leaderboard")).unwrap();
    std::fs::create_dir_all(dir.join("answers")).unwrap();
    std::fs::create_dir_all(dir.join("data/toy-accuracy")).unwrap();
    std::fs::create_dir_all(dir.join("data/toy-rmse")).unwrap();
    let comps = json!([
        {"challenge_name": "toy-accuracy", "description": "Predict the label.", "docker_challenge_path": "/data/toy-accuracy",
         "competition_description": "c", "evaluation_metric": "Submissions are evaluated on accuracy.", "dataset_description": "d",
         "metadata": {"domain": "ml"}},
        {"challenge_name": "toy-rmse", "description": "Predict y.", "docker_challenge_path": "/data/toy-rmse",
         "competition_description": "c", "evaluation_metric": "Root Mean Squared Error (RMSE)", "dataset_description": "d",
         "metadata": {}},
        {"challenge_name": "toy-unknown-metric", "description": "?", "docker_challenge_path": "/data/toy-unknown-metric",
         "competition_description": "c", "evaluation_metric": "Mean Average Precision @ 5", "dataset_description": "d", "metadata": {}},
        {"challenge_name": "toy-no-board", "description": "?", "docker_challenge_path": "/data/toy-no-board",
         "competition_description": "c", "evaluation_metric": "accuracy", "dataset_description": "d", "metadata": {}}
    ]);
    std::fs::write(dir.join("comps.json"), comps.to_string()).unwrap();
    // Accuracy board (higher is better): 100 teams; RMSE board (lower is better).
    let acc: Vec<f64> = (0..99).map(|i| 1.0 - i as f64 * 0.01).collect();
    let rmse: Vec<f64> = (0..99).map(|i| 0.1 + i as f64 * 0.1).collect();
    let boards = json!({
        "toy-accuracy": {"public_scores": acc, "private_scores": [], "public_mean": 0.5, "public_median": 0.51, "private_mean": 0, "private_median": 0, "total_submissions": 99},
        "toy-rmse": {"public_scores": rmse, "private_scores": [], "public_mean": 5.0, "public_median": 5.0, "private_mean": 0, "private_median": 0, "total_submissions": 99},
        "toy-unknown-metric": {"public_scores": [0.9, 0.1], "private_scores": [0.8, 0.2], "total_submissions": 2}
    });
    std::fs::write(
        dir.join("leaderboard/toy_leaderboard_stats_2026-01-01.json"),
        boards.to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("answers/toy-accuracy.csv"),
        "id,label,Usage\n1,a,Public\n2,b,Private\n3,a,Public\n4,b,Private\n",
    )
    .unwrap();
    std::fs::write(dir.join("answers/toy-rmse.csv"), "id,y\n1,1.0\n2,2.0\n").unwrap();
    std::fs::write(
        dir.join("toy.toml"),
        "name = \"toy\"\nformat = \"dspredict\"\nfiles = [\"comps.json\"]\ntrack = \"prediction\"\nleaderboard = \"toy\"\nanswers_dir = \"answers\"\ndata_dir = \"data\"\n",
    )
    .unwrap();
    let mut reg = SuiteRegistry::builtin(DataRoot::at(dir.join("none"))).unwrap();
    reg.add_user_dir(dir).unwrap();
    reg
}

#[test]
fn submissions_are_scored_locally_and_placed() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = setup(tmp.path());
    let suite = reg.load("toy").unwrap();
    assert_eq!(suite.tasks.len(), 4);
    let acc = suite.task("toy/toy-accuracy").unwrap();
    assert_eq!(acc.metric.params["local_metric"], "accuracy");
    assert!(
        acc.data[0]
            .host
            .as_ref()
            .unwrap()
            .ends_with("data/toy-accuracy")
    );
    let m = Metric::for_task(acc).unwrap();

    // 3 of 4 right → 0.75; rows in another order, extra column ignored.
    let sub = tmp.path().join("sub.csv");
    std::fs::write(&sub, "label,id,notes\nb,4,x\na,3,x\na,2,x\na,1,x\n").unwrap();
    let s = m.score(sub.to_str().unwrap(), acc).unwrap();
    let lb = s.leaderboard.as_ref().unwrap();
    assert_eq!(
        (lb.score, lb.source.as_str(), lb.board.as_str()),
        (0.75, "local", "public")
    );
    let p = lb.primary().unwrap();
    // Board 1.00, 0.99, ... : 25 entries are better than 0.75 (1.00 .. 0.76), one ties.
    assert_eq!(p.rank, 26);
    assert_eq!(p.medal, Medal::Bronze); // T = 100: bronze up to rank 40
    assert!(p.above_median);
    assert_eq!(s.value, p.percentile / 100.0);

    // Lower is better: RMSE of (1.5, 2.5) against (1, 2) is 0.5 → rank 5 of 100, gold.
    let rm = suite.task("toy/toy-rmse").unwrap();
    std::fs::write(&sub, "id,y\n1,1.5\n2,2.5\n").unwrap();
    let s = Metric::for_task(rm)
        .unwrap()
        .score(sub.to_str().unwrap(), rm)
        .unwrap();
    let p = s.leaderboard.as_ref().unwrap().primary().unwrap().clone();
    assert_eq!(s.leaderboard.as_ref().unwrap().score, 0.5);
    assert!(!p.higher_is_better);
    assert_eq!((p.rank, p.medal), (5, Medal::Gold));
    // A given score (e.g. from Kaggle) is placed the same way.
    let given = Metric::for_task(rm).unwrap().score("0.5", rm).unwrap();
    assert_eq!(given.leaderboard.unwrap().primary().unwrap().rank, 5);
}

#[test]
fn bad_submissions_are_not_evaluable_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = setup(tmp.path());
    let suite = reg.load("toy").unwrap();
    let acc = suite.task("toy/toy-accuracy").unwrap();
    let m = Metric::for_task(acc).unwrap();
    let sub = tmp.path().join("sub.csv");
    for (csv, expect) in [
        ("id,label\n1,a\n2,b\n", "2 rows, the answer file 4"),
        ("id,label\n1,a\n1,a\n3,a\n4,b\n", "lists id `1` twice"),
        ("id,guess\n1,a\n2,b\n3,a\n4,b\n", "no `label` column"),
        ("ident,label\n1,a\n2,b\n3,a\n4,b\n", "no `id` column"),
        ("id,label\n1,a\n2,b\n3,a\n5,b\n", "no row for id `4`"),
    ] {
        std::fs::write(&sub, csv).unwrap();
        let err = m.score(sub.to_str().unwrap(), acc).unwrap_err();
        assert_eq!(err.kind(), "submission", "{csv}");
        assert!(err.to_string().contains(expect), "{csv}: {err}");
    }
    let err = m.score("/nonexistent/sub.csv", acc).unwrap_err();
    assert_eq!(err.kind(), "bad-prediction");
    // No local metric known for the competition: a clear reason, not a guess.
    let unknown = suite.task("toy/toy-unknown-metric").unwrap();
    std::fs::write(&sub, "id,label\n").unwrap();
    let err = Metric::for_task(unknown)
        .unwrap()
        .score(sub.to_str().unwrap(), unknown)
        .unwrap_err();
    assert!(err.to_string().contains("local_metric"), "{err}");
    // No answer file.
    std::fs::remove_file(tmp.path().join("answers/toy-rmse.csv")).unwrap();
    let rm = suite.task("toy/toy-rmse").unwrap();
    std::fs::write(&sub, "id,y\n1,1\n2,2\n").unwrap();
    let err = Metric::for_task(rm)
        .unwrap()
        .score(sub.to_str().unwrap(), rm)
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    // Validate reports the competition that has no board.
    let problems = suite.validate();
    assert!(
        problems
            .iter()
            .any(|p| p.task_id == "toy/toy-no-board" && p.kind == ProblemKind::Leaderboard),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.task_id == "toy/toy-no-board" && p.kind == ProblemKind::MissingData)
    );
    assert!(
        !problems.iter().any(|p| p.task_id == "toy/toy-accuracy"),
        "{problems:?}"
    );
}

#[test]
fn an_answer_file_inside_the_mounted_directory_is_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = setup(tmp.path());
    // Point the answers at the competition directory that the sandbox sees.
    let entry = std::fs::read_to_string(tmp.path().join("toy.toml"))
        .unwrap()
        .replace(
            "answers_dir = \"answers\"",
            "answers_dir = \"data/toy-rmse\"",
        );
    std::fs::write(tmp.path().join("toy.toml"), entry).unwrap();
    drop(reg);
    let mut reg = SuiteRegistry::builtin(DataRoot::at(tmp.path().join("none"))).unwrap();
    reg.add_user_dir(tmp.path()).unwrap();
    let problems = reg.load("toy").unwrap().validate();
    assert!(
        problems
            .iter()
            .any(|p| p.task_id == "toy/toy-rmse" && p.kind == ProblemKind::AnswerExposed),
        "{problems:?}"
    );
}
