//! `dsbox score`: score a predictions file against a suite's answers.
//!
//! The predictions file is JSONL, one `{"id": "<task id>", "prediction": ...}` per line
//! (DSPredict: the prediction is the competition score, or `"submission": "path.csv"` to
//! score a submission locally against `<data root>/answers/<competition>.csv`). Every task
//! of the suite is scored, a missing prediction scoring 0 (the reference's mean over all
//! samples); `--only-predicted` scores just the tasks in the file.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use dsbox_tasks::{Predictions, Scope, SuiteScore, TaskScore, score_suite};

use super::tasks::{SuiteSourceArgs, is_broken_pipe};

#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub source: SuiteSourceArgs,
    /// The suite the predictions are for.
    #[arg(long, value_name = "SUITE")]
    pub suite: String,
    /// JSONL file, one {"id": ..., "prediction": ...} per line.
    #[arg(long, value_name = "FILE.jsonl")]
    pub predictions: PathBuf,
    /// Score only the tasks that have a prediction (default: all tasks, missing = 0).
    #[arg(long)]
    pub only_predicted: bool,
}

pub fn run(args: ScoreArgs) -> anyhow::Result<ExitCode> {
    let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
    match run_with(args, &mut out, &mut err) {
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

pub fn run_with(
    args: ScoreArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let reg = args.source.registry()?;
    let suite = reg.load(&args.suite)?;
    let preds = Predictions::read(&args.predictions)?;
    let unknown = preds.unknown_ids(&suite);
    if !unknown.is_empty() {
        let shown: Vec<&str> = unknown.iter().take(3).copied().collect();
        anyhow::bail!(
            "{}: {} prediction id(s) are not tasks of suite `{}` (e.g. {}); ids look like {}",
            args.predictions.display(),
            unknown.len(),
            suite.def.name,
            shown.join(", "),
            suite
                .tasks
                .first()
                .map_or("<suite>/<id>", |t| t.id.as_str()),
        );
    }
    let scope = if args.only_predicted {
        Scope::Predicted
    } else {
        Scope::AllTasks
    };
    let scored = score_suite(&suite, &preds, scope);
    if args.source.json {
        serde_json::to_writer_pretty(&mut *out, &scored)?;
        writeln!(out)?;
    } else {
        write_table(&scored, out)?;
    }
    if let Some(n) = scored.aggregate.errors.get("needs-judge") {
        writeln!(
            err,
            "dsbox: note: {n} task(s) use an LLM-judge metric and were not scored: no judge is configured \
             (judge options arrive with `dsbox eval`)"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn note(row: &TaskScore) -> String {
    if let Some(e) = &row.error {
        return format!("{}: {e}", row.error_kind.unwrap_or("error"));
    }
    if row.missing {
        return "missing prediction".to_owned();
    }
    if let Some((lb, p)) = row
        .leaderboard
        .as_ref()
        .and_then(|l| l.primary().map(|p| (l, p)))
    {
        return format!(
            "score {} ({}) → rank {}/{} on the {} board, medal {}, percentile {:.1}{}",
            lb.score,
            lb.source,
            p.rank,
            p.total,
            lb.board,
            p.medal.as_str(),
            p.percentile,
            if p.above_median { ", above median" } else { "" }
        );
    }
    match row.details.get("rule").and_then(|r| r.as_str()) {
        Some("numeric") => row
            .details
            .get("relative_error")
            .and_then(serde_json::Value::as_f64)
            .map_or_else(String::new, |e| format!("relative error {e:.4}")),
        _ => String::new(),
    }
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
}

fn write_table(s: &SuiteScore, out: &mut dyn Write) -> io::Result<()> {
    let width = s.rows.iter().map(|r| r.id.len()).max().unwrap_or(2).max(2);
    writeln!(out, "{:<width$}  {:>6}  note", "id", "score")?;
    for row in &s.rows {
        writeln!(
            out,
            "{:<width$}  {:>6}  {}",
            row.id,
            fmt_opt(row.score),
            note(row)
        )?;
    }
    let a = &s.aggregate;
    writeln!(out)?;
    writeln!(
        out,
        "suite {}: {} task(s), mean {:.4} (over all tasks; not evaluable and missing count as 0)",
        s.suite, a.count, a.mean
    )?;
    writeln!(
        out,
        "  evaluable {} ({:.1}%), mean of evaluable {}, min {}, max {}, solved {}, missing predictions {}",
        a.evaluable,
        100.0 * a.success_rate,
        fmt_opt(a.mean_evaluable),
        fmt_opt(a.min),
        fmt_opt(a.max),
        a.solved,
        a.missing
    )?;
    if !a.errors.is_empty() {
        let parts: Vec<String> = a.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(out, "  not evaluable: {}", parts.join(", "))?;
    }
    if let Some(m) = &a.medals {
        writeln!(
            out,
            "  medals: gold {}, silver {}, bronze {}, none {}; above median {}",
            m.gold, m.silver, m.bronze, m.none, m.above_median
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Top {
        Score(ScoreArgs),
    }

    fn score(tmp: &std::path::Path, args: &[&str]) -> anyhow::Result<(ExitCode, String, String)> {
        let starter = tmp.join("starter").display().to_string();
        let mut argv = vec!["dsbox", "score", "--starter-dir", starter.as_str()];
        argv.extend_from_slice(args);
        let Top::Score(parsed) = Cli::try_parse_from(argv)?.cmd;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(parsed, &mut out, &mut err)?;
        Ok((code, String::from_utf8(out)?, String::from_utf8(err)?))
    }

    #[test]
    fn table_and_json() {
        let tmp = tempfile::tempdir().unwrap();
        let preds = tmp.path().join("p.jsonl");
        std::fs::write(
            &preds,
            "{\"id\": \"starter/top-region\", \"prediction\": \" east \"}\n{\"id\": \"starter/busy-days\", \"prediction\": 1}\n",
        )
        .unwrap();
        let p = preds.display().to_string();
        let (code, out, _) =
            score(tmp.path(), &["--suite", "starter", "--predictions", &p]).unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(
            out.contains("starter/top-region                1.000"),
            "{out}"
        );
        assert!(
            out.contains("starter/peak-day                  0.000  missing prediction"),
            "{out}"
        );
        assert!(
            out.contains("suite starter: 12 task(s), mean 0.0833"),
            "{out}"
        );
        let (_, out, _) = score(
            tmp.path(),
            &[
                "--suite",
                "starter",
                "--predictions",
                &p,
                "--json",
                "--only-predicted",
            ],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["aggregate"]["count"], 2);
        assert_eq!(v["aggregate"]["mean"], 0.5);
        assert_eq!(v["rows"][0]["id"], "starter/top-region");
        assert_eq!(v["rows"][0]["score"], 1.0);
    }

    #[test]
    fn bad_predictions_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let preds = tmp.path().join("p.jsonl");
        std::fs::write(&preds, "{\"id\": \"qrdata/0\", \"prediction\": \"1\"}\n").unwrap();
        let p = preds.display().to_string();
        let err = score(tmp.path(), &["--suite", "starter", "--predictions", &p])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("not tasks of suite `starter` (e.g. qrdata/0)"),
            "{err}"
        );
        std::fs::write(&preds, "not json\n").unwrap();
        let err = score(tmp.path(), &["--suite", "starter", "--predictions", &p])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("p.jsonl:1:"), "{err}");
        let err = score(tmp.path(), &["--suite", "nope", "--predictions", &p])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown suite `nope`"), "{err}");
    }

    #[test]
    fn dspredict_and_judge_notes() {
        let Some(root) = super::super::tasks::tests::shared_data() else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let preds = tmp.path().join("p.jsonl");
        std::fs::write(
            &preds,
            "{\"id\": \"dspredict-easy/titanic\", \"prediction\": 0.8}\n",
        )
        .unwrap();
        let (root, p) = (root.display().to_string(), preds.display().to_string());
        let (_, out, _) = score(
            tmp.path(),
            &[
                "--data-root",
                &root,
                "--suite",
                "dspredict-easy",
                "--predictions",
                &p,
                "--only-predicted",
            ],
        )
        .unwrap();
        assert!(out.contains("score 0.8 (given) → rank"), "{out}");
        assert!(out.contains("medals: gold"), "{out}");
        std::fs::write(
            &preds,
            "{\"id\": \"discoverybench/0\", \"prediction\": \"h\"}\n",
        )
        .unwrap();
        let (code, out, err) = score(
            tmp.path(),
            &[
                "--data-root",
                &root,
                "--suite",
                "discoverybench",
                "--predictions",
                &p,
            ],
        )
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(
            out.contains("needs-judge: metric `llm_score` needs an LLM judge"),
            "{out}"
        );
        assert!(err.contains("1 task(s) use an LLM-judge metric"), "{err}");
    }
}
