//! The starter suite works without any downloaded data, its files are what the questions
//! describe, and its answers are right (checked by an independent computation in Python
//! from the CSV files, when python3 is available, and by Rust code reading the CSVs).

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use dsbox_tasks::metric::text::parse_truth_pairs;
use dsbox_tasks::{Metric, Prompts, Task};

fn score(task: &Task, prediction: &str) -> f64 {
    Metric::for_task(task)
        .unwrap()
        .score(prediction, task)
        .unwrap()
        .value
}

fn as_prediction(task: &Task) -> String {
    let truth = task.answer_text().unwrap();
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
fn loads_without_a_data_root_and_validates_clean() {
    let (reg, _tmp) = common::registry_without_data();
    assert!(reg.data_root().require().is_err());
    let suite = reg.load("starter").unwrap();
    assert!(
        (8..=12).contains(&suite.tasks.len()),
        "{}",
        suite.tasks.len()
    );
    assert!(suite.validate().is_empty(), "{:?}", suite.validate());
    let metrics: BTreeMap<&str, usize> = suite.tasks.iter().fold(BTreeMap::new(), |mut m, t| {
        *m.entry(t.metric.name.as_str()).or_default() += 1;
        m
    });
    assert!(
        metrics["list_match"] >= 2 && metrics["exact_match"] >= 6,
        "{metrics:?}"
    );
    for task in &suite.tasks {
        assert!(task.id.starts_with("starter/"));
        assert_eq!(score(task, &as_prediction(task)), 1.0, "{}", task.id);
        assert_eq!(score(task, "no idea"), 0.0, "{}", task.id);
        for d in &task.data {
            assert!(d.path.starts_with("/data/starter/"));
            assert!(d.host.as_ref().unwrap().is_file());
        }
    }
    // A multiple-choice question and a list answer are among them.
    let mc = suite.task("starter/higher-conversion").unwrap();
    assert!(mc.question.contains("A. treatment B. control"));
    let regions = suite.task("starter/regions-above-average").unwrap();
    assert!(regions.answer.as_ref().unwrap().is_array());
}

#[test]
fn data_is_written_once_and_repaired_when_damaged() {
    let (reg, tmp) = common::registry_without_data();
    let suite = reg.load("starter").unwrap();
    let sales = suite.data_dir.join("starter/sales.csv");
    assert!(sales.starts_with(tmp.path()));
    let before = std::fs::metadata(&sales).unwrap().modified().unwrap();
    let original = std::fs::read(&sales).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    reg.load("starter").unwrap();
    assert_eq!(
        std::fs::metadata(&sales).unwrap().modified().unwrap(),
        before,
        "unchanged file rewritten"
    );
    std::fs::write(&sales, "month,region\n").unwrap();
    reg.load("starter").unwrap();
    assert_eq!(std::fs::read(&sales).unwrap(), original);
    // No temp files are left behind.
    let names: Vec<String> = std::fs::read_dir(sales.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn unwritable_cache_is_a_clear_error() {
    let (mut reg, tmp) = common::registry_without_data();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    reg.set_starter_dir(file.join("sub"));
    let err = reg.load("starter").unwrap_err().to_string();
    assert!(
        err.contains("cannot write the starter data") && err.contains("DSBOX_STARTER_DIR"),
        "{err}"
    );
}

fn read_csv(path: &std::path::Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .map(|h| h.to_string())
                .zip(l.split(',').map(str::to_owned))
                .collect()
        })
        .collect()
}

#[test]
fn answers_match_a_computation_from_the_csv_files_in_rust() {
    let (reg, _tmp) = common::registry_without_data();
    let suite = reg.load("starter").unwrap();
    let dir = suite.data_dir.join("starter");
    let sales = read_csv(&dir.join("sales.csv"));
    let total: f64 = sales
        .iter()
        .map(|r| r["revenue"].parse::<f64>().unwrap())
        .sum();
    assert_eq!(
        score(
            suite.task("starter/total-revenue").unwrap(),
            &format!("{total:.2}")
        ),
        1.0
    );
    // revenue = units × unit_price on every row.
    for r in &sales {
        let (u, p, rev): (f64, f64, f64) = (
            r["units"].parse().unwrap(),
            r["unit_price"].parse().unwrap(),
            r["revenue"].parse().unwrap(),
        );
        assert!((u * p - rev).abs() < 0.005, "{r:?}");
    }
    let mut by_region: BTreeMap<&str, f64> = BTreeMap::new();
    for r in &sales {
        *by_region.entry(r["region"].as_str()).or_default() += r["revenue"].parse::<f64>().unwrap();
    }
    let top = by_region
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(score(suite.task("starter/top-region").unwrap(), top), 1.0);
    let visits = read_csv(&dir.join("visits.csv"));
    assert_eq!(visits.len(), 366);
    let busy = visits
        .iter()
        .filter(|r| r["visits"].parse::<i64>().unwrap() > 1000)
        .count();
    assert_eq!(
        score(suite.task("starter/busy-days").unwrap(), &busy.to_string()),
        1.0
    );
    let exp = read_csv(&dir.join("experiment.csv"));
    assert_eq!(exp.len(), 600);
    assert!(
        exp.iter()
            .all(|r| (r["converted"] == "1") == (r["spend"] != "0.00"))
    );
}

/// An independent implementation of every answer with Python's standard library.
const PY_ANSWERS: &str = r#"
import csv, json, statistics, sys, datetime
d = sys.argv[1]
rd = lambda f: list(csv.DictReader(open(f"{d}/{f}")))
sales, exp, vis = rd("sales.csv"), rd("experiment.csv"), rd("visits.csv")
out = {}
rev = lambda r: float(r["revenue"])
out["total-revenue"] = f"{sum(map(rev, sales)):.2f}"
regions = {}
for r in sales: regions[r["region"]] = regions.get(r["region"], 0) + rev(r)
out["top-region"] = max(regions, key=regions.get)
months = {}
for r in sales: months[r["month"]] = months.get(r["month"], 0) + int(r["units"])
out["peak-month"] = max(months, key=months.get)
mean_rev = lambda p: statistics.mean(rev(r) for r in sales if r["product"] == p)
out["product-mean-revenue"] = f"@widget_mean_revenue[{mean_rev('Widget'):.2f}] @gadget_mean_revenue[{mean_rev('Gadget'):.2f}]"
avg = statistics.mean(regions.values())
out["regions-above-average"] = str([g for g, v in regions.items() if v > avg])
rate = lambda g: statistics.mean(int(r["converted"]) for r in exp if r["group"] == g)
out["conversion-lift"] = f"{100 * (rate('treatment') - rate('control')):.2f}"
spend = lambda g: statistics.mean(float(r["spend"]) for r in exp if r["group"] == g and r["converted"] == "1")
out["spend-by-group"] = f"@treatment_mean_spend[{spend('treatment'):.2f}] @control_mean_spend[{spend('control'):.2f}]"
out["higher-conversion"] = "A" if rate("treatment") > rate("control") else "B"
out["peak-day"] = max(vis, key=lambda r: int(r["visits"]))["date"]
t = [float(r["temperature_c"]) for r in vis]; v = [float(r["visits"]) for r in vis]
out["temperature-correlation"] = f"{statistics.correlation(t, v):.2f}"
we = lambda r: datetime.date.fromisoformat(r["date"]).weekday() >= 5
out["weekend-visits"] = (f"@weekend_mean_visits[{statistics.mean(int(r['visits']) for r in vis if we(r)):.2f}] "
                         f"@weekday_mean_visits[{statistics.mean(int(r['visits']) for r in vis if not we(r)):.2f}]")
out["busy-days"] = str(sum(int(r["visits"]) > 1000 for r in vis))
print(json.dumps(out))
"#;

#[test]
fn answers_match_an_independent_python_computation() {
    let (reg, _tmp) = common::registry_without_data();
    let suite = reg.load("starter").unwrap();
    let dir = suite.data_dir.join("starter");
    // Debian's interpreter when present (a pyenv shim on PATH may not be usable).
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let output = match Command::new(python)
        .arg("-c")
        .arg(PY_ANSWERS)
        .arg(&dir)
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) => panic!("python failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("skipping the Python cross-check: python3 not runnable ({e})");
            return;
        }
    };
    let answers: BTreeMap<String, String> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answers.len(), suite.tasks.len());
    for task in &suite.tasks {
        let slug = task.id.trim_start_matches("starter/");
        let python = &answers[slug];
        assert_eq!(
            score(task, python),
            1.0,
            "{}: python says {python}, dsbox says {:?}",
            task.id,
            task.answer_text()
        );
    }
}

#[test]
fn prompts_render_the_reference_sections() {
    let (reg, _tmp) = common::registry_without_data();
    let suite = reg.load("starter").unwrap();
    let prompts = Prompts::builtin();
    for task in &suite.tasks {
        let p = prompts.render(task, &suite.def).unwrap();
        assert!(p.system.contains("<python>") && p.system.contains("<answer>"));
        for section in [
            "QUESTION:",
            "DATASET INFORMATION:",
            "DATASET LOCATIONS:",
            "INSTRUCTIONS:",
        ] {
            assert!(
                p.user.contains(section),
                "{}: no {section}\n{}",
                task.id,
                p.user
            );
        }
        assert!(p.user.contains(&task.question));
        assert!(p.user.contains(&task.data[0].path));
        // The answer never appears in a prompt (beyond words the question and the dataset
        // description must use, like a region name).
        let answer = task.answer_text().unwrap();
        if !task.context.contains(&answer) && !task.question.contains(&answer) {
            assert!(!p.user.contains(&answer), "{}: answer leaked", task.id);
        }
    }
    let pairs = suite.task("starter/weekend-visits").unwrap();
    let user = prompts.render(pairs, &suite.def).unwrap().user;
    assert!(user.contains("@weekend_mean_visits[value]"), "{user}");
}
