//! Golden tests on the shared DSGym data: every suite loads, validation reports exactly
//! the known gaps, ground truth scores 1.0, and perturbed answers score as the rules say.

mod common;

use std::collections::BTreeMap;

use dsbox_tasks::metric::text::parse_truth_pairs;
use dsbox_tasks::pyliteral::{PyValue, literal_eval};
use dsbox_tasks::{KaggleMetric, LoadedSuite, Metric, ProblemKind, SuiteRegistry, Task};

fn load(reg: &SuiteRegistry, name: &str) -> LoadedSuite {
    reg.load(name)
        .unwrap_or_else(|e| panic!("suite {name} failed to load: {e}"))
}

fn score(task: &Task, prediction: &str) -> f64 {
    let metric = Metric::for_task(task).unwrap();
    metric
        .score(prediction, task)
        .unwrap_or_else(|e| panic!("{}: {e}", task.id))
        .value
}

/// The ground truth written the way an agent would answer.
fn as_prediction(task: &Task) -> String {
    let truth = task.answer_text().expect("answer");
    if task.metric.name == "list_match" {
        parse_truth_pairs(&truth)
            .unwrap()
            .iter()
            .map(|(n, v)| format!("@{n}[{v}]"))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        truth
    }
}

#[test]
fn every_suite_loads_with_the_expected_counts() {
    let Some(root) = common::shared_data("every_suite_loads_with_the_expected_counts") else {
        return;
    };
    let (reg, _tmp) = common::registry(root);
    let expected = [
        ("starter", 12),
        ("qrdata", 200),
        ("daeval", 181),
        ("dabstep-dev", 10),
        ("dabstep", 450),
        ("discoverybench", 12),
        ("dsbio", 90),
        ("dspredict-easy", 38),
        ("dspredict-hard", 54),
        ("scienceagentbench", 38),
    ];
    let started = std::time::Instant::now();
    for (name, count) in expected {
        let suite = load(&reg, name);
        assert_eq!(suite.tasks.len(), count, "{name}");
        assert!(
            suite.problems.is_empty(),
            "{name}: load problems {:?}",
            suite.problems
        );
        // Ids are unique and carry the suite name.
        let mut ids: Vec<&str> = suite.tasks.iter().map(|t| t.id.as_str()).collect();
        assert!(ids.iter().all(|id| id.starts_with(&format!("{name}/"))));
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "{name}: duplicate ids");
    }
    eprintln!("loaded all suites in {:?}", started.elapsed());
}

#[test]
fn validate_reports_exactly_the_known_gaps() {
    let Some(root) = common::shared_data("validate_reports_exactly_the_known_gaps") else {
        return;
    };
    let (reg, _tmp) = common::registry(root);
    let mut by_suite: BTreeMap<String, BTreeMap<ProblemKind, usize>> = BTreeMap::new();
    for name in reg.names() {
        for p in load(&reg, name).validate() {
            assert!(p.task_id.starts_with(&format!("{name}/")), "{p}");
            *by_suite
                .entry(name.to_owned())
                .or_default()
                .entry(p.kind)
                .or_default() += 1;
        }
    }
    let expect = |pairs: &[(ProblemKind, usize)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
    // QRData, DAEval, DiscoveryBench, starter: clean.
    for clean in ["starter", "qrdata", "daeval", "discoverybench"] {
        assert!(
            !by_suite.contains_key(clean),
            "{clean}: {:?}",
            by_suite.get(clean)
        );
    }
    // DABStep: payments.csv is not in the shared copy; all.jsonl has no answers.
    assert_eq!(
        by_suite["dabstep-dev"],
        expect(&[(ProblemKind::MissingData, 10)])
    );
    assert_eq!(
        by_suite["dabstep"],
        expect(&[
            (ProblemKind::MissingData, 450),
            (ProblemKind::NoAnswer, 450)
        ])
    );
    // DSBio and ScienceAgentBench data, DSPredict competition directories: not shipped.
    assert_eq!(
        by_suite["dsbio"],
        expect(&[(ProblemKind::MissingData, 149)])
    );
    assert_eq!(
        by_suite["scienceagentbench"],
        expect(&[(ProblemKind::MissingData, 332)])
    );
    assert_eq!(
        by_suite["dspredict-easy"],
        expect(&[(ProblemKind::MissingData, 38)])
    );
    assert_eq!(
        by_suite["dspredict-hard"],
        expect(&[(ProblemKind::MissingData, 54)])
    );
    // The missing DABStep file is named.
    let dev = load(&reg, "dabstep-dev").validate();
    assert!(
        dev.iter()
            .all(|p| p.message.contains("/data/dabstep/payments.csv")),
        "{:?}",
        dev[0]
    );
}

#[test]
fn tasks_carry_sandbox_and_host_paths() {
    let Some(root) = common::shared_data("tasks_carry_sandbox_and_host_paths") else {
        return;
    };
    let (reg, _tmp) = common::registry(root.clone());
    let qr = load(&reg, "qrdata");
    let t = &qr.tasks[0];
    assert_eq!(t.data[0].path, "/data/qrdata/data/stent365.csv");
    assert_eq!(
        t.data[0].host.as_deref().unwrap(),
        root.join("data/qrdata/data/stent365.csv")
    );
    assert_eq!(t.answer_text().as_deref(), Some("0.20"));
    let dab = load(&reg, "dabstep-dev");
    assert!(dab.tasks.iter().all(|t| t.data.len() == 7));
    assert_eq!(dab.tasks[0].id, "dabstep-dev/5");
    assert!(
        dab.tasks[0]
            .answer_guideline
            .as_deref()
            .unwrap()
            .contains("country code")
    );
    let dsp = load(&reg, "dspredict-easy");
    let titanic = dsp.task("dspredict-easy/titanic").unwrap();
    assert_eq!(titanic.data.len(), 1);
    assert_eq!(titanic.data[0].path, "/data/titanic");
    assert_eq!(titanic.data[0].kind, dsbox_tasks::DataKind::Dir);
    assert_eq!(
        titanic.submission.as_deref(),
        Some("/submission/submission.csv")
    );
    assert_eq!(titanic.answer, None);
    let sab = load(&reg, "scienceagentbench");
    assert_eq!(
        sab.tasks[0].submission.as_deref(),
        Some("/submission/clintox_test_pred.csv")
    );
    // The evaluation program (the answer) is never among the mounted files.
    for t in &sab.tasks {
        let answer = t.answer_text().unwrap();
        assert!(t.data.iter().all(|d| d.path != answer), "{}", t.id);
    }
    let daeval = load(&reg, "daeval");
    assert!(
        daeval.tasks[0]
            .answer_guideline
            .as_deref()
            .unwrap()
            .starts_with("@mean_fare[")
    );
}

#[test]
fn ground_truth_scores_one_on_qrdata_daeval_dsbio_and_dabstep_dev() {
    let Some(root) = common::shared_data("ground_truth_scores_one") else {
        return;
    };
    let (reg, _tmp) = common::registry(root);
    let mut checked = 0;
    for name in ["qrdata", "daeval", "dsbio", "dabstep-dev"] {
        for task in &load(&reg, name).tasks {
            assert_eq!(
                score(task, &as_prediction(task)),
                1.0,
                "{}: {:?}",
                task.id,
                as_prediction(task)
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 200 + 181 + 90 + 10);
}

/// Format a perturbed number so that `float()` and the first-number rule both read it back.
fn num(x: f64) -> String {
    format!("{x}")
}

#[test]
fn qrdata_numbers_within_and_just_outside_tolerance() {
    let Some(root) = common::shared_data("qrdata_numbers_within_and_just_outside_tolerance") else {
        return;
    };
    let (reg, _tmp) = common::registry(root);
    let suite = load(&reg, "qrdata");
    let mut numeric = 0;
    for task in &suite.tasks {
        let truth = task.answer_text().unwrap();
        let Some(g) = dsbox_tasks::pyliteral::py_float(&truth) else {
            continue;
        };
        numeric += 1;
        let (inside, outside) = if g == 0.0 {
            (0.0299, 0.0301)
        } else {
            (g * 1.0299, g * 1.0301)
        };
        assert_eq!(
            score(task, &num(inside)),
            1.0,
            "{} inside: {truth} vs {}",
            task.id,
            num(inside)
        );
        assert_eq!(
            score(task, &num(outside)),
            0.0,
            "{} outside: {truth} vs {}",
            task.id,
            num(outside)
        );
        let below = if g == 0.0 { -0.0299 } else { g * 0.9701 };
        assert_eq!(score(task, &num(below)), 1.0, "{} below", task.id);
        // Surrounding whitespace does not matter; a unit suffix defeats float().
        assert_eq!(score(task, &format!("  {truth}\n")), 1.0);
        assert_eq!(
            score(task, &format!("{}%", num(inside))),
            0.0,
            "{}",
            task.id
        );
    }
    // 105 numerical questions, two of which are written as percentages ("5.36%"): those
    // are not float()-parseable, so only the exact text (case/space-insensitive) scores.
    assert_eq!(numeric, 103);
    let pct = suite
        .tasks
        .iter()
        .find(|t| t.answer_text().as_deref() == Some("5.36%"))
        .unwrap();
    assert_eq!(score(pct, " 5.36% "), 1.0);
    assert_eq!(score(pct, "5.36"), 0.0);
    // Strict `<` at the boundary: a relative error of exactly 0.03 (to the last bit) is
    // wrong. 0.017 → 0.01751 is such a pair.
    let t = suite
        .tasks
        .iter()
        .find(|t| t.answer_text().as_deref() == Some("0.017"))
        .unwrap();
    assert_eq!(
        dsbox_tasks::metric::text::relative_error(0.01751, 0.017),
        0.03
    );
    assert_eq!(score(t, "0.01751"), 0.0);
    assert_eq!(score(t, "0.0175099"), 1.0);
}

#[test]
fn qrdata_multiple_choice_case_and_whitespace() {
    let Some(root) = common::shared_data("qrdata_multiple_choice_case_and_whitespace") else {
        return;
    };
    let (reg, _tmp) = common::registry(root);
    let suite = load(&reg, "qrdata");
    let mut mc = 0;
    for task in suite
        .tasks
        .iter()
        .filter(|t| t.meta_str("question_type") == Some("multiple_choice"))
    {
        mc += 1;
        let truth = task.answer_text().unwrap();
        assert_eq!(
            score(task, &format!("\t{}  \n", truth.to_uppercase())),
            1.0,
            "{}",
            task.id
        );
        let choices = task
            .metadata
            .get("multiple_choices")
            .and_then(|v| v.as_array());
        if let Some(other) = choices.and_then(|c| {
            c.iter()
                .filter_map(|v| v.as_str())
                .find(|c| c.trim().to_lowercase() != truth.trim().to_lowercase())
        }) {
            assert_eq!(
                score(task, other),
                0.0,
                "{}: {other} should be wrong",
                task.id
            );
        }
        assert_eq!(score(task, &format!("The answer is {truth}")), 0.0);
    }
    assert_eq!(mc, 95);
}

#[test]
fn daeval_pair_perturbations() {
    let Some(root) = common::shared_data("daeval_pair_perturbations") else {
        return;
    };
    let (reg, _tmp) = common::registry(root);
    let suite = load(&reg, "daeval");
    let render = |pairs: &[(String, String)]| {
        pairs
            .iter()
            .map(|(n, v)| format!("@{n}[{v}]"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut multi = 0;
    let mut numeric_values = 0;
    for task in &suite.tasks {
        let pairs = parse_truth_pairs(&task.answer_text().unwrap()).unwrap();
        assert!(!pairs.is_empty(), "{}", task.id);
        // Missing pair, extra pair, duplicated name: all wrong.
        assert_eq!(
            score(task, &render(&pairs[1..])),
            0.0,
            "{} missing",
            task.id
        );
        let mut extra = pairs.clone();
        extra.push(("not_asked_for".into(), "1".into()));
        assert_eq!(score(task, &render(&extra)), 0.0, "{} extra", task.id);
        let mut dup = pairs.clone();
        dup.push(pairs[0].clone());
        assert_eq!(score(task, &render(&dup)), 0.0, "{} duplicated", task.id);
        // Names are case-sensitive.
        let mut upper = pairs.clone();
        upper[0].0 = upper[0].0.to_uppercase() + "X";
        assert_eq!(score(task, &render(&upper)), 0.0, "{} name case", task.id);
        // Reordered and spaced out: still right.
        let mut rev = pairs.clone();
        rev.reverse();
        let spaced: String = rev.iter().map(|(n, v)| format!("@{n}[ {v} ]\n")).collect();
        assert_eq!(score(task, &spaced), 1.0, "{} reordered", task.id);
        if pairs.len() > 1 {
            multi += 1;
            // Replacing one pair by a second copy of another keeps the count but not the names.
            let mut swapped = pairs.clone();
            swapped[1] = pairs[0].clone();
            assert_eq!(
                score(task, &render(&swapped)),
                0.0,
                "{} duplicated name, same count",
                task.id
            );
        }
        // Numbers: a percent sign is fine (first number), any change is wrong at tolerance 0.
        if let Some(i) = pairs.iter().position(|(_, v)| v.parse::<f64>().is_ok()) {
            numeric_values += 1;
            let g: f64 = pairs[i].1.parse().unwrap();
            let mut pct = pairs.clone();
            pct[i].1 = format!("{}%", pairs[i].1);
            assert_eq!(score(task, &render(&pct)), 1.0, "{} percent", task.id);
            let mut off = pairs.clone();
            off[i].1 = num(if g == 0.0 { 1e-9 } else { g * (1.0 + 1e-9) });
            assert_eq!(score(task, &render(&off)), 0.0, "{} off by 1e-9", task.id);
        }
        // Text values are case-sensitive.
        if let Some(i) = pairs
            .iter()
            .position(|(_, v)| v.parse::<f64>().is_err() && v.to_uppercase() != *v)
        {
            let mut shout = pairs.clone();
            shout[i].1 = pairs[i].1.to_uppercase();
            assert_eq!(score(task, &render(&shout)), 0.0, "{} value case", task.id);
        }
    }
    assert!(
        multi > 50 && numeric_values > 150,
        "multi {multi}, numeric {numeric_values}"
    );
    // The example from the issue: 34.65% for a mean of 34.65.
    let first = &suite.tasks[0];
    assert_eq!(
        first.answer_text().as_deref(),
        Some("[['mean_fare', '34.65']]")
    );
    assert_eq!(score(first, "@mean_fare[34.65%]"), 1.0);
    assert_eq!(score(first, "@mean_fare[34.66]"), 0.0);
}

#[test]
fn dsbio_lists_numbers_and_strict_zero_tolerance() {
    let Some(root) = common::shared_data("dsbio_lists_numbers_and_strict_zero_tolerance") else {
        return;
    };
    let (reg, _tmp) = common::registry(root);
    let suite = load(&reg, "dsbio");
    let (mut lists, mut numbers) = (0, 0);
    for task in &suite.tasks {
        let truth = task.answer_text().unwrap();
        if let Ok(PyValue::List(items)) = literal_eval(&truth) {
            lists += 1;
            // Reversed and lower-cased: same set → right. One item dropped → wrong.
            let mut rev: Vec<String> = items
                .iter()
                .map(|i| format!("'{}'", i.to_py_str().to_lowercase()))
                .collect();
            rev.reverse();
            assert_eq!(
                score(task, &format!("[{}]", rev.join(", "))),
                1.0,
                "{}",
                task.id
            );
            assert_eq!(
                score(task, &format!("[{}]", rev[1..].join(", "))),
                0.0,
                "{}",
                task.id
            );
            // JSON-style double quotes are Python literals too.
            let json = serde_json::to_string(task.answer.as_ref().unwrap()).unwrap();
            assert_eq!(score(task, &json), 1.0, "{}", task.id);
        } else if let Some(g) = dsbox_tasks::pyliteral::py_float(&truth) {
            numbers += 1;
            // Tolerance 0 with strict `<`: only the identical text scores.
            let same_value_other_text = format!("{truth}0");
            if !truth.contains(['e', 'E']) && truth.contains('.') {
                assert_eq!(
                    score(task, &same_value_other_text),
                    0.0,
                    "{}: {same_value_other_text}",
                    task.id
                );
            }
            assert_eq!(score(task, &num(g + 1.0)), 0.0, "{}", task.id);
        }
    }
    assert_eq!(lists, 7);
    assert!(numbers > 30, "{numbers}");
    // Case-insensitive strings.
    let hand2 = suite
        .tasks
        .iter()
        .find(|t| t.answer_text().as_deref() == Some("HAND2"))
        .unwrap();
    assert_eq!(score(hand2, " hand2 "), 1.0);
    assert_eq!(score(hand2, "HAND1"), 0.0);
}

#[test]
fn dabstep_dev_case_and_whitespace() {
    let Some(root) = common::shared_data("dabstep_dev_case_and_whitespace") else {
        return;
    };
    let (reg, _tmp) = common::registry(root);
    for task in &load(&reg, "dabstep-dev").tasks {
        let truth = task.answer_text().unwrap();
        assert_eq!(
            score(task, &format!(" {} ", truth.to_lowercase())),
            1.0,
            "{}",
            task.id
        );
        assert_eq!(score(task, &format!("{truth}.")), 0.0, "{}", task.id);
    }
    // all.jsonl has no answers: not evaluable, with the reason.
    let all = load(&reg, "dabstep");
    let err = Metric::for_task(&all.tasks[0])
        .unwrap()
        .score("NL", &all.tasks[0])
        .unwrap_err();
    assert_eq!(err.kind(), "no-answer");
}

#[test]
fn dspredict_competitions_place_on_their_boards() {
    let Some(root) = common::shared_data("dspredict_competitions_place_on_their_boards") else {
        return;
    };
    let (reg, _tmp) = common::registry(root);
    let mut inferred = BTreeMap::new();
    for name in ["dspredict-easy", "dspredict-hard"] {
        for task in &load(&reg, name).tasks {
            let metric = Metric::for_task(task).unwrap();
            metric
                .check(task)
                .unwrap_or_else(|e| panic!("{}: {e}", task.id));
            let Metric::Leaderboard(lb) = &metric else {
                panic!("{}: not a leaderboard metric", task.id)
            };
            inferred.insert(lb.competition.clone(), lb.local_metric);
            let boards = dsbox_tasks::leaderboard::Leaderboards::cached(
                lb.leaderboard_file.as_ref().unwrap(),
            )
            .unwrap();
            let stats = &boards.boards[&lb.competition];
            let board = if stats.private_scores.is_empty() {
                &stats.public_scores
            } else {
                &stats.private_scores
            };
            // The board's best score ties for rank 1: gold, and above the median.
            let s = metric.score(&board[0].to_string(), task).unwrap();
            let p = s.leaderboard.as_ref().unwrap().primary().unwrap().clone();
            assert_eq!(
                (p.rank, p.medal),
                (1, dsbox_tasks::Medal::Gold),
                "{}",
                task.id
            );
            assert_eq!(s.value, p.percentile / 100.0);
            // The board's worst score: no medal, not above the median (unless the board is flat).
            let worst = metric
                .score(&board[board.len() - 1].to_string(), task)
                .unwrap();
            let wp = worst.leaderboard.unwrap().primary().unwrap().clone();
            assert!(
                !wp.above_median || board[0] == board[board.len() - 1],
                "{}",
                task.id
            );
            assert!(wp.percentile < 50.0, "{}: {}", task.id, wp.percentile);
        }
    }
    // Known local metrics, from the competitions' own evaluation texts.
    let m = |c: &str| inferred[c];
    assert_eq!(m("titanic"), Some(KaggleMetric::Accuracy));
    assert_eq!(
        m("house-prices-advanced-regression-techniques"),
        Some(KaggleMetric::Rmsle)
    );
    assert_eq!(m("playground-series-s3e1"), Some(KaggleMetric::Rmse));
    assert_eq!(m("home-credit-default-risk"), Some(KaggleMetric::RocAuc));
    assert_eq!(
        m("statoil-iceberg-classifier-challenge"),
        Some(KaggleMetric::LogLoss)
    );
    assert_eq!(m("LANL-Earthquake-Prediction"), Some(KaggleMetric::Mae));
    assert_eq!(m("liverpool-ion-switching"), Some(KaggleMetric::MacroF1));
    // Composite metrics are not guessed.
    assert_eq!(m("stanford-covid-vaccine"), None);
    assert_eq!(m("champs-scalar-coupling"), None);
    assert_eq!(m("m5-forecasting-accuracy"), None);
    let known = inferred.values().filter(|v| v.is_some()).count();
    eprintln!(
        "local metric known for {known} of {} competitions",
        inferred.len()
    );
    for (c, v) in &inferred {
        eprintln!("  {c}: {}", v.map_or("-", |m| m.name()));
    }
}
